//! Placeholder; the fitted model lands next.

use super::{Forecast, Model, ModelConfig, ModelError};

/// Model (pending).
#[derive(Debug, Clone)]
pub struct Prophet {
    #[allow(dead_code)]
    config: ModelConfig,
}

impl Prophet {
    /// Creates the model.
    pub fn new(config: ModelConfig) -> Self {
        Self { config }
    }
}

impl Model for Prophet {
    fn name(&self) -> &'static str {
        "prophet"
    }
    fn forecast(
        &self,
        _history: &[f64],
        _horizon: usize,
        _level: f64,
    ) -> Result<Forecast, ModelError> {
        Err(ModelError::Fit {
            model: "prophet",
            reason: "not implemented yet".into(),
        })
    }
}
