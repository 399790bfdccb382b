//! Kubernetes cluster-state collector.

pub mod aggregate;
pub mod exposition;
pub mod model;
pub mod quantity;
