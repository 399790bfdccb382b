//! What APOLLO's services share: configuration, telemetry, the NATS bus
//! (subjects, streams, JSON codec, trace-context headers), the `ClusterView`
//! rebuilt from the bus, graceful shutdown, health and metrics endpoints,
//! and the [`shell::ServiceShell`] every service serves through.
//!
//! Only code that two or more services use lives here.

pub mod background;
pub mod bus;
pub mod cluster_view;
pub mod config;
pub mod grpc;
pub mod grpc_limits;
pub mod grpc_telemetry;
pub mod grpc_tls;
pub mod health;
pub mod nats_server;
pub mod shared_metrics;
pub mod shell;
pub mod shutdown;
pub mod telemetry;
#[cfg(feature = "test-support")]
pub mod testing;

pub use bus::{Bus, BusError, Subjects};
pub use cluster_view::ClusterView;
