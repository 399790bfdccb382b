//! Command-line/environment configuration shared by every service.
//!
//! Each service's `Config` flattens these groups, so every service accepts the
//! same `APOLLO_NATS_*`, `APOLLO_METRICS_ADDR` and stream settings.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Command, FromArgMatches};

use crate::background::FollowerPriority;

/// Parses `flags` as a group of flags alone, ignoring the `APOLLO_*`
/// environment: what every flag not given defaults to is exactly what
/// `--help` shows. The `Default` of every settings group comes from here, so
/// each default is written once, in its `#[arg]`; tests pass their values
/// as flags.
pub fn parse_flags<T: Args + FromArgMatches>(flags: &[&str]) -> Result<T, clap::Error> {
    let command = T::augment_args(Command::new("flags")).mut_args(|a| a.env(None::<&str>));
    let matches =
        command.try_get_matches_from(std::iter::once("flags").chain(flags.iter().copied()))?;
    T::from_arg_matches(&matches)
}

/// The defaults of a group of flags, as `--help` shows them.
pub fn flag_defaults<T: Args + FromArgMatches>() -> T {
    parse_flags(&[]).expect("every flag default parses")
}

/// Parses durations such as `30s`, `5m`, `24h`, `7d` or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let value: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 30s, 5m, 24h, 7d"))?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86_400.0,
        _ => {
            return Err(format!(
                "invalid duration unit {unit:?} in {s:?}: use ms, s, m, h or d"
            ))
        }
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("invalid duration {s:?}: must be non-negative"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// How to reach NATS. Credentials and TLS follow the NATS CLI's conventions.
///
/// `Debug` prints secrets (password, token) as `<redacted>`, so a config
/// logged at start-up or in a panic message never leaks them; file paths
/// (credentials, keys) are shown since they are not secret themselves.
#[derive(Clone, Args)]
pub struct NatsArgs {
    /// NATS server URL(s), comma separated.
    #[arg(
        long = "nats-url",
        env = "APOLLO_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub url: String,
    /// NATS credentials file (JWT + NKey seed), as produced by `nsc`.
    #[arg(long = "nats-creds", env = "APOLLO_NATS_CREDS")]
    pub creds_file: Option<PathBuf>,
    /// NATS user name (with `--nats-password`).
    #[arg(long = "nats-user", env = "APOLLO_NATS_USER")]
    pub user: Option<String>,
    /// NATS password.
    #[arg(
        long = "nats-password",
        env = "APOLLO_NATS_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<String>,
    /// NATS token.
    #[arg(long = "nats-token", env = "APOLLO_NATS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the NKey seed (`SU...`) of a user the server knows by
    /// its public NKey (`nkey:` in the server's authorization block).
    #[arg(long = "nats-nkey", env = "APOLLO_NATS_NKEY")]
    pub nkey_file: Option<PathBuf>,
    /// CA certificate (PEM) used to verify the NATS server; enables TLS.
    #[arg(long = "nats-tls-ca", env = "APOLLO_NATS_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(
        long = "nats-tls-cert",
        env = "APOLLO_NATS_TLS_CERT",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS.
    #[arg(
        long = "nats-tls-key",
        env = "APOLLO_NATS_TLS_KEY",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// Require TLS even without a custom CA.
    #[arg(
        long = "nats-tls-required",
        env = "APOLLO_NATS_TLS_REQUIRED",
        default_value_t = false
    )]
    pub tls_required: bool,
    /// Subject prefix; the first token of every APOLLO subject.
    #[arg(
        long = "subject-prefix",
        env = "APOLLO_SUBJECT_PREFIX",
        default_value = "apollo"
    )]
    pub subject_prefix: String,
    /// Prefix of the JetStream stream names (`<PREFIX>_INSIGHT`, ...).
    #[arg(
        long = "stream-prefix",
        env = "APOLLO_STREAM_PREFIX",
        default_value = "APOLLO"
    )]
    pub stream_prefix: String,
    /// Timeout for a JetStream publish acknowledgement and API requests.
    #[arg(long = "nats-timeout", env = "APOLLO_NATS_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub request_timeout: Duration,
}

/// The server URL(s) with any `user:password@` / `token@` part replaced by
/// `<redacted>@`: what logs and error messages show.
pub fn redact_url(urls: &str) -> String {
    urls.split(',')
        .map(|url| {
            let (scheme, rest) = match url.find("://") {
                Some(i) => url.split_at(i + 3),
                None => ("", url),
            };
            let authority_end = rest.find('/').unwrap_or(rest.len());
            match rest[..authority_end].rfind('@') {
                Some(at) => format!("{scheme}<redacted>{}", &rest[at..]),
                None => url.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

impl NatsArgs {
    /// The server URL(s) safe to log: credentials in them are redacted.
    pub fn display_url(&self) -> String {
        redact_url(&self.url)
    }
}

/// Shows whether a secret is set without showing it.
fn redacted(secret: &Option<String>) -> Option<&'static str> {
    secret.as_ref().map(|_| "<redacted>")
}

impl std::fmt::Debug for NatsArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Destructured so a new field cannot be added without deciding here
        // whether it is secret.
        let Self {
            url,
            creds_file,
            user,
            password,
            token,
            nkey_file,
            tls_ca,
            tls_cert,
            tls_key,
            tls_required,
            subject_prefix,
            stream_prefix,
            request_timeout,
        } = self;
        f.debug_struct("NatsArgs")
            .field("url", &redact_url(url))
            .field("creds_file", creds_file)
            .field("user", user)
            .field("password", &redacted(password))
            .field("token", &redacted(token))
            .field("nkey_file", nkey_file)
            .field("tls_ca", tls_ca)
            .field("tls_cert", tls_cert)
            .field("tls_key", tls_key)
            .field("tls_required", tls_required)
            .field("subject_prefix", subject_prefix)
            .field("stream_prefix", stream_prefix)
            .field("request_timeout", request_timeout)
            .finish()
    }
}

impl Default for NatsArgs {
    /// The flag defaults.
    fn default() -> Self {
        flag_defaults()
    }
}

/// Retention of the JetStream streams; see `docs/architecture.md`.
///
/// Per-subject limits keep the latest history of every node and pod so a
/// restarted consumer rebuilds its state from the stream.
#[derive(Debug, Clone, Args)]
pub struct StreamArgs {
    /// Messages kept per subject on the insight stream (per node / per pod);
    /// 1440 = 12 h of 30 s reports, the forecaster's history window.
    #[arg(
        long = "insight-max-per-subject",
        env = "APOLLO_INSIGHT_MAX_PER_SUBJECT",
        default_value_t = 1440
    )]
    pub insight_max_per_subject: i64,
    /// Maximum age of insight messages.
    #[arg(long = "insight-max-age", env = "APOLLO_INSIGHT_MAX_AGE", default_value = "24h", value_parser = parse_duration)]
    pub insight_max_age: Duration,
    /// Messages kept per subject on forecast, alert, policy and feedback streams.
    #[arg(
        long = "events-max-per-subject",
        env = "APOLLO_EVENTS_MAX_PER_SUBJECT",
        default_value_t = 100
    )]
    pub events_max_per_subject: i64,
    /// Maximum age of forecast, alert, policy and feedback messages.
    #[arg(long = "events-max-age", env = "APOLLO_EVENTS_MAX_AGE", default_value = "7d", value_parser = parse_duration)]
    pub events_max_age: Duration,
    /// JetStream de-duplication window for `Nats-Msg-Id`.
    #[arg(long = "duplicate-window", env = "APOLLO_DUPLICATE_WINDOW", default_value = "2m", value_parser = parse_duration)]
    pub duplicate_window: Duration,
    /// JetStream storage: `file` (durable) or `memory`.
    #[arg(long = "stream-storage", env = "APOLLO_STREAM_STORAGE", default_value = "file", value_parser = ["file", "memory"])]
    pub storage: String,
    /// Stream replicas (1 for a single server, 3 for a production cluster).
    #[arg(
        long = "stream-replicas",
        env = "APOLLO_STREAM_REPLICAS",
        default_value_t = 1
    )]
    pub replicas: usize,
    /// How long the engines keep the decision record of each policy (its
    /// inputs and factors, read by `apolloctl explain`).
    #[arg(long = "decision-record-ttl", env = "APOLLO_DECISION_RECORD_TTL", default_value = "1h", value_parser = parse_duration)]
    pub decision_record_ttl: Duration,
}

impl Default for StreamArgs {
    /// The flag defaults.
    fn default() -> Self {
        flag_defaults()
    }
}

/// Bounds of the cluster view (latest insight per node, signature per pod)
/// that the engines keep in memory: pod and node names come from reports, so
/// without a bound a stream of made-up names would grow it without end.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct ViewArgs {
    /// Most nodes kept in the view; past it the nodes reported least
    /// recently are evicted (counted in `apollo_view_evicted_total`).
    #[arg(
        long = "view-max-nodes",
        env = "APOLLO_VIEW_MAX_NODES",
        default_value_t = 20_000
    )]
    pub max_nodes: usize,
    /// Most pods (workload signatures) kept in the view; past it the pods
    /// reported least recently are evicted.
    #[arg(
        long = "view-max-pods",
        env = "APOLLO_VIEW_MAX_PODS",
        default_value_t = 200_000
    )]
    pub max_pods: usize,
    /// Nodes and pods not reported for this long leave the view (a deleted
    /// pod, a removed node); the insight stream's default retention.
    #[arg(long = "view-entry-ttl", env = "APOLLO_VIEW_ENTRY_TTL", default_value = "24h", value_parser = parse_duration)]
    pub entry_ttl: Duration,
    /// How the kernel schedules the threads that follow the insight stream
    /// and apply it: `idle` (SCHED_IDLE) runs them only while no call is
    /// being answered on their core; `normal` shares the core equally.
    #[arg(
        long = "view-follower-priority",
        env = "APOLLO_VIEW_FOLLOWER_PRIORITY",
        value_enum,
        default_value_t = FollowerPriority::Idle
    )]
    pub follower_priority: FollowerPriority,
}

impl Default for ViewArgs {
    /// The flag defaults.
    fn default() -> Self {
        flag_defaults()
    }
}

impl ViewArgs {
    /// Checks the bounds once after parsing.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_nodes == 0 || self.max_pods == 0 {
            return Err("--view-max-nodes and --view-max-pods must be at least 1".into());
        }
        if self.entry_ttl.is_zero() {
            return Err("--view-entry-ttl must be positive".into());
        }
        Ok(())
    }
}

/// Telemetry and the HTTP endpoint for Prometheus and probes.
#[derive(Debug, Clone, Args)]
pub struct ObservabilityArgs {
    /// Address of the HTTP server for `/metrics`, `/healthz` and `/readyz`.
    #[arg(
        long = "metrics-addr",
        env = "APOLLO_METRICS_ADDR",
        default_value = "0.0.0.0:9090"
    )]
    pub metrics_addr: SocketAddr,
    /// Log format: `text` or `json`.
    #[arg(long = "log-format", env = "APOLLO_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// Log filter (tracing `EnvFilter` syntax), e.g. `info,apollo_ingest=debug`.
    #[arg(long = "log", env = "APOLLO_LOG", default_value = "info")]
    pub log_filter: String,
    /// Grace period for draining in-flight work on SIGTERM.
    #[arg(long = "shutdown-grace", env = "APOLLO_SHUTDOWN_GRACE", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// At the start of a shutdown, how long new gRPC calls are answered with
    /// UNAVAILABLE (readiness already NOT_SERVING) before the server
    /// refuses new streams; at most half the grace period. 0: refuse at once.
    #[arg(long = "shutdown-pre-stop", env = "APOLLO_SHUTDOWN_PRE_STOP", default_value = "1s", value_parser = parse_duration)]
    pub shutdown_pre_stop: Duration,
}

impl Default for ObservabilityArgs {
    /// The flag defaults.
    fn default() -> Self {
        flag_defaults()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(604_800));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("12").unwrap(), Duration::from_secs(12));
        assert!(parse_duration("5 weeks").is_err());
        assert!(parse_duration("abc").is_err());
    }

    #[test]
    fn defaults_are_the_flag_defaults_and_flags_override_them() {
        let o = ObservabilityArgs::default();
        assert_eq!(o.metrics_addr.to_string(), "0.0.0.0:9090");
        assert_eq!(o.shutdown_grace, Duration::from_secs(20));
        let o: ObservabilityArgs =
            parse_flags(&["--metrics-addr", "127.0.0.1:0", "--shutdown-grace", "1s"]).unwrap();
        assert_eq!(o.metrics_addr.port(), 0);
        assert_eq!(o.shutdown_grace, Duration::from_secs(1));
        assert_eq!(StreamArgs::default().insight_max_per_subject, 1440);
        assert_eq!(NatsArgs::default().url, "nats://127.0.0.1:4222");
        assert!(parse_flags::<NatsArgs>(&["--nats-timeout", "soon"]).is_err());
        assert_eq!(ViewArgs::default().max_pods, 200_000);
    }

    #[test]
    fn view_bounds_must_be_positive() {
        assert!(ViewArgs::default().validate().is_ok());
        let zero = ViewArgs {
            max_pods: 0,
            ..ViewArgs::default()
        };
        assert!(zero.validate().is_err());
    }

    #[test]
    fn debug_output_redacts_nats_secrets() {
        let args = NatsArgs {
            user: Some("ingest".into()),
            password: Some("hunter2-pass".into()),
            token: Some("s3cr3t-token".into()),
            ..NatsArgs::default()
        };
        for shown in [format!("{args:?}"), format!("{args:#?}")] {
            assert!(!shown.contains("hunter2-pass"), "{shown}");
            assert!(!shown.contains("s3cr3t-token"), "{shown}");
            assert!(shown.contains("ingest"), "{shown}");
            assert_eq!(shown.matches("<redacted>").count(), 2, "{shown}");
        }
        let in_url = NatsArgs {
            url: "nats://ingest:hunter2-pass@10.0.0.1:4222,nats://tok3n@n2:4222,nats://n3:4222"
                .into(),
            ..NatsArgs::default()
        };
        let shown = format!("{in_url:?}");
        assert!(!shown.contains("hunter2-pass"), "{shown}");
        assert!(!shown.contains("tok3n"), "{shown}");
        assert_eq!(
            in_url.display_url(),
            "nats://<redacted>@10.0.0.1:4222,nats://<redacted>@n2:4222,nats://n3:4222"
        );
        // Unset secrets show as unset, not as redacted.
        let shown = format!("{:?}", NatsArgs::default());
        assert!(!shown.contains("<redacted>"), "{shown}");
        assert!(shown.contains("password: None"), "{shown}");
    }
}
