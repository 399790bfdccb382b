//! Node Resource Forecaster: keeps per-node resource histories from
//! `apollo.insight.cluster.>`, forecasts them at several horizons with
//! prediction intervals, detects anomalies and warns of overload before it
//! happens.
#![forbid(unsafe_code)]

pub mod alert;
pub mod anomaly;
pub mod config;
pub mod engine;
pub mod error;
pub mod eval;
pub mod history;
pub mod metrics;
pub mod models;

pub use config::Config;
pub use error::{Error, Result};
