//! Placeholder; the fitted model lands next.

use super::{Forecast, Model, ModelConfig, ModelError};

/// Model (pending).
#[derive(Debug, Clone)]
pub struct AutoEts {
    #[allow(dead_code)]
    config: ModelConfig,
}

impl AutoEts {
    /// Creates the model.
    pub fn new(config: ModelConfig) -> Self {
        Self { config }
    }
}

impl Model for AutoEts {
    fn name(&self) -> &'static str {
        "ets"
    }
    fn forecast(
        &self,
        _history: &[f64],
        _horizon: usize,
        _level: f64,
    ) -> Result<Forecast, ModelError> {
        Err(ModelError::Fit {
            model: "ets",
            reason: "not implemented yet".into(),
        })
    }
}
