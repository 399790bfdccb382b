//! Scheduling Policy Engine: answers the AI-Storage Scheduler per pod with node
//! preferences, plugin weights, storage requirements and a decision.

pub use apollo_placement::{baselines, demand, fgd, scorer, snapshot};

pub mod config;
pub mod decision;
pub mod engine;
pub mod error;
pub mod feedback;
pub mod rebuild;
pub mod service;
pub mod simulate;
pub mod state;
pub mod storage;
pub mod weights;
pub mod workload;
