//! The serving node's errors and the one place they become gRPC and HTTP status codes.

use ember_model::RegistryError;

/// Why a request or a model load failed.
#[derive(Debug, thiserror::Error)]
pub enum ServingError {
    /// The request is malformed (unknown field, bad value, too many samples, unknown model).
    #[error("{0}")]
    InvalidArgument(String),
    /// No model version is loaded yet.
    #[error("no model loaded yet")]
    NoModel,
    /// A sparse lookup failed and the node is configured to fail.
    #[error("lookup of {table} failed: {reason}")]
    Lookup {
        /// Table.
        table: String,
        /// The ps-server's error or the timeout.
        reason: String,
    },
    /// A model version could not be read.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The forward pass failed, or a new version's warm-up did.
    #[error("compute failed: {0}")]
    Compute(String),
}

impl ServingError {
    /// The gRPC status of this error.
    pub fn status(&self) -> tonic::Status {
        let msg = self.to_string();
        match self {
            ServingError::InvalidArgument(_) => tonic::Status::invalid_argument(msg),
            ServingError::NoModel | ServingError::Lookup { .. } => tonic::Status::unavailable(msg),
            ServingError::Registry(_) | ServingError::Compute(_) => tonic::Status::internal(msg),
        }
    }

    /// The HTTP status of this error.
    pub fn http_status(&self) -> axum::http::StatusCode {
        use axum::http::StatusCode;
        match self {
            ServingError::InvalidArgument(_) => StatusCode::BAD_REQUEST,
            ServingError::NoModel | ServingError::Lookup { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ServingError::Registry(_) | ServingError::Compute(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}
