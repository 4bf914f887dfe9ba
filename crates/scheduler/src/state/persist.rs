//! Persisting the scheduler's jobs: one JSON file, written whole (temporary file, fsync, rename),
//! from a snapshot taken under the lock and written without it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use serde::{Deserialize, Serialize};

use super::error::SchedulerError;
use super::job::Job;

#[derive(Clone, Serialize, Deserialize, Default)]
pub(crate) struct Persisted {
    pub(crate) next_job: u64,
    pub(crate) jobs: BTreeMap<String, Job>,
}

/// The persisted part of the state at one moment, to write off the lock.
pub struct Snapshot {
    pub(crate) path: PathBuf,
    pub(crate) persisted: Persisted,
    /// Snapshots are numbered in the order they were taken.
    pub(crate) seq: u64,
    /// The number of the newest snapshot written; held while writing, so two writers never
    /// share the temporary file and an older snapshot never replaces a newer one.
    pub(crate) written: Arc<Mutex<u64>>,
}

impl Snapshot {
    /// Writes it (temporary file, fsync, rename), unless a newer one was written already.
    pub fn write(&self) -> Result<(), SchedulerError> {
        let mut written = self.written.lock();
        if *written >= self.seq {
            return Ok(());
        }
        write_state(&self.path, &self.persisted)?;
        *written = self.seq;
        Ok(())
    }
}

pub(crate) fn write_state(path: &Path, persisted: &Persisted) -> Result<(), SchedulerError> {
    let err = |reason: String| SchedulerError::State { path: path.to_path_buf(), reason };
    let bytes = serde_json::to_vec(persisted).map_err(|e| err(e.to_string()))?;
    ember_core::files::write_atomically(path, &bytes).map_err(|e| err(e.to_string()))
}

pub(crate) use ember_core::unix_ms;
