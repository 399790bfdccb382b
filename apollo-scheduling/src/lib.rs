//! Scheduling Policy Engine: answers the AI-Storage Scheduler per pod with node
//! preferences, plugin weights, storage requirements and a decision.

pub mod baselines;
pub mod config;
pub mod decision;
pub mod demand;
pub mod engine;
pub mod error;
pub mod feedback;
pub mod fgd;
pub mod scorer;
pub mod service;
pub mod simulate;
pub mod snapshot;
pub mod state;
pub mod storage;
pub mod weights;
pub mod workload;
