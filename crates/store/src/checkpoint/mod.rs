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
//!   a corrupt full checkpoint sends restore to the previous full one.

mod format;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use crate::record::{decode_keyed_row, encode_keyed_row_into, KEYED_HEADER};
use crate::{Store, StoreError, Table};
use format::{BodyReader, HashingWriter, TAG_DELETED, TAG_END, TAG_ROWS, TAG_SKETCH};
pub use format::{CheckpointKind, Header};

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
}

/// Writes checkpoints of one store into one directory and restores from it. One checkpoint at
/// a time: concurrent callers wait for each other.
#[derive(Debug)]
pub struct Checkpointer {
    dir: PathBuf,
    state: Mutex<State>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
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
        let next_id = Self::files(&dir)?.last().map_or(1, |(id, _, _)| id + 1);
        Ok(Self { dir, state: Mutex::new(State { next_id, ..State::default() }) })
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
        let header = Header { kind, id, parent, label, unix_ms: now_ms(), tables: tables.len() as u32 };
        let result = write_file(&tmp, &header, &tables, state.fail_after);
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

    /// Restores the newest complete chain into `store` (which should be empty), skipping corrupt
    /// files with a warning. Returns the chain applied, empty if there was nothing to restore.
    pub fn restore(&self, store: &Store) -> Result<Vec<CheckpointInfo>, CheckpointError> {
        let mut state = self.state.lock();
        let files = Self::files(&self.dir)?;
        let mut headers: BTreeMap<u64, (Header, PathBuf, u64)> = BTreeMap::new();
        for (id, _, path) in &files {
            match format::verify(path).and_then(|body| Ok((BodyReader::open(path, body)?.header()?, body))) {
                Ok((h, _)) if h.id != *id => {
                    tracing::warn!(path = %path.display(), header_id = h.id, "checkpoint id does not match its name; skipped")
                }
                Ok((h, body)) => {
                    headers.insert(*id, (h, path.clone(), body));
                }
                Err(e) => tracing::warn!(error = %e, "skipping checkpoint file"),
            }
        }
        let fulls: Vec<u64> =
            headers.values().filter(|(h, _, _)| h.kind == CheckpointKind::Full).map(|(h, _, _)| h.id).rev().collect();
        let Some(&full) = fulls.first() else {
            return Ok(Vec::new());
        };
        if fulls.len() < files.iter().filter(|f| f.1 == CheckpointKind::Full).count() {
            tracing::warn!("the newest full checkpoint is unusable; restoring an older one");
        }
        // The chain: from the full, repeatedly the newest good incremental whose parent is the tip.
        let mut chain = vec![full];
        loop {
            let tip = chain[chain.len() - 1];
            let next =
                headers.values().rev().find(|(h, _, _)| h.kind == CheckpointKind::Incremental && h.parent == tip);
            match next {
                Some((h, _, _)) => chain.push(h.id),
                None => break,
            }
        }
        let mut applied = Vec::new();
        for id in chain {
            let (header, path, body) = &headers[&id];
            let started = Instant::now();
            let (rows, deleted) = apply_file(store, path, *body)?;
            applied.push(CheckpointInfo {
                id,
                kind: header.kind,
                parent: header.parent,
                label: header.label,
                unix_ms: header.unix_ms,
                file: path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                bytes: body + 16,
                rows,
                deleted,
                tables: header.tables,
                seconds: started.elapsed().as_secs_f64(),
            });
        }
        for table in store.all_tables() {
            if let Table::Sparse(t) = table {
                t.forget_changes()?;
            }
        }
        store.take_dropped_flag();
        state.chain = applied.clone();
        state.force_full = false;
        Ok(applied)
    }
}

/// Writes every table to `path`; returns (bytes, rows, deleted keys).
fn write_file(
    path: &Path,
    header: &Header,
    tables: &[Table],
    fail_after: Option<u64>,
) -> Result<(u64, u64, u64), CheckpointError> {
    let file = fs::File::create(path).map_err(io_err(path))?;
    let mut w = HashingWriter::new(file, fail_after);
    let all = header.kind == CheckpointKind::Full;
    let (mut rows, mut deleted) = (0, 0);
    w.header(header).map_err(io_err(path))?;
    for table in tables {
        match table {
            Table::Sparse(t) => {
                // No row moves between tiers while both are read.
                let _gate = t.is_tiered().then(|| t.tier_gate());
                w.table_start(t.spec(), t.version()).map_err(io_err(path))?;
                // Cold rows first: a DRAM row of the same key comes later and wins on restore.
                if t.is_tiered() {
                    let mut block = RowBlock::new(t.stride());
                    let mut failed = None;
                    let mut sink = |meta: crate::RowMeta, values: &[f32]| {
                        if failed.is_none() {
                            if let Err(e) = block.push(&mut w, &meta, values) {
                                failed = Some(e);
                            }
                        }
                    };
                    if all {
                        t.scan_cold(&mut sink)?;
                        t.clear_cold_changes()?;
                    } else {
                        t.take_cold_changes(&mut sink)?;
                    }
                    if let Some(e) = failed {
                        return Err(CheckpointError::Io { path: path.to_path_buf(), source: e });
                    }
                    rows += block.flush(&mut w).map_err(io_err(path))?;
                }
                let mut buf = Vec::new();
                for s in 0..t.shard_count() {
                    buf.clear();
                    let (n, gone) = t.take_shard_changes(s, all, &mut buf);
                    write_shard(&mut w, s, n, &buf, &gone, t.shard_sketch(s).as_deref()).map_err(io_err(path))?;
                    rows += n;
                    deleted += gone.len() as u64;
                }
                w.write_all(&[TAG_END]).map_err(io_err(path))?;
            }
            Table::Dense(t) => {
                let (values, state, version) = t.snapshot();
                w.table_start(t.spec(), version).map_err(io_err(path))?;
                w.f32s(&values).map_err(io_err(path))?;
                w.f32s(&state).map_err(io_err(path))?;
            }
        }
    }
    let bytes = w.finish().map_err(io_err(path))?;
    Ok((bytes, rows, deleted))
}

/// One shard's blocks: its rows, its deleted keys, its admission counts.
fn write_shard(
    w: &mut HashingWriter,
    s: usize,
    rows: u64,
    records: &[u8],
    deleted: &[u64],
    sketch: Option<&[u8]>,
) -> std::io::Result<()> {
    if rows > 0 {
        w.write_all(&[TAG_ROWS])?;
        w.u64(rows)?;
        w.write_all(records)?;
    }
    if !deleted.is_empty() {
        w.write_all(&[TAG_DELETED])?;
        w.u64(deleted.len() as u64)?;
        w.write_all(bytemuck::cast_slice(deleted))?;
    }
    if let Some(sketch) = sketch {
        w.write_all(&[TAG_SKETCH])?;
        w.write_all(&(s as u32).to_le_bytes())?;
        w.u64(sketch.len() as u64)?;
        w.write_all(sketch)?;
    }
    Ok(())
}

/// Buffers row records read from the cold tier into blocks of a few thousand rows.
struct RowBlock {
    buf: Vec<u8>,
    rows: u64,
    written: u64,
}

impl RowBlock {
    const ROWS: u64 = 4096;

    fn new(stride: usize) -> Self {
        Self { buf: Vec::with_capacity(Self::ROWS as usize * (KEYED_HEADER + stride * 4)), rows: 0, written: 0 }
    }

    fn push(&mut self, w: &mut HashingWriter, meta: &crate::RowMeta, values: &[f32]) -> std::io::Result<()> {
        encode_keyed_row_into(&mut self.buf, meta, values);
        self.rows += 1;
        if self.rows == Self::ROWS {
            self.flush(w)?;
        }
        Ok(())
    }

    /// Writes what is buffered; returns the rows written by this block writer so far.
    fn flush(&mut self, w: &mut HashingWriter) -> std::io::Result<u64> {
        if self.rows > 0 {
            w.write_all(&[TAG_ROWS])?;
            w.u64(self.rows)?;
            w.write_all(&self.buf)?;
            self.written += self.rows;
            self.rows = 0;
            self.buf.clear();
        }
        Ok(self.written)
    }
}

/// Applies one verified file to `store`; returns (rows, deleted keys).
fn apply_file(store: &Store, path: &Path, body: u64) -> Result<(u64, u64), CheckpointError> {
    let mut r = BodyReader::open(path, body)?;
    let header = r.header()?;
    let mut names = Vec::new();
    let (mut rows, mut deleted) = (0, 0);
    for _ in 0..header.tables {
        let (spec, version) = r.table_start()?;
        if header.kind == CheckpointKind::Full {
            let _ = store.drop_table(&spec.name);
        }
        store.create_table(spec.clone(), None)?;
        names.push(spec.name.clone());
        if format::is_sparse(&spec) {
            let table = store.sparse(&spec.name)?;
            let stride = table.stride();
            let mut record = vec![0u8; KEYED_HEADER + stride * 4];
            let mut values = vec![0f32; stride];
            loop {
                match r.u8()? {
                    TAG_END => break,
                    TAG_ROWS => {
                        let n = r.u64()?;
                        for _ in 0..n {
                            r.bytes(&mut record)?;
                            let meta = decode_keyed_row(&record, &mut values)
                                .ok_or_else(|| r.corrupt(format!("table {}: malformed row record", spec.name)))?;
                            table.restore_row(meta, &values);
                        }
                        rows += n;
                        // A tiered store restores more rows than fit in DRAM: demote as it goes.
                        store.enforce_budget()?;
                    }
                    TAG_DELETED => {
                        let n = r.u64()?;
                        let mut keys = Vec::with_capacity(n.min(1 << 20) as usize);
                        for _ in 0..n {
                            keys.push(r.u64()?);
                        }
                        table.delete(&keys)?;
                        deleted += n;
                    }
                    TAG_SKETCH => {
                        let shard = r.u32()? as usize;
                        let len = r.u64()?;
                        if len > 1 << 24 {
                            return Err(r.corrupt(format!("table {}: admission counts of {len} bytes", spec.name)));
                        }
                        let mut bytes = vec![0u8; len as usize];
                        r.bytes(&mut bytes)?;
                        if !table.restore_shard_sketch(shard, &bytes) {
                            tracing::warn!(table = %spec.name, shard, "admission counts do not fit this table's shards; they restart from zero");
                        }
                    }
                    other => return Err(r.corrupt(format!("table {}: unknown block tag {other}", spec.name))),
                }
            }
            table.restore_version(version);
        } else {
            let table = store.dense(&spec.name)?;
            let dim = spec.dim as usize;
            let values = r.f32s(dim)?;
            let state = r.f32s(spec.optimizer.state_len(dim))?;
            table.restore(values, state, version);
        }
    }
    r.finish()?;
    // Tables dropped since the previous checkpoint of the chain.
    for spec in store.list_tables() {
        if !names.contains(&spec.name) {
            let _ = store.drop_table(&spec.name);
        }
    }
    Ok((rows, deleted))
}

#[cfg(test)]
mod tests;
