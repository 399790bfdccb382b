//! Errors of the scheduling service, mapped to gRPC status in one place.

use apollo_common::BusError;

/// Convenience alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request the scheduler never sends (e.g. an empty pod name).
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    /// Invalid configuration.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// NATS.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// Binding or serving a socket.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// Cause.
        source: std::io::Error,
    },
    /// The gRPC transport failed.
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Reflection could not be built.
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        match &err {
            Error::InvalidArgument(m) => tonic::Status::invalid_argument(m.clone()),
            Error::Bus(BusError::Unavailable(_)) => tonic::Status::unavailable(err.to_string()),
            Error::Config(_) => tonic::Status::failed_precondition(err.to_string()),
            _ => tonic::Status::internal(err.to_string()),
        }
    }
}
