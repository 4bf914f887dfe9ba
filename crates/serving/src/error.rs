//! The serving node's errors and the one place they become gRPC and HTTP status codes.

use ember_model::RegistryError;

/// Why a request or a model load failed.
#[derive(Debug, thiserror::Error)]
pub enum ServingError {
    /// The request is malformed (unknown field, bad value, too many samples, unknown model).
    #[error("{0}")]
    InvalidArgument(String),
    /// The request names a model this node does not serve.
    #[error("unknown model {name:?} (this node serves {serving:?})")]
    UnknownModel {
        /// The name asked for.
        name: String,
        /// The models served.
        serving: Vec<String>,
    },
    /// The request names a version not held in memory.
    #[error("model {model:?} version {version} is not loaded (loaded: {kept:?})")]
    UnknownVersion {
        /// The model.
        model: String,
        /// The version asked for.
        version: u64,
        /// The versions held.
        kept: Vec<u64>,
    },
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
    /// The replicas do not hold this version's sparse state (yet): a swap to it waits.
    #[error("no replica holds the sparse state of model version {0} yet")]
    SparseNotReady(u64),
    /// A model version could not be read.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The forward pass failed, or a new version's warm-up did.
    #[error("compute failed: {0}")]
    Compute(String),
}

impl ember_core::HasCode for ServingError {
    fn code(&self) -> ember_core::Code {
        use ember_core::Code;
        match self {
            ServingError::InvalidArgument(_) => Code::InvalidArgument,
            ServingError::UnknownModel { .. } | ServingError::UnknownVersion { .. } => Code::NotFound,
            ServingError::NoModel | ServingError::Lookup { .. } | ServingError::SparseNotReady(_) => Code::Unavailable,
            ServingError::Registry(_) | ServingError::Compute(_) => Code::Internal,
        }
    }
}

impl ServingError {
    /// The gRPC status of this error.
    pub fn status(&self) -> tonic::Status {
        ember_proto::error::status(self)
    }

    /// The HTTP status of this error.
    pub fn http_status(&self) -> axum::http::StatusCode {
        let code = ember_core::HasCode::code(self).http_status();
        axum::http::StatusCode::from_u16(code).unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The `code` label of request metrics.
    pub fn label(&self) -> &'static str {
        ember_core::HasCode::code(self).label()
    }
}
