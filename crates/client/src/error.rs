//! The client's error type.

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The endpoint is malformed or the connection could not be made.
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// Cause.
        source: tonic::transport::Error,
    },
    /// The server answered with an error status.
    #[error("{endpoint}: {} ({:?})", status.message(), status.code())]
    Rpc {
        /// The server that refused.
        endpoint: String,
        /// Its status.
        status: tonic::Status,
    },
    /// The caller passed arguments that cannot make a valid request.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The server's reply does not match the request (a bug or version skew).
    #[error("{endpoint}: malformed reply: {reason}")]
    Protocol {
        /// The server.
        endpoint: String,
        /// What was wrong.
        reason: String,
    },
}

impl ClientError {
    /// The gRPC code of a server refusal, if this is one.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            ClientError::Rpc { status, .. } => Some(status.code()),
            _ => None,
        }
    }
}
