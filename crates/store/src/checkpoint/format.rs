//! The checkpoint file format: one file per checkpoint per server, holding every table.
//!
//! ```text
//! header   "EMBRCKP1" | kind u8 (0 full, 1 incremental) | id u64 | parent u64 | label u64
//!          | unix_ms u64 | tables u32
//! table    spec_len u32 | spec (JSON) | version u64 | body
//! sparse   blocks, each: tag u8 = 1 rows | count u64 | count x record (`crate::record`: key
//!          u64, updates u64, last_step u64, last_time u64, stride x f32); tag 2 deleted keys | count u64 |
//!          count x u64; tag 3 admission counts | shard u32 | len u64 | len bytes;
//!          tag 0 ends the table
//! dense    dim x f32 values | state_len x f32 optimizer state
//! trailer  xxh3-64 of every byte before it, u64 | "EMBREND1"
//! ```
//!
//! Everything is little-endian. A reader verifies the trailer over the whole file before it
//! parses a byte, so a truncated or bit-flipped file is rejected before anything is restored.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::Path;

use ember_core::{TableKind, TableSpec};
use xxhash_rust::xxh3::Xxh3;

use super::CheckpointError;

const MAGIC: &[u8; 8] = b"EMBRCKP2";
const END_MAGIC: &[u8; 8] = b"EMBREND1";
const TRAILER: u64 = 16;
pub(super) const TAG_END: u8 = 0;
pub(super) const TAG_ROWS: u8 = 1;
pub(super) const TAG_DELETED: u8 = 2;
pub(super) const TAG_SKETCH: u8 = 3;

/// Full or incremental.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckpointKind {
    /// Every row.
    Full,
    /// Rows changed and keys deleted since the parent checkpoint.
    Incremental,
}

impl CheckpointKind {
    /// The word used in file names.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckpointKind::Full => "full",
            CheckpointKind::Incremental => "incr",
        }
    }
}

/// The fixed header of a checkpoint file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Full or incremental.
    pub kind: CheckpointKind,
    /// This checkpoint's id (increasing per server).
    pub id: u64,
    /// The checkpoint this one applies on top of (0 for a full one).
    pub parent: u64,
    /// Caller's label, e.g. the job step.
    pub label: u64,
    /// Wall-clock time when it was started.
    pub unix_ms: u64,
    /// Tables in the file.
    pub tables: u32,
}

/// A writer that hashes and counts what passes through it, and (in tests) fails like a full disk
/// after a byte budget.
pub(super) struct HashingWriter {
    inner: BufWriter<File>,
    hasher: Xxh3,
    written: u64,
    fail_after: Option<u64>,
}

impl HashingWriter {
    pub fn new(file: File, fail_after: Option<u64>) -> Self {
        Self { inner: BufWriter::with_capacity(1 << 20, file), hasher: Xxh3::new(), written: 0, fail_after }
    }

    pub fn header(&mut self, h: &Header) -> io::Result<()> {
        self.write_all(MAGIC)?;
        self.write_all(&[match h.kind {
            CheckpointKind::Full => 0,
            CheckpointKind::Incremental => 1,
        }])?;
        for word in [h.id, h.parent, h.label, h.unix_ms] {
            self.u64(word)?;
        }
        self.write_all(&h.tables.to_le_bytes())
    }

    pub fn u64(&mut self, v: u64) -> io::Result<()> {
        self.write_all(&v.to_le_bytes())
    }

    pub fn f32s(&mut self, values: &[f32]) -> io::Result<()> {
        self.write_all(bytemuck::cast_slice(values))
    }

    pub fn table_start(&mut self, spec: &TableSpec, version: u64) -> io::Result<()> {
        let json = serde_json::to_vec(spec).map_err(io::Error::other)?;
        self.write_all(&(json.len() as u32).to_le_bytes())?;
        self.write_all(&json)?;
        self.u64(version)
    }

    /// Appends the trailer, flushes and fsyncs; returns the file's size.
    pub fn finish(mut self) -> io::Result<u64> {
        let digest = self.hasher.digest();
        self.inner.write_all(&digest.to_le_bytes())?;
        self.inner.write_all(END_MAGIC)?;
        let file = self.inner.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(self.written + TRAILER)
    }
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(limit) = self.fail_after {
            if self.written + buf.len() as u64 > limit {
                return Err(io::Error::new(io::ErrorKind::StorageFull, "no space left on device (injected)"));
            }
        }
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// `body` followed by its trailer: a file [`verify`] accepts, whatever the body holds (tools
/// and fuzzing reach the parser with it).
pub fn seal(body: &[u8]) -> Vec<u8> {
    let mut file = Vec::with_capacity(body.len() + TRAILER as usize);
    file.extend_from_slice(body);
    file.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(body).to_le_bytes());
    file.extend_from_slice(END_MAGIC);
    file
}

/// Checks a file's trailer against the hash of its contents; returns the body's length.
pub(super) fn verify(path: &Path) -> Result<u64, CheckpointError> {
    let corrupt = |reason: String| CheckpointError::Corrupt { path: path.to_path_buf(), reason };
    let io_err = |source| CheckpointError::Io { path: path.to_path_buf(), source };
    let mut file = File::open(path).map_err(io_err)?;
    let len = file.metadata().map_err(io_err)?.len();
    if len < MAGIC.len() as u64 + TRAILER {
        return Err(corrupt(format!("truncated: {len} bytes")));
    }
    let body = len - TRAILER;
    let mut hasher = Xxh3::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = body;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        file.read_exact(&mut buf[..n]).map_err(io_err)?;
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    let mut trailer = [0u8; TRAILER as usize];
    file.read_exact(&mut trailer).map_err(io_err)?;
    if &trailer[8..] != END_MAGIC {
        return Err(corrupt("missing end marker (truncated or not a checkpoint)".into()));
    }
    let stored = u64::from_le_bytes(trailer[..8].try_into().unwrap_or_default());
    if stored != hasher.digest() {
        return Err(corrupt(format!("checksum mismatch: stored {stored:016x}, computed {:016x}", hasher.digest())));
    }
    Ok(body)
}

/// A parser over a verified file's body. Every read is bounds-checked against the body, so even
/// a file whose checksum matched but whose contents are inconsistent is rejected, not trusted.
pub(super) struct BodyReader<'p> {
    inner: io::Take<BufReader<File>>,
    path: &'p Path,
}

impl<'p> BodyReader<'p> {
    /// Opens a file whose body (`body` bytes, from [`verify`]) is then parsed.
    pub fn open(path: &'p Path, body: u64) -> Result<Self, CheckpointError> {
        let file = File::open(path).map_err(|source| CheckpointError::Io { path: path.to_path_buf(), source })?;
        Ok(Self { inner: BufReader::with_capacity(1 << 20, file).take(body), path })
    }

    pub fn corrupt(&self, reason: impl Into<String>) -> CheckpointError {
        CheckpointError::Corrupt { path: self.path.to_path_buf(), reason: reason.into() }
    }

    pub fn bytes(&mut self, buf: &mut [u8]) -> Result<(), CheckpointError> {
        self.inner.read_exact(buf).map_err(|e| self.corrupt(format!("ends early: {e}")))
    }

    pub fn u8(&mut self) -> Result<u8, CheckpointError> {
        let mut b = [0u8; 1];
        self.bytes(&mut b)?;
        Ok(b[0])
    }

    pub fn u32(&mut self) -> Result<u32, CheckpointError> {
        let mut b = [0u8; 4];
        self.bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    pub fn u64(&mut self) -> Result<u64, CheckpointError> {
        let mut b = [0u8; 8];
        self.bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    pub fn f32s(&mut self, n: usize) -> Result<Vec<f32>, CheckpointError> {
        let mut values = vec![0f32; n];
        self.bytes(bytemuck::cast_slice_mut(&mut values))?;
        Ok(values)
    }

    pub fn header(&mut self) -> Result<Header, CheckpointError> {
        let mut magic = [0u8; 8];
        self.bytes(&mut magic)?;
        if &magic != MAGIC {
            return Err(self.corrupt("not an Ember checkpoint (bad magic)"));
        }
        let kind = match self.u8()? {
            0 => CheckpointKind::Full,
            1 => CheckpointKind::Incremental,
            other => return Err(self.corrupt(format!("unknown kind {other}"))),
        };
        let (id, parent, label, unix_ms) = (self.u64()?, self.u64()?, self.u64()?, self.u64()?);
        Ok(Header { kind, id, parent, label, unix_ms, tables: self.u32()? })
    }

    /// A table's spec (validated) and version.
    pub fn table_start(&mut self) -> Result<(TableSpec, u64), CheckpointError> {
        let len = self.u32()? as usize;
        if len > 1 << 20 {
            return Err(self.corrupt(format!("table spec of {len} bytes")));
        }
        let mut json = vec![0u8; len];
        self.bytes(&mut json)?;
        let spec: TableSpec = serde_json::from_slice(&json).map_err(|e| self.corrupt(format!("table spec: {e}")))?;
        spec.validate().map_err(|e| self.corrupt(format!("table spec: {e}")))?;
        Ok((spec, self.u64()?))
    }

    /// Confirms the whole body was consumed.
    pub fn finish(mut self) -> Result<(), CheckpointError> {
        let mut extra = [0u8; 1];
        match self.inner.read(&mut extra) {
            Ok(0) => Ok(()),
            _ => Err(self.corrupt("trailing bytes after the last table")),
        }
    }
}

/// Is `spec` a sparse table (whose body is blocks) or dense (values + state)?
pub(super) fn is_sparse(spec: &TableSpec) -> bool {
    spec.kind == TableKind::Sparse
}
