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
    /// The gRPC server could not start or failed.
    #[error(transparent)]
    Server(apollo_common::shell::ShellError),
}

impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        match err {
            Error::InvalidArgument(m) => tonic::Status::invalid_argument(m),
            Error::Bus(err) => err.into(),
            Error::Config(_) => tonic::Status::failed_precondition(err.to_string()),
            _ => tonic::Status::internal(err.to_string()),
        }
    }
}
