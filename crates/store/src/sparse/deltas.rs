//! Row deltas of a sparse table (`crate::delta`): the rows changed after a cut and full
//! snapshots, weights only (no optimizer state), restricted to the keys a subscriber holds.
//!
//! Both read each row's current weights: a delta after cut `W` holds every row changed after
//! `W` at a value at least as new as that change. Both hold the tier gate, so no row moves
//! between DRAM and the cold tier meanwhile: a key absent from DRAM is then either in the cold
//! tier (demoted, its record current) or gone.

use std::sync::Arc;

use super::SparseTable;
use crate::delta::DeltaClock;
use crate::record::decode_row;
use crate::StoreError;

/// Rows of one table, weights only.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct DeltaRows {
    /// Keys of rows that exist, each once.
    pub keys: Vec<u64>,
    /// `keys.len() * dim` weights, row-major.
    pub values: Vec<f32>,
    /// Keys whose rows are gone (deleted or evicted) since the cut.
    pub deleted: Vec<u64>,
}

impl DeltaRows {
    /// Rows plus deletions.
    pub fn len(&self) -> usize {
        self.keys.len() + self.deleted.len()
    }

    /// True when nothing changed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl SparseTable {
    /// Notes every later change in the shards' delta logs, tagged by `clock`.
    pub fn attach_deltas(&self, clock: &Arc<DeltaClock>) {
        for shard in self.shards.iter() {
            shard.lock().delta_log().attach(Arc::clone(clock));
        }
    }

    /// The rows `keep` accepts that changed after cut `from`, at their current weights, and
    /// the accepted keys removed since. `None` when some shard's log no longer reaches back to
    /// `from` (or the table is newer than that cut): the subscriber must resync from
    /// [`Self::snapshot`]. Each shard's lock is held once, while its rows are copied.
    pub fn changes_since(&self, from: u64, keep: &dyn Fn(u64) -> bool) -> Result<Option<DeltaRows>, StoreError> {
        let _gate = self.cold.is_some().then(|| self.tier_gate());
        let (dim, stride) = (self.dim, self.stride);
        let mut out = DeltaRows::default();
        let mut not_hot = Vec::new();
        let mut keys = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock();
            keys.clear();
            if !shard.deltas().since(from, &mut keys) {
                return Ok(None);
            }
            keys.retain(|k| keep(*k));
            keys.sort_unstable();
            keys.dedup();
            for &key in &keys {
                match shard.find(key) {
                    Some(pos) => {
                        out.keys.push(key);
                        out.values.extend_from_slice(&shard.row(pos, stride)[..dim]);
                    }
                    None if self.cold.is_some() => not_hot.push(key),
                    None => out.deleted.push(key),
                }
            }
        }
        if let (Some(cold), false) = (&self.cold, not_hot.is_empty()) {
            let records = cold.get_many(&self.spec.name, &not_hot).map_err(|e| self.tier_err(e))?;
            let mut row = vec![0f32; stride];
            for (key, record) in not_hot.into_iter().zip(records) {
                match record {
                    Some(record) => {
                        decode_row(key, &record, &mut row).ok_or_else(|| {
                            self.tier_err(crate::TierError(format!("malformed cold record for key {key}")))
                        })?;
                        out.keys.push(key);
                        out.values.extend_from_slice(&row[..dim]);
                    }
                    None => out.deleted.push(key),
                }
            }
        }
        Ok(Some(out))
    }

    /// Every row `keep` accepts, weights only, handed to `f` in batches of about `batch_rows`
    /// (the cold tier's records first, then DRAM rows, so a key in both comes last from DRAM).
    /// Cut the stream before calling: the snapshot then holds every change up to the cut.
    pub fn snapshot(
        &self,
        keep: &dyn Fn(u64) -> bool,
        batch_rows: usize,
        f: &mut dyn FnMut(DeltaRows) -> bool,
    ) -> Result<(), StoreError> {
        let _gate = self.cold.is_some().then(|| self.tier_gate());
        let dim = self.dim;
        let mut batch = DeltaRows::default();
        let mut open = true;
        let add = |batch: &mut DeltaRows, key: u64, row: &[f32]| {
            if keep(key) {
                batch.keys.push(key);
                batch.values.extend_from_slice(&row[..dim]);
            }
        };
        self.scan_cold(&mut |meta, row| {
            if open {
                add(&mut batch, meta.key, row);
                if batch.keys.len() >= batch_rows {
                    open = f(std::mem::take(&mut batch));
                }
            }
        })?;
        for s in 0..self.shards.len() {
            if !open {
                return Ok(());
            }
            // A batch is handed on only after the shard's lock is released.
            self.scan_shard(s, |key, row| add(&mut batch, key, row));
            if batch.keys.len() >= batch_rows {
                open = f(std::mem::take(&mut batch));
            }
        }
        if open && !batch.keys.is_empty() {
            f(batch);
        }
        Ok(())
    }
}
