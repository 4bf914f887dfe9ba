//! A read-only replica's copy of one sparse table: an immutable memory-mapped [`Segment`] plus
//! in-memory overlay layers of the delta rounds applied since, and the views of the last K
//! published versions (docs/serving.md). The `ember replica` role (crates/replica) feeds it from
//! `SubscribeDeltas` and serves lookups from it.
//!
//! Invariants:
//! - A [`View`] never changes: applying a round or compacting builds a new view and swaps one
//!   pointer under a lock held only for the swap, so a lookup never waits on ingestion or
//!   compaction, and a reader holding a view reads one consistent state.
//! - A round is applied whole (its rows become one layer) or not at all.
//! - Compaction merges a view's segment and layers into a new segment file off the lock, then
//!   swaps in a view with the layers that arrived meanwhile; if a reset replaced the segment
//!   meanwhile, the result is dropped. A segment file is removed once something newer replaced
//!   it and no view holds it; the newest segment stays on disk, so a restarted replica maps it
//!   again ([`ReplicaTable::open`]) instead of loading its rows.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::segment::{self, Segment, SegmentError};

mod layer;

pub use layer::Layer;

/// A segment file, removed when its last view drops it after something newer replaced it.
#[derive(Debug)]
struct Owned {
    segment: Segment,
    superseded: AtomicBool,
}

impl Owned {
    fn new(segment: Segment) -> Arc<Self> {
        Arc::new(Self { segment, superseded: AtomicBool::new(false) })
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        if self.superseded.load(Ordering::Relaxed) {
            let _ = std::fs::remove_file(self.segment.path());
        }
    }
}

fn supersede(segment: Option<&Arc<Owned>>) {
    if let Some(s) = segment {
        s.superseded.store(true, Ordering::Relaxed);
    }
}

/// One state of the table.
#[derive(Debug, Default)]
pub struct View {
    segment: Option<Arc<Owned>>,
    /// Oldest first.
    layers: Vec<Arc<Layer>>,
    watermark: u64,
    /// The segment holds everything up to this watermark.
    segment_watermark: u64,
}

impl View {
    /// Whether this view is `base` with layers appended (same segment, `base`'s layers as a
    /// prefix): what a merge built from `base` may replace. A reset or a compaction in between
    /// breaks it.
    fn grew_from(&self, base: &View) -> bool {
        let same_segment = match (&self.segment, &base.segment) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        same_segment
            && self.layers.len() >= base.layers.len()
            && self.layers.iter().zip(&base.layers).all(|(a, b)| Arc::ptr_eq(a, b))
    }

    /// `key`'s row in this state, if the table has one.
    pub fn get(&self, key: u64) -> Option<&[f32]> {
        for layer in self.layers.iter().rev() {
            if let Some(row) = layer.get(key) {
                return row;
            }
        }
        self.segment.as_ref()?.segment.get(key)
    }

    /// The delta watermark this state holds everything up to.
    pub fn watermark(&self) -> u64 {
        self.watermark
    }

    /// Overlay layers not yet compacted.
    pub fn layers(&self) -> usize {
        self.layers.len()
    }

    /// The segment's file and the watermark it holds everything up to (what a restart can
    /// resume from); None before the first compaction.
    pub fn segment(&self) -> Option<(&Path, u64)> {
        self.segment.as_ref().map(|s| (s.segment.path(), self.segment_watermark))
    }

    /// Rows in the segment.
    pub fn segment_rows(&self) -> usize {
        self.segment.as_ref().map_or(0, |s| s.segment.len())
    }

    /// Entries (rows and deletions) in the overlay layers; a key in two layers counts twice.
    pub fn overlay_rows(&self) -> usize {
        self.layers.iter().map(|l| l.len()).sum()
    }
}

/// What a compaction wrote: the new segment and the watermark it holds everything up to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compacted {
    /// The segment file (stays on disk until something newer replaces it).
    pub path: PathBuf,
    /// The watermark of the rounds merged into it.
    pub watermark: u64,
}

/// A replica's copy of one table.
#[derive(Debug)]
pub struct ReplicaTable {
    dir: PathBuf,
    dim: usize,
    keep: usize,
    current: RwLock<Arc<View>>,
    versions: Mutex<VecDeque<(u64, Arc<View>)>>,
    /// Serializes compactions.
    compacting: Mutex<()>,
    next_file: AtomicU64,
}

impl ReplicaTable {
    /// An empty table of rows of `dim` values whose segment files live in `dir`, keeping the
    /// views of the last `keep` pinned versions.
    pub fn new(dir: &Path, dim: usize, keep: usize) -> Self {
        Self {
            dir: dir.to_path_buf(),
            dim,
            keep: keep.max(1),
            current: RwLock::default(),
            versions: Mutex::default(),
            compacting: Mutex::default(),
            next_file: AtomicU64::new(0),
        }
    }

    /// A table that starts from a segment a previous run left in `dir`, holding everything up to
    /// `watermark`: the file is mapped and its checksum checked, not loaded. A damaged file is
    /// an error (the caller drops it and starts from a snapshot).
    pub fn open(dir: &Path, segment: &Path, watermark: u64, keep: usize) -> Result<Self, SegmentError> {
        let segment = Segment::open(segment)?;
        let number = segment
            .path()
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.strip_prefix("segment-"))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        let table = Self::new(dir, segment.dim(), keep);
        table.next_file.store(number + 1, Ordering::Relaxed);
        *table.current.write() = Arc::new(View {
            segment: Some(Owned::new(segment)),
            layers: Vec::new(),
            watermark,
            segment_watermark: watermark,
        });
        Ok(table)
    }

    /// Values per row.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The newest state.
    pub fn view(&self) -> Arc<View> {
        Arc::clone(&self.current.read())
    }

    /// Applies one whole round: `reset` drops every row held first (a snapshot follows).
    pub fn apply(&self, reset: bool, rows: Layer, watermark: u64) {
        let mut current = self.current.write();
        let next = if reset {
            supersede(current.segment.as_ref());
            View { segment: None, layers: vec![Arc::new(rows)], watermark, segment_watermark: 0 }
        } else {
            let mut layers = current.layers.clone();
            layers.push(Arc::new(rows));
            View { segment: current.segment.clone(), layers, watermark, segment_watermark: current.segment_watermark }
        };
        *current = Arc::new(next);
    }

    /// Moves the newest state's watermark to `watermark` without a change (a round that
    /// carried no rows of this table).
    pub fn advance(&self, watermark: u64) {
        let mut current = self.current.write();
        if current.watermark < watermark {
            // With no layers the segment is the whole state, so it now holds up to here too.
            let segment_watermark = if current.layers.is_empty() { watermark } else { current.segment_watermark };
            let next =
                View { segment: current.segment.clone(), layers: current.layers.clone(), watermark, segment_watermark };
            *current = Arc::new(next);
        }
    }

    /// Marks the newest segment for removal once no view holds it: the table is being dropped.
    pub fn retire(&self) {
        supersede(self.current.read().segment.as_ref());
    }

    /// Keeps the newest state as `version`'s (dropping the oldest past `keep`).
    pub fn pin(&self, version: u64) {
        let view = self.view();
        let mut versions = self.versions.lock();
        versions.retain(|(v, _)| *v != version);
        versions.push_back((version, view));
        while versions.len() > self.keep {
            versions.pop_front();
        }
    }

    /// A pinned version's state, if still kept.
    pub fn version(&self, version: u64) -> Option<Arc<View>> {
        self.versions.lock().iter().find(|(v, _)| *v == version).map(|(_, view)| Arc::clone(view))
    }

    /// Versions kept, oldest first.
    pub fn versions(&self) -> Vec<u64> {
        self.versions.lock().iter().map(|(v, _)| *v).collect()
    }

    /// Merges the newest state's layers into one in-memory layer (the segment is not rewritten):
    /// cheap when the layers are small beside the segment, and a lookup then probes one layer.
    /// Returns whether it did (false: fewer than two layers, or a reset came meanwhile).
    pub fn merge_layers(&self) -> bool {
        let _one = self.compacting.lock();
        let base = self.view();
        if base.layers.len() < 2 {
            return false;
        }
        let mut merged = Layer::new(self.dim);
        for layer in &base.layers {
            for (key, row) in layer.iter() {
                match row {
                    Some(row) => {
                        merged.put(key, row);
                    }
                    None => merged.delete(key),
                }
            }
        }
        let mut current = self.current.write();
        if !current.grew_from(&base) {
            return false;
        }
        let mut layers = vec![Arc::new(merged)];
        layers.extend(current.layers[base.layers.len()..].iter().cloned());
        *current = Arc::new(View {
            segment: current.segment.clone(),
            layers,
            watermark: current.watermark,
            segment_watermark: current.segment_watermark,
        });
        true
    }

    /// Merges the newest state's layers into a new segment and swaps it in. Returns what it
    /// wrote (None: nothing to merge, or a reset came meanwhile).
    pub fn compact(&self) -> Result<Option<Compacted>, SegmentError> {
        let _one = self.compacting.lock();
        let base = self.view();
        if base.layers.is_empty() {
            return Ok(None);
        }
        let mut overlay: BTreeMap<u64, Option<&[f32]>> = BTreeMap::new();
        for layer in &base.layers {
            for (key, row) in layer.iter() {
                overlay.insert(key, row);
            }
        }
        let n = self.next_file.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("segment-{n:08}.seg"));
        segment::merge(base.segment.as_ref().map(|s| &s.segment), &overlay, self.dim, &path)?;
        let merged = Owned::new(Segment::open(&path)?);
        let mut current = self.current.write();
        if !current.grew_from(&base) {
            supersede(Some(&merged));
            return Ok(None);
        }
        supersede(current.segment.as_ref());
        let layers = current.layers[base.layers.len()..].to_vec();
        let segment_watermark = if layers.is_empty() { current.watermark } else { base.watermark };
        *current = Arc::new(View { segment: Some(merged), layers, watermark: current.watermark, segment_watermark });
        Ok(Some(Compacted { path, watermark: base.watermark }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(rows: &[(u64, Option<f32>)]) -> Layer {
        let mut layer = Layer::new(2);
        for (k, v) in rows {
            match v {
                Some(x) => assert!(layer.put(*k, &[*x, -*x])),
                None => layer.delete(*k),
            }
        }
        layer
    }

    fn value(view: &View, key: u64) -> Option<f32> {
        view.get(key).map(|row| row[0])
    }

    #[test]
    fn rounds_layer_up_compaction_keeps_every_answer_and_versions_stay_as_pinned() {
        let dir = tempfile::tempdir().unwrap();
        let table = ReplicaTable::new(dir.path(), 2, 2);
        table.apply(true, layer(&[(1, Some(1.0)), (2, Some(2.0)), (3, Some(3.0))]), 10);
        table.pin(1);
        table.apply(false, layer(&[(2, Some(20.0)), (3, None), (4, Some(4.0))]), 11);
        let before = table.view();
        assert_eq!(
            (1..=5).map(|k| value(&before, k)).collect::<Vec<_>>(),
            [Some(1.0), Some(20.0), None, Some(4.0), None]
        );

        assert!(table.compact().unwrap().is_some());
        let after = table.view();
        assert_eq!(after.layers(), 0);
        assert_eq!(after.watermark(), 11);
        assert_eq!(
            (1..=5).map(|k| value(&after, k)).collect::<Vec<_>>(),
            (1..=5).map(|k| value(&before, k)).collect::<Vec<_>>()
        );
        assert_eq!(value(&before, 2), Some(20.0), "a view held across compaction still reads");

        table.pin(2);
        table.apply(false, layer(&[(1, Some(100.0))]), 12);
        table.pin(3);
        assert_eq!(table.versions(), vec![2, 3], "keeps the last two");
        assert!(table.version(1).is_none());
        assert_eq!(value(&table.version(2).unwrap(), 1), Some(1.0), "version 2 is what was current then");
        assert_eq!(value(&table.version(3).unwrap(), 1), Some(100.0));

        // A reset drops everything held; old segment files go when no view holds them.
        table.apply(true, layer(&[(9, Some(9.0))]), 13);
        assert!(table.compact().unwrap().is_some());
        drop((before, after));
        table.pin(4);
        table.pin(5);
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(files, 1, "only the newest segment is left");
        assert_eq!(value(&table.view(), 1), None);
        assert_eq!(value(&table.view(), 9), Some(9.0));
    }

    #[test]
    fn resets_racing_compactions_never_bring_back_dropped_rows() {
        let dir = tempfile::tempdir().unwrap();
        let table = ReplicaTable::new(dir.path(), 2, 2);
        std::thread::scope(|s| {
            s.spawn(|| {
                for _ in 0..100 {
                    table.compact().unwrap();
                }
            });
            for round in 0..300u64 {
                table.apply(round % 10 == 0, layer(&[(round, Some(round as f32))]), round + 1);
            }
        });
        table.compact().unwrap();
        let view = table.view();
        for key in 0..300 {
            assert_eq!(value(&view, key).is_some(), key >= 290, "key {key}");
        }
        assert_eq!(view.watermark(), 300);
    }

    #[test]
    fn merging_layers_in_memory_keeps_every_answer_and_the_segment() {
        let dir = tempfile::tempdir().unwrap();
        let table = ReplicaTable::new(dir.path(), 2, 2);
        table.apply(true, layer(&[(1, Some(1.0)), (2, Some(2.0)), (3, Some(3.0))]), 1);
        table.compact().unwrap().unwrap();
        table.apply(false, layer(&[(2, Some(20.0)), (4, Some(4.0))]), 2);
        table.apply(false, layer(&[(2, None), (5, Some(5.0)), (4, Some(40.0))]), 3);
        table.apply(false, layer(&[(2, Some(200.0))]), 4);
        let before = table.view();
        assert!(table.merge_layers());
        let after = table.view();
        assert_eq!((after.layers(), after.watermark(), after.segment_rows()), (1, 4, 3));
        assert_eq!(after.segment().map(|s| s.1), Some(1), "the segment still holds up to 1");
        for k in 0..7 {
            assert_eq!(value(&after, k), value(&before, k), "key {k}");
        }
        assert!(!table.merge_layers(), "one layer: nothing to merge");
    }

    #[test]
    fn the_newest_segment_outlives_the_table_and_reopens_as_a_map() {
        let dir = tempfile::tempdir().unwrap();
        let compacted = {
            let table = ReplicaTable::new(dir.path(), 2, 2);
            table.apply(true, layer(&[(1, Some(1.0)), (2, Some(2.0))]), 5);
            table.compact().unwrap().unwrap();
            table.apply(false, layer(&[(2, None), (3, Some(3.0))]), 7);
            let second = table.compact().unwrap().unwrap();
            table.apply(false, layer(&[(4, Some(4.0))]), 9);
            second
        };
        assert_eq!(compacted.watermark, 7, "the watermark of the rounds merged, not of later ones");
        let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(files, vec![compacted.path.clone()], "superseded segments are gone, the newest stays");

        let table = ReplicaTable::open(dir.path(), &compacted.path, compacted.watermark, 2).unwrap();
        let view = table.view();
        assert_eq!(view.watermark(), 7);
        assert_eq!((1..=4).map(|k| value(&view, k)).collect::<Vec<_>>(), [Some(1.0), None, Some(3.0), None]);
        table.apply(false, layer(&[(5, Some(5.0))]), 8);
        let next = table.compact().unwrap().unwrap();
        assert_ne!(next.path, compacted.path, "a reopened table does not overwrite its own file");

        let mut bytes = std::fs::read(&next.path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&next.path, bytes).unwrap();
        assert!(matches!(ReplicaTable::open(dir.path(), &next.path, 8, 2), Err(SegmentError::Corrupt { .. })));
    }
}
