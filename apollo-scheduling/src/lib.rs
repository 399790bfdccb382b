//! Scheduling Policy Engine: answers the AI-Storage Scheduler per pod with node
//! preferences, plugin weights, storage requirements and a decision.

pub mod simulate;
