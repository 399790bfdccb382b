//! Node Resource Forecaster: keeps per-node resource histories from
//! `apollo.insight.cluster.>`, forecasts them at several horizons with
//! prediction intervals, detects anomalies and warns of overload before it
//! happens.

pub mod eval;
pub mod models;
