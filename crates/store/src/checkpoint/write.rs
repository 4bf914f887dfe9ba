//! Writing one checkpoint file: every table's rows (hot and cold tiers), deleted keys and
//! admission counts, through a hashing writer.

use std::fs;
use std::io::Write;
use std::path::Path;

use super::format::{HashingWriter, TAG_DELETED, TAG_END, TAG_ROWS, TAG_SKETCH};
use super::{io_err, CheckpointError, CheckpointKind, Header};
use crate::record::{encode_keyed_row_into, KEYED_HEADER};
use crate::Table;

/// Writes every table to `path`; returns (bytes, rows, deleted keys).
pub(super) fn write_file(
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
