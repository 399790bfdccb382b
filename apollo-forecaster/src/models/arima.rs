//! Placeholder; the fitted model lands next.

use super::{Forecast, Model, ModelConfig, ModelError};

/// Model (pending).
#[derive(Debug, Clone)]
pub struct AutoArima {
    #[allow(dead_code)]
    config: ModelConfig,
}

impl AutoArima {
    /// Creates the model.
    pub fn new(config: ModelConfig) -> Self {
        Self { config }
    }
}

impl Model for AutoArima {
    fn name(&self) -> &'static str {
        "arima"
    }
    fn forecast(
        &self,
        _history: &[f64],
        _horizon: usize,
        _level: f64,
    ) -> Result<Forecast, ModelError> {
        Err(ModelError::Fit {
            model: "arima",
            reason: "not implemented yet".into(),
        })
    }
}
