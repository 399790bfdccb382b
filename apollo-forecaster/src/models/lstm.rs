//! Placeholder; the fitted model lands next.

use super::{Forecast, Model, ModelConfig, ModelError};

/// Model (pending).
#[derive(Debug, Clone)]
pub struct Lstm {
    #[allow(dead_code)]
    config: ModelConfig,
}

impl Lstm {
    /// Creates the model.
    pub fn new(config: ModelConfig) -> Self {
        Self { config }
    }
}

impl Lstm {
    /// Trains one model across series.
    pub fn train_global(_series: &[&[f64]], config: &ModelConfig) -> Result<Self, ModelError> {
        Ok(Self::new(config.clone()))
    }
}

impl Model for Lstm {
    fn name(&self) -> &'static str {
        "lstm"
    }
    fn forecast(
        &self,
        _history: &[f64],
        _horizon: usize,
        _level: f64,
    ) -> Result<Forecast, ModelError> {
        Err(ModelError::Fit {
            model: "lstm",
            reason: "not implemented yet".into(),
        })
    }
}
