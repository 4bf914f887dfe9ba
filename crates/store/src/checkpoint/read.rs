//! Reading a checkpoint chain's sparse weights without a store: what a read-only replica needs to
//! hold a published version's sparse state exactly (docs/serving.md, "Versions").
//!
//! The chain of checkpoint `upto` is found from the files' own headers (`upto`, its parent, ...,
//! back to a full one), not from the writer's current chain, so a version published before a
//! newer full checkpoint can still be read while its files are kept. Every file is verified
//! (xxh3) before a byte of it is handed out.

use std::path::PathBuf;

use ember_core::TableSpec;

use super::format::{self, BodyReader, TAG_DELETED, TAG_END, TAG_ROWS, TAG_SKETCH};
use super::{CheckpointError, CheckpointKind, Checkpointer, Header};
use crate::record::{decode_keyed_row, KEYED_HEADER};

/// What reading a chain hands to its visitor, file by file, in chain order.
#[derive(Debug)]
pub enum ChainEvent<'a> {
    /// A sparse table's part of the next file starts. `reset`: the file is a full checkpoint, so
    /// every row held of this table before is gone.
    Table {
        /// Its spec as checkpointed.
        spec: &'a TableSpec,
        /// Drop what is held of it first.
        reset: bool,
    },
    /// Rows of the current table: `keys.len() * dim` weights (no optimizer state).
    Rows {
        /// Keys.
        keys: &'a [u64],
        /// Weights, row after row.
        weights: &'a [f32],
    },
    /// Keys of the current table deleted since the parent checkpoint.
    Deleted(&'a [u64]),
}

/// Rows handed to the visitor at a time.
const CHUNK: usize = 8192;

impl Checkpointer {
    /// Whether checkpoint `id`'s file is in the directory (intact or not).
    pub fn contains(&self, id: u64) -> Result<bool, CheckpointError> {
        Ok(Self::files(self.dir())?.iter().any(|f| f.0 == id))
    }

    /// Reads the chain ending at checkpoint `upto`: only the files after `after` when `after` is
    /// in that chain (what someone holding `after` needs), else the whole chain from its full
    /// checkpoint. Returns the ids read, in order. NotFound-like errors name the missing file.
    pub fn read_chain(
        &self,
        after: u64,
        upto: u64,
        mut visit: impl FnMut(ChainEvent<'_>) -> Result<(), CheckpointError>,
    ) -> Result<Vec<u64>, CheckpointError> {
        let mut read = Vec::new();
        for (path, body, header) in self.lineage(after, upto)? {
            read_file(&path, body, header.kind == CheckpointKind::Full, &mut visit)?;
            read.push(header.id);
        }
        Ok(read)
    }

    /// The files of the chain ending at `upto`, oldest first, each verified: back to its full
    /// checkpoint, or only those after `after` when `after` is in the chain. Each is (path, body
    /// length, header).
    pub(super) fn lineage(&self, after: u64, upto: u64) -> Result<Vec<(PathBuf, u64, Header)>, CheckpointError> {
        let files = Self::files(self.dir())?;
        let path_of = |id: u64| files.iter().find(|f| f.0 == id).map(|f| f.2.clone());
        let mut lineage = Vec::new();
        let mut next = upto;
        loop {
            let path =
                path_of(next).ok_or_else(|| CheckpointError::Missing { dir: self.dir().to_path_buf(), id: next })?;
            let body = format::verify(&path)?;
            let header = BodyReader::open(&path, body)?.header()?;
            if header.id != next {
                return Err(CheckpointError::Corrupt { path, reason: format!("header says id {}", header.id) });
            }
            let (kind, parent) = (header.kind, header.parent);
            lineage.push((path, body, header));
            if kind == CheckpointKind::Full || after != 0 && parent == after {
                break;
            }
            next = parent;
        }
        lineage.reverse();
        Ok(lineage)
    }
}

fn read_file(
    path: &std::path::Path,
    body: u64,
    full: bool,
    visit: &mut impl FnMut(ChainEvent<'_>) -> Result<(), CheckpointError>,
) -> Result<(), CheckpointError> {
    let mut r = BodyReader::open(path, body)?;
    let header = r.header()?;
    for _ in 0..header.tables {
        let (spec, _version) = r.table_start()?;
        if !format::is_sparse(&spec) {
            let dim = spec.dim as usize;
            r.f32s(dim)?;
            r.f32s(spec.optimizer.state_len(dim))?;
            continue;
        }
        visit(ChainEvent::Table { spec: &spec, reset: full })?;
        let dim = spec.dim as usize;
        let stride = dim + spec.state_len();
        let mut record = vec![0u8; KEYED_HEADER + stride * 4];
        let mut values = vec![0f32; stride];
        let (mut keys, mut weights) = (Vec::with_capacity(CHUNK), Vec::with_capacity(CHUNK * dim));
        loop {
            match r.u8()? {
                TAG_END => break,
                TAG_ROWS => {
                    let n = r.u64()?;
                    for _ in 0..n {
                        r.bytes(&mut record)?;
                        let meta = decode_keyed_row(&record, &mut values)
                            .ok_or_else(|| r.corrupt(format!("table {}: malformed row record", spec.name)))?;
                        // A row holding NaN or Inf is skipped, as a restore skips it.
                        if values[..dim].iter().all(|v| v.is_finite()) {
                            keys.push(meta.key);
                            weights.extend_from_slice(&values[..dim]);
                        }
                        if keys.len() == CHUNK {
                            visit(ChainEvent::Rows { keys: &keys, weights: &weights })?;
                            keys.clear();
                            weights.clear();
                        }
                    }
                }
                TAG_DELETED => {
                    let n = r.u64()?;
                    let mut deleted = Vec::with_capacity(n.min(1 << 20) as usize);
                    for _ in 0..n {
                        deleted.push(r.u64()?);
                    }
                    if !keys.is_empty() {
                        visit(ChainEvent::Rows { keys: &keys, weights: &weights })?;
                        keys.clear();
                        weights.clear();
                    }
                    visit(ChainEvent::Deleted(&deleted))?;
                }
                TAG_SKETCH => {
                    let _shard = r.u32()?;
                    let len = r.u64()?;
                    if len > 1 << 24 {
                        return Err(r.corrupt(format!("table {}: admission counts of {len} bytes", spec.name)));
                    }
                    let mut bytes = vec![0u8; len as usize];
                    r.bytes(&mut bytes)?;
                }
                other => return Err(r.corrupt(format!("table {}: unknown block tag {other}", spec.name))),
            }
        }
        if !keys.is_empty() {
            visit(ChainEvent::Rows { keys: &keys, weights: &weights })?;
        }
    }
    r.finish()
}
