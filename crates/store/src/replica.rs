//! A read-only replica's copy of one sparse table: an immutable memory-mapped [`Segment`] plus
//! in-memory overlay layers of the delta rounds applied since, and the views of the last K
//! published versions (docs/serving.md). This is the data structure; the `ember replica` role
//! that feeds it from `SubscribeDeltas` and serves lookups from it is not built yet.
//!
//! Invariants:
//! - A [`View`] never changes: applying a round or compacting builds a new view and swaps one
//!   pointer under a lock held only for the swap, so a lookup never waits on ingestion or
//!   compaction, and a reader holding a view reads one consistent state.
//! - A round is applied whole (its rows become one layer) or not at all.
//! - Compaction merges a view's segment and layers into a new segment file off the lock, then
//!   swaps in a view with the layers that arrived meanwhile; if a reset replaced the segment
//!   meanwhile, the result is dropped. A segment file is removed when no view holds it.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ember_core::U64Map;
use parking_lot::{Mutex, RwLock};

use crate::segment::{self, Segment, SegmentError};

/// One delta round's rows of a table: a row, or `None` for a deleted key.
pub type Layer = U64Map<Option<Box<[f32]>>>;

/// A segment file that is removed when its last view drops it.
#[derive(Debug)]
struct Owned(Segment);

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0.path());
    }
}

/// One state of the table.
#[derive(Debug, Default)]
pub struct View {
    segment: Option<Arc<Owned>>,
    /// Oldest first.
    layers: Vec<Arc<Layer>>,
    watermark: u64,
}

impl View {
    /// `key`'s row in this state, if the table has one.
    pub fn get(&self, key: u64) -> Option<&[f32]> {
        for layer in self.layers.iter().rev() {
            if let Some(row) = layer.get(&key) {
                return row.as_deref();
            }
        }
        self.segment.as_ref()?.0.get(key)
    }

    /// The delta watermark this state holds everything up to.
    pub fn watermark(&self) -> u64 {
        self.watermark
    }

    /// Overlay layers not yet compacted.
    pub fn layers(&self) -> usize {
        self.layers.len()
    }
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

    /// The newest state.
    pub fn view(&self) -> Arc<View> {
        Arc::clone(&self.current.read())
    }

    /// Applies one whole round: `reset` drops every row held first (a snapshot follows).
    pub fn apply(&self, reset: bool, rows: Layer, watermark: u64) {
        let mut current = self.current.write();
        let next = if reset {
            View { segment: None, layers: vec![Arc::new(rows)], watermark }
        } else {
            let mut layers = current.layers.clone();
            layers.push(Arc::new(rows));
            View { segment: current.segment.clone(), layers, watermark }
        };
        *current = Arc::new(next);
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

    /// Merges the newest state's layers into a new segment and swaps it in. Returns whether it
    /// did (false: nothing to merge, or a reset came meanwhile).
    pub fn compact(&self) -> Result<bool, SegmentError> {
        let _one = self.compacting.lock();
        let base = self.view();
        if base.layers.is_empty() {
            return Ok(false);
        }
        let mut overlay: BTreeMap<u64, Option<&[f32]>> = BTreeMap::new();
        for layer in &base.layers {
            for (key, row) in layer.iter() {
                overlay.insert(*key, row.as_deref());
            }
        }
        let n = self.next_file.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("segment-{n:08}.seg"));
        segment::merge(base.segment.as_ref().map(|s| &s.0), &overlay, self.dim, &path)?;
        let merged = Arc::new(Owned(Segment::open(&path)?));
        let mut current = self.current.write();
        let same_base = match (&current.segment, &base.segment) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        let prefix = current.layers.len() >= base.layers.len()
            && current.layers.iter().zip(&base.layers).all(|(a, b)| Arc::ptr_eq(a, b));
        if !same_base || !prefix {
            return Ok(false);
        }
        let layers = current.layers[base.layers.len()..].to_vec();
        *current = Arc::new(View { segment: Some(merged), layers, watermark: current.watermark });
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(rows: &[(u64, Option<f32>)]) -> Layer {
        rows.iter().map(|(k, v)| (*k, v.map(|x| vec![x, -x].into_boxed_slice()))).collect()
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

        assert!(table.compact().unwrap());
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
        assert!(table.compact().unwrap());
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
}
