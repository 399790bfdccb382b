//! Command-line and environment configuration of the forecaster.

use std::{net::SocketAddr, time::Duration};

use apollo_common::config::{parse_duration, NatsArgs, ObservabilityArgs, StreamArgs};
use clap::{Args, Parser};

use crate::models::auto::FullModel;
use crate::{history::Resource, Error};

/// Overload thresholds per resource, percent of capacity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds(pub [f64; Resource::COUNT]);

impl Default for Thresholds {
    fn default() -> Self {
        let mut t = [90.0; Resource::COUNT];
        t[Resource::Gpu as usize] = 95.0;
        t[Resource::Storage as usize] = 85.0;
        Self(t)
    }
}

impl Thresholds {
    /// Threshold of one resource.
    pub fn get(&self, r: Resource) -> f64 {
        self.0[r as usize]
    }
}

/// Full models that compete inside the served `auto`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FullModels(pub Vec<FullModel>);

/// Parses `ets,arima,lagreg` (any of ets, arima, prophet, lagreg) or `none`.
/// The LSTM is refused: the service has no trained global model to serve.
pub fn parse_full_models(s: &str) -> Result<FullModels, String> {
    let mut out = Vec::new();
    for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if name == "none" {
            continue;
        }
        match FullModel::from_name(name) {
            Some(FullModel::Lstm) => {
                return Err("lstm cannot compete in the service: no trained global model".into())
            }
            Some(m) if !out.contains(&m) => out.push(m),
            Some(_) => {}
            None => {
                return Err(format!(
                    "unknown full model {name:?}: use ets, arima, prophet, lagreg or none"
                ))
            }
        }
    }
    Ok(FullModels(out))
}

/// Parses `cpu=90,memory=90,gpu=95,storage=85,network=90`; resources not
/// named keep their defaults.
pub fn parse_thresholds(s: &str) -> Result<Thresholds, String> {
    let mut t = Thresholds::default();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, value) = part
            .split_once('=')
            .ok_or_else(|| format!("invalid threshold {part:?}: expected resource=percent"))?;
        let r = Resource::from_name(name.trim()).ok_or_else(|| {
            format!("unknown resource {name:?}: use cpu, memory, gpu, storage or network")
        })?;
        let v: f64 = value
            .trim()
            .parse()
            .map_err(|_| format!("invalid threshold value {value:?} for {name}"))?;
        if !(v > 0.0 && v.is_finite()) {
            return Err(format!("threshold for {name} must be a positive percent"));
        }
        t.0[r as usize] = v;
    }
    Ok(t)
}

/// Parses a comma-separated list of horizons in minutes, e.g. `5,15,30,60`.
pub fn parse_horizons(s: &str) -> Result<Vec<u32>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let m: u32 = part
            .trim_end_matches('m')
            .parse()
            .map_err(|_| format!("invalid horizon {part:?}: expected minutes, e.g. 15"))?;
        if m == 0 {
            return Err("horizons must be at least 1 minute".into());
        }
        out.push(m);
    }
    if out.is_empty() {
        return Err("at least one horizon is required".into());
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// Forecasting, anomaly and alerting settings (everything but I/O).
#[derive(Debug, Clone, Args)]
pub struct ForecastArgs {
    /// Resampling step of every series.
    #[arg(long, env = "APOLLO_FORECAST_STEP", default_value = "60s", value_parser = parse_duration)]
    pub step: Duration,
    /// Points kept per series (ring buffer).
    #[arg(long, env = "APOLLO_FORECAST_HISTORY", default_value_t = 1440)]
    pub history_points: usize,
    /// Forecast horizons in minutes.
    #[arg(long, env = "APOLLO_FORECAST_HORIZONS", default_value = "5,15,30,60", value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..))]
    pub horizons: Vec<u32>,
    /// Default prediction-interval level, in (0, 1).
    #[arg(long, env = "APOLLO_FORECAST_CONFIDENCE", default_value_t = 0.95)]
    pub confidence: f64,
    /// Time between two forecast refreshes.
    #[arg(long, env = "APOLLO_FORECAST_REFRESH_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub refresh_interval: Duration,
    /// A node without insight for this long is dropped.
    #[arg(long, env = "APOLLO_FORECAST_NODE_TTL", default_value = "10m", value_parser = parse_duration)]
    pub node_ttl: Duration,
    /// Missing steps filled with the last value before a gap is marked.
    #[arg(long, env = "APOLLO_FORECAST_CARRY_FORWARD", default_value_t = 5)]
    pub carry_forward: u32,
    /// Points a series needs before the model serves it (persistence before).
    #[arg(long, env = "APOLLO_FORECAST_MIN_HISTORY", default_value_t = 30)]
    pub min_history: usize,
    /// Served model (see `models::MODEL_NAMES`); `auto` keeps a per-series
    /// selection between refreshes.
    #[arg(long, env = "APOLLO_FORECAST_MODEL", default_value = "auto")]
    pub model: String,
    /// Full `auto` selections (backtests) at most per refresh, shared by all
    /// series; never-selected series and level shifts go first, then the
    /// most overdue re-selections. Bounds the refresh time after a start or
    /// a burst of new nodes; 0 = unbounded.
    #[arg(
        long,
        env = "APOLLO_FORECAST_AUTO_SELECT_BUDGET",
        default_value_t = 4000
    )]
    pub auto_select_budget: usize,
    /// Wall time after which a refresh starts no further full `auto`
    /// selection (the rest wait for the next refresh); adapts the count
    /// budget to a loaded machine. 0 = no time limit.
    #[arg(long, env = "APOLLO_FORECAST_AUTO_SELECT_TIME_BUDGET", default_value = "3s", value_parser = parse_duration)]
    pub auto_select_time_budget: Duration,
    /// Full models that compete inside `auto` beside the cheap candidates
    /// (`none` = cheap candidates only). Each one makes a selection
    /// costlier, so fewer series are selected per refresh under the budgets
    /// above.
    #[arg(
        long,
        env = "APOLLO_FORECAST_AUTO_FULL_MODELS",
        default_value = "ets,arima,lagreg",
        value_parser = parse_full_models
    )]
    pub auto_full_models: FullModels,
    /// Overload thresholds per resource, percent of capacity
    /// (`cpu=90,memory=90,...`), that forecast upper bounds are alerted at.
    #[arg(long, env = "APOLLO_FORECAST_OVERLOAD_THRESHOLD", default_value = "cpu=90,memory=90,gpu=95,storage=85,network=90", value_parser = parse_thresholds)]
    pub overload_threshold: Thresholds,
    /// An alert clears only when the upper bound stays this many percentage
    /// points below the threshold...
    #[arg(long, env = "APOLLO_ALERT_CLEAR_MARGIN", default_value_t = 5.0)]
    pub alert_clear_margin: f64,
    /// ...for this many consecutive refreshes.
    #[arg(long, env = "APOLLO_ALERT_CLEAR_AFTER", default_value_t = 3)]
    pub alert_clear_after: u32,
    /// Robust z-score above which a point of a series is anomalous.
    #[arg(long, env = "APOLLO_ANOMALY_Z", default_value_t = 6.0)]
    pub anomaly_z: f64,
    /// Robust z-score of a node against its peers above which it is an outlier.
    #[arg(long, env = "APOLLO_PEER_Z", default_value_t = 4.0)]
    pub peer_z: f64,
    /// Peer outliers must also differ from the fleet median by this many
    /// percentage points (a tight fleet must not make small gaps outliers).
    #[arg(long, env = "APOLLO_PEER_MIN_DIFF", default_value_t = 20.0)]
    pub peer_min_diff: f64,
}

impl Default for ForecastArgs {
    /// The flag defaults.
    fn default() -> Self {
        apollo_common::config::flag_defaults()
    }
}

impl ForecastArgs {
    /// Checks ranges once so the engine can rely on them.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: String| Err(Error::Config(m));
        if self.step < Duration::from_millis(100) {
            return bad("--step must be at least 100ms".into());
        }
        if self.history_points < 8 {
            return bad("--history-points must be at least 8".into());
        }
        if !(self.confidence > 0.0 && self.confidence < 1.0) {
            return bad(format!(
                "--confidence {} must be in (0, 1)",
                self.confidence
            ));
        }
        if self.refresh_interval.is_zero() {
            return bad("--refresh-interval must be positive".into());
        }
        if self.min_history < 3 || self.min_history > self.history_points {
            return bad("--min-history must be between 3 and --history-points".into());
        }
        if crate::models::by_name(&self.model).is_none() {
            return bad(format!(
                "unknown model {:?}: use one of {}",
                self.model,
                crate::models::MODEL_NAMES.join(", ")
            ));
        }
        if self.horizons.is_empty() || self.horizons.contains(&0) {
            return bad("at least one horizon of 1 minute or more is required".into());
        }
        if self.max_steps() > crate::models::MAX_HORIZON {
            return bad("largest horizon is too many steps for the models".into());
        }
        for v in [
            self.alert_clear_margin,
            self.anomaly_z,
            self.peer_z,
            self.peer_min_diff,
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad("alert and anomaly settings must be non-negative".into());
            }
        }
        Ok(())
    }

    /// Largest horizon, minutes.
    pub fn max_horizon_minutes(&self) -> u32 {
        self.horizons.iter().copied().max().unwrap_or(60)
    }

    /// Steps needed to cover `minutes`.
    pub fn steps_for(&self, minutes: u32) -> usize {
        let step = self.step.as_secs_f64();
        ((f64::from(minutes) * 60.0 / step).ceil() as usize).max(1)
    }

    /// Steps of the largest horizon.
    pub fn max_steps(&self) -> usize {
        self.steps_for(self.max_horizon_minutes())
    }
}

/// The forecaster's configuration.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "apollo-forecaster",
    version,
    about = "APOLLO Node Resource Forecaster"
)]
pub struct Config {
    /// Address of the gRPC server (this service's API, health and reflection).
    #[arg(
        long = "grpc-addr",
        env = "APOLLO_GRPC_ADDR",
        default_value = "0.0.0.0:50055"
    )]
    pub grpc_addr: SocketAddr,
    /// Forecasting settings.
    #[command(flatten)]
    pub forecast: ForecastArgs,
    /// NATS connection.
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Stream retention.
    #[command(flatten)]
    pub streams: StreamArgs,
    /// TLS of the gRPC server (plaintext h2c when unset).
    #[command(flatten)]
    pub grpc_tls: apollo_common::grpc_tls::GrpcTlsArgs,
    /// Message sizes, calls in progress and per-client rate of the gRPC server.
    #[command(flatten)]
    pub grpc_limits: apollo_common::grpc_limits::GrpcLimitArgs,
    /// Logs, traces, metrics endpoint, shutdown grace.
    #[command(flatten)]
    pub observability: ObservabilityArgs,
}

impl Config {
    /// Validates every group.
    pub fn validate(&self) -> Result<(), Error> {
        self.forecast.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::auto::DEFAULT_FULL_MODELS;

    #[test]
    fn thresholds_and_horizons_parse() {
        let t = parse_thresholds("cpu=80, gpu=99").unwrap();
        assert_eq!(t.get(Resource::Cpu), 80.0);
        assert_eq!(t.get(Resource::Gpu), 99.0);
        assert_eq!(t.get(Resource::Storage), 85.0);
        assert!(parse_thresholds("disk=3").is_err());
        assert!(parse_thresholds("cpu=-1").is_err());
        assert!(parse_thresholds("cpu").is_err());
        assert_eq!(
            parse_full_models("arima, ets,arima").unwrap(),
            FullModels(vec![FullModel::Arima, FullModel::Ets])
        );
        assert_eq!(parse_full_models("none").unwrap(), FullModels(Vec::new()));
        assert!(parse_full_models("lstm").is_err());
        assert!(parse_full_models("xgboost").is_err());
        assert_eq!(parse_horizons("60,5,15,5").unwrap(), vec![5, 15, 60]);
        assert!(parse_horizons("0").is_err());
        assert!(parse_horizons("x").is_err());
    }

    #[test]
    fn threshold_flag_default_is_the_thresholds_default() {
        let a = ForecastArgs::default();
        assert_eq!(a.overload_threshold, Thresholds::default());
        assert_eq!(a.auto_full_models, FullModels(DEFAULT_FULL_MODELS.to_vec()));
    }

    #[test]
    fn defaults_validate_and_steps_round_up() {
        let mut a = ForecastArgs::default();
        a.validate().unwrap();
        assert_eq!(a.max_steps(), 60);
        a.step = Duration::from_secs(90);
        assert_eq!(a.steps_for(5), 4);
        a.confidence = 1.0;
        assert!(a.validate().is_err());
    }
}

#[cfg(test)]
mod cli_tests {
    use super::*;

    #[test]
    fn command_line_parses() {
        let c = Config::try_parse_from([
            "apollo-forecaster",
            "--horizons",
            "60,5",
            "--overload-threshold",
            "cpu=80",
            "--step",
            "30s",
        ])
        .unwrap();
        assert_eq!(c.forecast.horizons, vec![60, 5]);
        assert_eq!(c.forecast.step, Duration::from_secs(30));
        assert_eq!(c.forecast.overload_threshold.get(Resource::Cpu), 80.0);
        c.validate().unwrap();
        assert!(Config::try_parse_from(["apollo-forecaster", "--horizons", "0"]).is_err());
    }
}
