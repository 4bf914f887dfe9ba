//! Full and incremental checkpoints of a [`Store`] into a directory, and restore from them.
//!
//! Files are named `{id:016}-{full|incr}.ckpt`; ids increase per directory. An incremental
//! checkpoint holds the rows changed and keys deleted since its parent, so a restore applies one
//! full checkpoint and then its chain of incrementals, each naming the previous as parent.
//! `MANIFEST.json` names the current chain for operators and tools; restore itself trusts only
//! the files, each verified by its checksum before any of it is applied.
//!
//! Invariants:
//! - A file appears under its final name only complete: written to `.tmp`, fsynced, renamed,
//!   then the directory fsynced. A failed checkpoint leaves every earlier file as it was, and
//!   the next checkpoint is full (the failed one had already taken the shards' change flags).
//! - A checkpoint holds each shard's lock only while copying that shard's rows: pulls and
//!   pushes pause for one shard's copy at a time, never for the disk writes.
//! - The copy is per shard, not a global snapshot: a push that lands during a checkpoint is in
//!   this checkpoint or in the next one, never lost and never applied twice on restore.
//! - Admission counts are saved with every checkpoint (they are small and change constantly),
//!   so a restored table admits exactly as the checkpointed one would have.
//! - Restore falls back past a corrupt or partial file: a chain ends at its last good file, and
//!   a corrupt full checkpoint sends restore to the previous full one. When checkpoint files
//!   exist but none starts an intact chain, restore refuses ([`CheckpointError::NoIntactChain`])
//!   unless the caller allows an empty start: an empty store would otherwise write an empty
//!   full checkpoint and, one checkpoint later, prune the damaged chain for good.
//! - Two generations: a chain is deleted only once two newer full checkpoints exist, each
//!   written, fsynced, renamed and then verified by reading it back. So the newest full can be
//!   damaged on disk and the one before it, with its incrementals, still restores.
//! - Temporary files left by a process killed mid-write are removed when the directory is
//!   opened (one process owns a checkpoint directory).

mod format;
mod read;
mod restore;
mod write;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use parking_lot::Mutex;

pub use read::ChainEvent;

use crate::{Store, StoreError};
pub use format::{seal, CheckpointKind, Header};

/// Why a checkpoint or restore failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Reading or writing a file failed (disk full, permissions, ...).
    #[error("checkpoint I/O on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file failed its checksum or does not parse.
    #[error("corrupt checkpoint {path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A restored table could not be created.
    #[error("restoring: {0}")]
    Store(#[from] StoreError),
    /// Checkpoint files exist but none starts an intact chain: starting empty would lose them.
    #[error(
        "{dir}: checkpoint files exist but no intact chain starts there ({}); refusing to start empty \
         (move the files away, or allow an empty start: `ember ps --allow-empty-restore`)",
        .damaged.join("; ")
    )]
    NoIntactChain {
        /// The checkpoint directory.
        dir: PathBuf,
        /// Each file that was present, with why it cannot start a chain.
        damaged: Vec<String>,
    },
    /// A checkpoint asked for is not (or no longer) in the directory.
    #[error("checkpoint {id} is not in {dir} (never written here, or pruned)")]
    Missing {
        /// The checkpoint directory.
        dir: PathBuf,
        /// The id asked for.
        id: u64,
    },
    /// Whoever was reading a chain stopped (e.g. the client went away).
    #[error("reading stopped: {0}")]
    Stopped(String),
}

impl ember_core::HasCode for CheckpointError {
    fn code(&self) -> ember_core::Code {
        use ember_core::Code;
        match self {
            // A disk that failed or filled: the previous checkpoint stands; retry later.
            CheckpointError::Io { .. } => Code::Unavailable,
            CheckpointError::Corrupt { .. } | CheckpointError::NoIntactChain { .. } => Code::FailedPrecondition,
            CheckpointError::Store(e) => ember_core::HasCode::code(e),
            CheckpointError::Missing { .. } => Code::NotFound,
            CheckpointError::Stopped(_) => Code::Unavailable,
        }
    }
}

/// What [`Checkpointer::restore`] does when checkpoint files exist but none starts an intact
/// chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfNoIntactChain {
    /// Fail with [`CheckpointError::NoIntactChain`] (the default for servers).
    Refuse,
    /// Start empty; the damaged files are kept until two newer full checkpoints exist.
    StartEmpty,
}

/// What a written or restored checkpoint holds.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CheckpointInfo {
    /// Id, increasing per directory.
    pub id: u64,
    /// Full or incremental.
    pub kind: CheckpointKind,
    /// The checkpoint this one applies on top of (0 for full).
    pub parent: u64,
    /// The caller's label (e.g. the job step).
    pub label: u64,
    /// Start time.
    pub unix_ms: u64,
    /// File name inside the directory.
    pub file: String,
    /// File size.
    pub bytes: u64,
    /// Sparse rows written.
    pub rows: u64,
    /// Deleted keys written.
    pub deleted: u64,
    /// Tables written.
    pub tables: u32,
    /// Time taken to write (or restore) it.
    pub seconds: f64,
}

/// `MANIFEST.json`: the chain a restore would apply, oldest first.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    /// Format version.
    pub format: u32,
    /// Full checkpoint, then its incrementals.
    pub chain: Vec<CheckpointInfo>,
}

#[derive(Debug, Default)]
struct State {
    /// Next id to use.
    next_id: u64,
    /// The current chain (what the next incremental builds on).
    chain: Vec<CheckpointInfo>,
    /// Set after a failed write: change flags were consumed, so only a full one is safe.
    force_full: bool,
    /// Tests: fail writes after this many bytes, like a full disk.
    fail_after: Option<u64>,
    /// Tests: damage the next file after it is renamed, so its read-back fails.
    damage_next: bool,
}

/// Writes checkpoints of one store into one directory and restores from it. One checkpoint at
/// a time: concurrent callers wait for each other.
#[derive(Debug)]
pub struct Checkpointer {
    dir: PathBuf,
    state: Mutex<State>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io { path: path.to_path_buf(), source }
}

/// (id, kind) of a checkpoint file name.
fn parse_name(name: &str) -> Option<(u64, CheckpointKind)> {
    let stem = name.strip_suffix(".ckpt")?;
    let (id, kind) = stem.split_once('-')?;
    let kind = match kind {
        "full" => CheckpointKind::Full,
        "incr" => CheckpointKind::Incremental,
        _ => return None,
    };
    Some((id.parse().ok()?, kind))
}

impl Checkpointer {
    /// Opens (creating it if needed) a checkpoint directory. Nothing is restored yet.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, CheckpointError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        Self::remove_temporaries(&dir)?;
        let next_id = Self::files(&dir)?.last().map_or(1, |(id, _, _)| id + 1);
        Ok(Self { dir, state: Mutex::new(State { next_id, ..State::default() }) })
    }

    /// Removes `*.tmp` files: a checkpoint or manifest whose writer died before the rename.
    /// They are never read (restore trusts only complete files), and each can be as large as a
    /// full checkpoint.
    fn remove_temporaries(dir: &Path) -> Result<(), CheckpointError> {
        let (mut files, mut bytes) = (0u64, 0u64);
        for entry in fs::read_dir(dir).map_err(io_err(dir))? {
            let entry = entry.map_err(io_err(dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(".ckpt.tmp") || name == "MANIFEST.json.tmp" {
                let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
                fs::remove_file(entry.path()).map_err(io_err(&entry.path()))?;
                files += 1;
                bytes += size;
            }
        }
        if files > 0 {
            tracing::warn!(dir = %dir.display(), files, bytes, "removed temporary files of interrupted checkpoints");
        }
        Ok(())
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Checkpoint files in the directory, by id.
    fn files(dir: &Path) -> Result<Vec<(u64, CheckpointKind, PathBuf)>, CheckpointError> {
        let mut files = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_err(dir))? {
            let entry = entry.map_err(io_err(dir))?;
            if let Some((id, kind)) = entry.file_name().to_str().and_then(parse_name) {
                files.push((id, kind, entry.path()));
            }
        }
        files.sort_by_key(|f| f.0);
        Ok(files)
    }

    /// The chain the next incremental would build on.
    pub fn chain(&self) -> Vec<CheckpointInfo> {
        self.state.lock().chain.clone()
    }

    #[cfg(test)]
    fn fail_writes_after(&self, bytes: Option<u64>) {
        self.state.lock().fail_after = bytes;
    }

    #[cfg(test)]
    fn damage_next_write(&self) {
        self.state.lock().damage_next = true;
    }

    /// Writes a checkpoint of `store`. An incremental one is written full when there is no chain
    /// to build on (first checkpoint, or after a failure). `label` is stored with it.
    pub fn write(&self, store: &Store, kind: CheckpointKind, label: u64) -> Result<CheckpointInfo, CheckpointError> {
        let mut state = self.state.lock();
        let started = Instant::now();
        // Expired rows are not worth writing (eviction also runs on the server's timer), and
        // softsync gradients still buffered would otherwise be in no checkpoint.
        store.evict()?;
        store.flush_pending()?;
        let dropped = store.take_dropped_flag();
        let kind = if state.chain.is_empty() || state.force_full || dropped { CheckpointKind::Full } else { kind };
        let id = state.next_id;
        state.next_id += 1;
        let parent = match kind {
            CheckpointKind::Full => 0,
            CheckpointKind::Incremental => state.chain.last().map_or(0, |c| c.id),
        };
        let file = format!("{id:016}-{}.ckpt", kind.as_str());
        let path = self.dir.join(&file);
        let tmp = self.dir.join(format!("{file}.tmp"));
        let tables = store.all_tables();
        let header = Header { kind, id, parent, label, unix_ms: ember_core::unix_ms(), tables: tables.len() as u32 };
        let result = write::write_file(&tmp, &header, &tables, state.fail_after);
        let (bytes, rows, deleted) = match result {
            Ok(counts) => counts,
            Err(e) => {
                state.force_full = true;
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        };
        let finish = fs::rename(&tmp, &path).and_then(|()| fs::File::open(&self.dir)?.sync_all());
        if let Err(source) = finish {
            state.force_full = true;
            let _ = fs::remove_file(&tmp);
            return Err(CheckpointError::Io { path, source });
        }
        if std::mem::take(&mut state.damage_next) {
            damage(&path);
        }
        // Read it back before it counts: nothing older is pruned on the word of a file that
        // does not verify.
        if let Err(e) = format::verify(&path) {
            state.force_full = true;
            if let Err(rm) = fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %rm, "could not remove a checkpoint that failed its read-back");
            }
            return Err(e);
        }
        state.force_full = false;
        let info = CheckpointInfo {
            id,
            kind,
            parent,
            label,
            unix_ms: header.unix_ms,
            file,
            bytes,
            rows,
            deleted,
            tables: header.tables,
            seconds: started.elapsed().as_secs_f64(),
        };
        if kind == CheckpointKind::Full {
            let previous_full = state.chain.first().map(|c| c.id);
            state.chain.clear();
            self.prune(previous_full);
        }
        state.chain.push(info.clone());
        self.write_manifest(&state.chain);
        Ok(info)
    }

    /// Deletes files older than the previous full checkpoint: the current chain and the one
    /// before it are kept, so a corrupt newest full can fall back.
    fn prune(&self, previous_full: Option<u64>) {
        let Some(keep_from) = previous_full else { return };
        let Ok(files) = Self::files(&self.dir) else { return };
        for (id, _, path) in files {
            if id < keep_from {
                if let Err(e) = fs::remove_file(&path) {
                    tracing::warn!(path = %path.display(), error = %e, "could not remove an old checkpoint");
                }
            }
        }
    }

    /// Best effort: the manifest is for operators; restore reads the files themselves.
    fn write_manifest(&self, chain: &[CheckpointInfo]) {
        let manifest = Manifest { format: 1, chain: chain.to_vec() };
        let (path, tmp) = (self.dir.join("MANIFEST.json"), self.dir.join("MANIFEST.json.tmp"));
        let written = serde_json::to_vec_pretty(&manifest)
            .map_err(std::io::Error::other)
            .and_then(|json| fs::write(&tmp, json))
            .and_then(|()| fs::File::open(&tmp)?.sync_all())
            .and_then(|()| fs::rename(&tmp, &path));
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "could not write the checkpoint manifest");
        }
    }
}

/// Tests: flips a byte in the middle of a written file.
fn damage(path: &Path) {
    if let Ok(mut bytes) = fs::read(path) {
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x5a;
        let _ = fs::write(path, bytes);
    }
}

#[cfg(test)]
mod tests;
