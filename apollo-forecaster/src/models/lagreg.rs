//! Placeholder; the fitted model lands next.

use super::{Forecast, Model, ModelConfig, ModelError};

/// Model (pending).
#[derive(Debug, Clone)]
pub struct LagRegression {
    #[allow(dead_code)]
    config: ModelConfig,
}

impl LagRegression {
    /// Creates the model.
    pub fn new(config: ModelConfig) -> Self {
        Self { config }
    }
}

impl Model for LagRegression {
    fn name(&self) -> &'static str {
        "lagreg"
    }
    fn forecast(
        &self,
        _history: &[f64],
        _horizon: usize,
        _level: f64,
    ) -> Result<Forecast, ModelError> {
        Err(ModelError::Fit {
            model: "lagreg",
            reason: "not implemented yet".into(),
        })
    }
}
