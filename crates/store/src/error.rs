//! The store's one error type. Callers (the gRPC adapter) map each variant to a status code in
//! one place; every message names the table and, for size errors, the expected size.

use ember_core::{SpecError, TableSpec};

/// Why a store operation was refused. A refused operation changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No table by that name.
    #[error("table {0:?} not found")]
    TableNotFound(String),
    /// The table exists but is of the other kind (sparse vs dense).
    #[error("table {name:?} is a {actual} table, this operation needs a {expected} one")]
    WrongKind {
        /// Table name.
        name: String,
        /// Its kind.
        actual: &'static str,
        /// The kind the operation needs.
        expected: &'static str,
    },
    /// A create named an existing table with a different spec.
    #[error("table {:?} already exists with a different spec: {existing:?}", existing.name)]
    SpecConflict {
        /// The spec already in place.
        existing: Box<TableSpec>,
    },
    /// The spec itself is invalid.
    #[error(transparent)]
    InvalidSpec(#[from] SpecError),
    /// A values/gradients buffer does not match keys x dim.
    #[error("table {table:?}: {what} has {got_bytes} bytes, expected {} ({keys} keys x dim {dim} x 4 bytes)", keys * dim * 4)]
    BadLength {
        /// Table name.
        table: String,
        /// Which buffer.
        what: &'static str,
        /// Its size in bytes.
        got_bytes: usize,
        /// Keys in the request.
        keys: usize,
        /// The table's dim.
        dim: usize,
    },
    /// A compressed gradient that does not decode (wrong length, bad scale, zero chunk).
    #[error("table {table:?}: {reason}")]
    BadEncoding {
        /// Table name.
        table: String,
        /// What the codec found.
        reason: String,
    },
    /// A gradient held NaN or Inf; the push was rejected whole.
    #[error(
        "table {table:?}: gradient for key {key} is not finite ({value}); the push was rejected and no row changed"
    )]
    NonFinite {
        /// Table name.
        table: String,
        /// The first offending key (dense: the index in the vector).
        key: u64,
        /// The offending value.
        value: f32,
    },
    /// The cold tier failed (I/O, a malformed record); the operation may have been partly applied
    /// to DRAM rows but never leaves a row in neither tier.
    #[error("table {table:?}: cold tier failed: {reason}")]
    Tier {
        /// Table name.
        table: String,
        /// The backend's error.
        reason: String,
    },
    /// More keys in one request than the server accepts.
    #[error("batch of {got} keys exceeds this server's limit of {limit} keys per request; split the batch")]
    BatchTooLarge {
        /// Keys in the request.
        got: usize,
        /// The configured limit.
        limit: usize,
    },
}

impl ember_core::HasCode for StoreError {
    fn code(&self) -> ember_core::Code {
        use ember_core::Code;
        match self {
            StoreError::TableNotFound(_) => Code::NotFound,
            StoreError::WrongKind { .. } | StoreError::SpecConflict { .. } => Code::FailedPrecondition,
            StoreError::InvalidSpec(_)
            | StoreError::BadLength { .. }
            | StoreError::BadEncoding { .. }
            | StoreError::NonFinite { .. } => Code::InvalidArgument,
            StoreError::BatchTooLarge { .. } => Code::ResourceExhausted,
            // The cold tier's disk failed: retrying later may work.
            StoreError::Tier { .. } => Code::Unavailable,
        }
    }
}
