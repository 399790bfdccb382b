//! Scheduling Policy Engine: answers the AI-Storage Scheduler per pod with node
//! preferences, plugin weights, storage requirements and a decision.

pub mod demand;
pub mod fgd;
pub mod scorer;
pub mod simulate;
pub mod snapshot;
