//! The replica's errors and their codes (the one vocabulary in `ember_core::Code`).

use ember_core::{Code, HasCode};

/// Why a lookup or the replica itself failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// The request is malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// The replica holds no table of that name.
    #[error("this replica holds no table {0:?}")]
    UnknownTable(String),
    /// A key of a slot this replica does not hold.
    #[error(
        "key {key} is in slot {slot} of {num_slots}, which this replica does not hold (slot map version {map_version})"
    )]
    NotOwned {
        /// The key.
        key: u64,
        /// Its slot.
        slot: u32,
        /// Slots in the map.
        num_slots: u32,
        /// The replica's slot-map version.
        map_version: u64,
    },
    /// A published version whose sparse state this replica does not hold.
    #[error("this replica does not hold model version {version} (it holds {kept:?})")]
    VersionNotKept {
        /// The version asked for.
        version: u64,
        /// The versions held.
        kept: Vec<u64>,
    },
    /// Still catching up after a start.
    #[error("not ready: {0}")]
    NotReady(String),
    /// A segment or manifest could not be written or read.
    #[error(transparent)]
    Segment(#[from] ember_store::SegmentError),
    /// The file system failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The gRPC server could not start.
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
    /// A bug.
    #[error("internal error: {0}")]
    Internal(String),
}

impl HasCode for ReplicaError {
    fn code(&self) -> Code {
        match self {
            ReplicaError::InvalidArgument(_) => Code::InvalidArgument,
            ReplicaError::UnknownTable(_) | ReplicaError::VersionNotKept { .. } => Code::NotFound,
            ReplicaError::NotOwned { .. } => Code::FailedPrecondition,
            ReplicaError::NotReady(_) | ReplicaError::Segment(_) | ReplicaError::Io { .. } => Code::Unavailable,
            ReplicaError::Transport(_) | ReplicaError::Internal(_) => Code::Internal,
        }
    }
}

impl ReplicaError {
    /// The gRPC status of this error.
    pub fn status(&self) -> tonic::Status {
        ember_proto::error::status(self)
    }
}
