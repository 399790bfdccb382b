//! Errors of the ingest service and their gRPC status codes (mapped in one
//! place).

use std::time::Duration;

use apollo_common::BusError;

use crate::validate::Violation;

/// Result with the ingest [`enum@Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a report was not stored or the service could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The message failed validation; nothing was published.
    #[error("{0}")]
    Invalid(#[from] Violation),
    /// The bus failed (unreachable NATS, refused publish, encoding).
    #[error(transparent)]
    Bus(#[from] BusError),
    /// JetStream did not acknowledge within the overall deadline.
    #[error("JetStream did not acknowledge the publish within {0:?}")]
    Timeout(Duration),
    /// A client stream ended early; counts what was stored before.
    #[error("{source}; stream aborted after {processed} of {received} received messages were stored ({rejected} rejected)")]
    StreamAborted {
        /// Messages received before the failure.
        received: u64,
        /// Messages stored before the failure.
        processed: u64,
        /// Messages refused by validation.
        rejected: u64,
        /// The failure.
        source: Box<Error>,
    },
    /// The request stream itself failed (decode error, oversized message,
    /// client gone); the status is passed on.
    #[error("{}", .0.message())]
    Transport(tonic::Status),
    /// The configuration is unusable.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Binding or serving failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The Kubernetes client could not be configured.
    #[error("kubernetes client: {0}")]
    Kubernetes(String),
    /// The gRPC server failed.
    #[error("gRPC server failed: {0}")]
    Server(#[from] tonic::transport::Error),
}

impl Error {
    fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            Self::Invalid(_) => Code::InvalidArgument,
            Self::Bus(BusError::Unavailable(_) | BusError::Publish { .. }) => Code::Unavailable,
            Self::Bus(BusError::JetStream { .. }) => Code::Unavailable,
            Self::Bus(BusError::EmptyToken | BusError::BadToken(_)) => Code::InvalidArgument,
            Self::Bus(BusError::Config(_) | BusError::Decode(_)) => Code::Internal,
            // The service's NATS user lacks a permission: the deployment is
            // wrong, not the request, and a retry cannot help.
            Self::Bus(BusError::PermissionDenied { .. }) => Code::Internal,
            Self::Bus(BusError::Refused { .. }) => Code::Unavailable,
            Self::Timeout(_) => Code::Unavailable,
            Self::StreamAborted { source, .. } => source.code(),
            Self::Transport(status) => status.code(),
            Self::Config(_) | Self::Io { .. } | Self::Server(_) | Self::Kubernetes(_) => {
                Code::Internal
            }
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        tonic::Status::new(err.code(), err.to_string())
    }
}
