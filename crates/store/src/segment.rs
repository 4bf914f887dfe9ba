//! Immutable row segments: one file of rows sorted by key, read through a memory map (memmap2),
//! for read-only embedding replicas (docs/serving.md). The OS pages cold rows in and out, and
//! opening a segment is a map and a checksum pass, not a load.
//!
//! Layout (little-endian):
//! ```text
//! header  "EMBSEG01" | dim u32 | 0 u32 | rows u64 | xxh3-64 of every byte after the header
//! values  rows x dim f32, in key order
//! pad     to a multiple of 8 bytes
//! keys    rows x u64, strictly increasing
//! ```
//!
//! Invariants: a segment on disk is whole or absent (written under a temporary name, fsynced,
//! renamed, the directory fsynced). [`Segment::open`] refuses a file whose size, header or
//! checksum is wrong, so a damaged segment is never served. Keys strictly increase. A lookup
//! searches a sampled index in memory (every [`INDEX_EVERY`]th key: 1/32 of the keys' size,
//! built while `open` checks the key order) and then one block of keys in the map, so it
//! touches a few cache lines of the map instead of a binary search's ~20 scattered ones.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::Xxh3;

const MAGIC: &[u8; 8] = b"EMBSEG01";
/// One index entry per this many keys.
pub const INDEX_EVERY: usize = 32;
const HEADER: usize = 32;

/// Why a segment could not be written or opened.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    /// The file system failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not a whole, intact segment (re-fetch it; never serve it).
    #[error("{path}: damaged segment: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The caller broke the writer's contract (keys out of order, a row of the wrong width).
    #[error("segment {path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Writes a segment row by row, keys strictly increasing.
pub struct SegmentWriter {
    path: PathBuf,
    tmp: PathBuf,
    out: BufWriter<File>,
    hash: Xxh3,
    dim: usize,
    keys: Vec<u64>,
}

impl std::fmt::Debug for SegmentWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentWriter").field("path", &self.path).field("rows", &self.keys.len()).finish()
    }
}

impl SegmentWriter {
    /// Starts `path` (written as `path.tmp` until [`Self::finish`]).
    pub fn create(path: &Path, dim: usize) -> Result<Self, SegmentError> {
        let tmp = path.with_extension("seg.tmp");
        let io = |source| SegmentError::Io { path: tmp.clone(), source };
        let mut out = BufWriter::with_capacity(1 << 20, File::create(&tmp).map_err(io)?);
        out.write_all(&[0u8; HEADER]).map_err(io)?;
        Ok(Self { path: path.to_path_buf(), tmp, out, hash: Xxh3::new(), dim, keys: Vec::new() })
    }

    /// Appends a row.
    pub fn push(&mut self, key: u64, row: &[f32]) -> Result<(), SegmentError> {
        if row.len() != self.dim {
            return Err(self.invalid(format!("row of key {key} has {} values, not {}", row.len(), self.dim)));
        }
        if self.keys.last().is_some_and(|last| *last >= key) {
            return Err(self.invalid(format!("key {key} does not follow {}", self.keys[self.keys.len() - 1])));
        }
        self.keys.push(key);
        let bytes: &[u8] = bytemuck::cast_slice(row);
        self.hash.update(bytes);
        self.out.write_all(bytes).map_err(|source| SegmentError::Io { path: self.tmp.clone(), source })
    }

    fn invalid(&self, reason: String) -> SegmentError {
        SegmentError::Invalid { path: self.path.clone(), reason }
    }

    /// Writes the keys and header, fsyncs, and renames into place; returns the rows written.
    pub fn finish(mut self) -> Result<u64, SegmentError> {
        let tmp = self.tmp.clone();
        let io = |source| SegmentError::Io { path: tmp.clone(), source };
        let values = self.keys.len() * self.dim * 4;
        let pad = [0u8; 4];
        if !values.is_multiple_of(8) {
            self.hash.update(&pad);
            self.out.write_all(&pad).map_err(io)?;
        }
        let keys: &[u8] = bytemuck::cast_slice(&self.keys);
        self.hash.update(keys);
        self.out.write_all(keys).map_err(io)?;
        let mut header = Vec::with_capacity(HEADER);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&(self.dim as u32).to_le_bytes());
        header.extend_from_slice(&0u32.to_le_bytes());
        header.extend_from_slice(&(self.keys.len() as u64).to_le_bytes());
        header.extend_from_slice(&self.hash.digest().to_le_bytes());
        let mut file = self.out.into_inner().map_err(|e| io(e.into_error()))?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(&header).map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        }
        Ok(self.keys.len() as u64)
    }
}

/// An open segment.
#[derive(Debug)]
pub struct Segment {
    map: memmap2::Mmap,
    path: PathBuf,
    dim: usize,
    rows: usize,
    keys_at: usize,
    /// Every [`INDEX_EVERY`]th key, from the first.
    index: Vec<u64>,
}

impl Segment {
    /// Maps `path` and checks it whole: size, header and checksum.
    pub fn open(path: &Path) -> Result<Self, SegmentError> {
        let corrupt = |reason: String| SegmentError::Corrupt { path: path.to_path_buf(), reason };
        let file = File::open(path).map_err(|source| SegmentError::Io { path: path.to_path_buf(), source })?;
        // SAFETY: segments are immutable once renamed into place (writers never open an existing
        // segment for writing), so the mapped bytes do not change under the map.
        #[allow(unsafe_code)]
        let map = unsafe { memmap2::Mmap::map(&file) }
            .map_err(|source| SegmentError::Io { path: path.to_path_buf(), source })?;
        if map.len() < HEADER || &map[..8] != MAGIC {
            return Err(corrupt("no segment header".into()));
        }
        let word = |at: usize| u64::from_le_bytes(map[at..at + 8].try_into().unwrap_or([0; 8]));
        let dim = u32::from_le_bytes(map[8..12].try_into().unwrap_or([0; 4])) as usize;
        let rows = usize::try_from(word(16)).map_err(|_| corrupt("row count overflows".into()))?;
        let values =
            rows.checked_mul(dim).and_then(|v| v.checked_mul(4)).ok_or_else(|| corrupt("size overflows".into()))?;
        let keys_at = HEADER + values.next_multiple_of(8);
        let expected = rows.checked_mul(8).and_then(|k| k.checked_add(keys_at));
        if dim == 0 || expected != Some(map.len()) {
            return Err(corrupt(format!("{} bytes for {rows} rows of dim {dim}", map.len())));
        }
        if xxhash_rust::xxh3::xxh3_64(&map[HEADER..]) != word(24) {
            return Err(corrupt("checksum mismatch".into()));
        }
        let mut segment = Self { map, path: path.to_path_buf(), dim, rows, keys_at, index: Vec::new() };
        if segment.keys().windows(2).any(|w| w[0] >= w[1]) {
            return Err(corrupt("keys out of order".into()));
        }
        segment.index = segment.keys().iter().step_by(INDEX_EVERY).copied().collect();
        Ok(segment)
    }

    /// Row width.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Rows held.
    pub fn len(&self) -> usize {
        self.rows
    }

    /// True when it holds no row.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every key, increasing.
    pub fn keys(&self) -> &[u64] {
        // The map is page-aligned and `keys_at` a multiple of 8, so the cast cannot fail.
        bytemuck::try_cast_slice(&self.map[self.keys_at..]).unwrap_or(&[])
    }

    fn values(&self) -> &[f32] {
        bytemuck::try_cast_slice(&self.map[HEADER..HEADER + self.rows * self.dim * 4]).unwrap_or(&[])
    }

    /// The `i`-th row (key order).
    pub fn row(&self, i: usize) -> (u64, &[f32]) {
        (self.keys()[i], &self.values()[i * self.dim..(i + 1) * self.dim])
    }

    /// `key`'s row, if held.
    pub fn get(&self, key: u64) -> Option<&[f32]> {
        // The block whose first key is the last one <= key.
        let block = self.index.partition_point(|k| *k <= key).checked_sub(1)?;
        let start = block * INDEX_EVERY;
        let keys = self.keys();
        let end = (start + INDEX_EVERY).min(keys.len());
        let i = start + keys[start..end].binary_search(&key).ok()?;
        Some(self.row(i).1)
    }
}

/// Writes `path`: `base`'s rows with `overlay` applied (a row replaces, `None` deletes), in one
/// merge pass. Returns the rows written.
pub fn merge(
    base: Option<&Segment>,
    overlay: &BTreeMap<u64, Option<&[f32]>>,
    dim: usize,
    path: &Path,
) -> Result<u64, SegmentError> {
    let mut out = SegmentWriter::create(path, dim)?;
    let mut changes = overlay.iter().peekable();
    let rows = base.map(|b| (0..b.len()).map(move |i| b.row(i)));
    for (key, row) in rows.into_iter().flatten() {
        while let Some((k, change)) = changes.next_if(|(k, _)| **k < key) {
            if let Some(row) = change {
                out.push(*k, row)?;
            }
        }
        match changes.next_if(|(k, _)| **k == key) {
            Some((_, Some(newer))) => out.push(key, newer)?,
            Some((_, None)) => {}
            None => out.push(key, row)?,
        }
    }
    for (k, change) in changes {
        if let Some(row) = change {
            out.push(*k, row)?;
        }
    }
    out.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn row(key: u64, dim: usize) -> Vec<f32> {
        (0..dim).map(|j| key as f32 + j as f32 * 0.25).collect()
    }

    #[test]
    fn rows_come_back_by_key_and_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.seg");
        let mut w = SegmentWriter::create(&path, 3).unwrap();
        for key in [2u64, 5, 9] {
            w.push(key, &row(key, 3)).unwrap();
        }
        assert!(matches!(w.push(9, &row(9, 3)), Err(SegmentError::Invalid { .. })), "keys must increase");
        assert!(matches!(w.push(10, &[1.0]), Err(SegmentError::Invalid { .. })), "rows must have dim values");
        assert_eq!(w.finish().unwrap(), 3);
        assert!(!dir.path().join("a.seg.tmp").exists());
        let seg = Segment::open(&path).unwrap();
        assert_eq!((seg.len(), seg.dim()), (3, 3));
        assert_eq!(seg.get(5), Some(&row(5, 3)[..]));
        assert_eq!(seg.get(6), None);

        let bytes = std::fs::read(&path).unwrap();
        for (at, what) in [(40, "checksum"), (2, "header"), (bytes.len() - 1, "checksum")] {
            let mut bad = bytes.clone();
            bad[at] ^= 0x10;
            std::fs::write(&path, &bad).unwrap();
            let err = Segment::open(&path).unwrap_err();
            assert!(err.to_string().contains(what), "flip at {at}: {err}");
        }
        std::fs::write(&path, &bytes[..bytes.len() - 8]).unwrap();
        assert!(matches!(Segment::open(&path), Err(SegmentError::Corrupt { .. })), "truncated");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn a_merge_equals_the_map_with_the_overlay_applied_and_every_key_is_found_through_the_index(
            base in prop::collection::btree_set(0u64..1000, 0..300),
            overlay in prop::collection::btree_map(0u64..1000, any::<bool>(), 0..150),
            dim in 1usize..6,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut model: BTreeMap<u64, Vec<f32>> = base.iter().map(|k| (*k, row(*k, dim))).collect();
            let mut w = SegmentWriter::create(&dir.path().join("base.seg"), dim).unwrap();
            for (k, r) in &model {
                w.push(*k, r).unwrap();
            }
            w.finish().unwrap();
            let base = Segment::open(&dir.path().join("base.seg")).unwrap();
            let overlay: BTreeMap<u64, Option<Vec<f32>>> =
                overlay.into_iter().map(|(k, keep)| (k, keep.then(|| row(k * 1000, dim)))).collect();
            for (k, change) in &overlay {
                match change {
                    Some(r) => model.insert(*k, r.clone()),
                    None => model.remove(k),
                };
            }
            let borrowed = overlay.iter().map(|(k, r)| (*k, r.as_deref())).collect();
            let rows = merge(Some(&base), &borrowed, dim, &dir.path().join("next.seg")).unwrap();
            let next = Segment::open(&dir.path().join("next.seg")).unwrap();
            prop_assert_eq!(rows as usize, model.len());
            let got: BTreeMap<u64, Vec<f32>> = (0..next.len()).map(|i| (next.row(i).0, next.row(i).1.to_vec())).collect();
            prop_assert_eq!(&got, &model);
            // Every key in and around the range, so block edges and the ends are probed.
            for k in 0..1001u64 {
                prop_assert_eq!(next.get(k), model.get(&k).map(|r| &r[..]), "key {}", k);
            }
        }
    }
}
