//! The forecaster's error type and its mapping to gRPC status codes.

use apollo_common::BusError;
use thiserror::Error;

use crate::models::ModelError;

/// Result with the forecaster's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the forecaster.
#[derive(Debug, Error)]
pub enum Error {
    /// A setting is out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A request argument is invalid.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The node is unknown (never seen, or dropped after its TTL).
    #[error("unknown node {0:?}")]
    NodeNotFound(String),
    /// No node matches the request.
    #[error("no forecast available: {0}")]
    NoData(String),
    /// NATS is not reachable or a stream operation failed.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// A model rejected its input.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Binding or serving failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The gRPC server could not start or failed.
    #[error(transparent)]
    Server(#[from] apollo_common::shell::ShellError),
    /// A background task panicked or was cancelled.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        let msg = err.to_string();
        match err {
            Error::InvalidArgument(_) | Error::Config(_) => tonic::Status::invalid_argument(msg),
            Error::NodeNotFound(_) | Error::NoData(_) => tonic::Status::not_found(msg),
            Error::Bus(err) => err.into(),
            Error::Model(ModelError::InvalidHorizon(_) | ModelError::InvalidLevel(_)) => {
                tonic::Status::invalid_argument(msg)
            }
            Error::Model(ModelError::TooShort { .. }) => tonic::Status::failed_precondition(msg),
            _ => tonic::Status::internal(msg),
        }
    }
}
