//! Reading a table whole, for checkpoints, restores, exports and stats: per-shard admission
//! counters and change records, row restores, scans and counts.

use std::sync::atomic::Ordering;

use super::{SparseStats, SparseTable, TierStats};
use crate::shard::RowMeta;
use crate::StoreError;

impl SparseTable {
    /// Shard `s`'s admission counters as bytes, if the table admits by count.
    pub fn shard_sketch(&self, s: usize) -> Option<Vec<u8>> {
        self.shards[s].lock().sketch().map(|c| c.as_bytes().to_vec())
    }

    /// Restores shard `s`'s admission counters; false if they do not fit this table.
    pub fn restore_shard_sketch(&self, s: usize, bytes: &[u8]) -> bool {
        match (self.shards.get(s), crate::admission::CountMin::from_bytes(bytes)) {
            (Some(shard), Some(sketch)) if self.spec.policy.admission() => {
                shard.lock().set_sketch(sketch);
                true
            }
            _ => false,
        }
    }

    /// Internal shards (checkpoints walk them one at a time).
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Values per stored row: `dim` weights, then optimizer state.
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// Appends shard `s`'s rows (all, or those changed since the last call) to `out` as checkpoint
    /// records and forgets its changes; returns (rows written, keys deleted since the last call).
    /// Holds the shard's lock only while copying. In a tiered table "all" leaves out clean rows:
    /// the caller writes the cold tier's records ([`Self::scan_cold`]) under the tier gate, and a
    /// clean row is its record.
    pub fn take_shard_changes(&self, s: usize, all: bool, out: &mut Vec<u8>) -> (u64, Vec<u64>) {
        self.shards[s].lock().take_changes(self.stride, all, self.cold.is_some(), out)
    }

    /// Forgets which rows changed and which keys were deleted (after a restore), in both tiers.
    pub fn forget_changes(&self) -> Result<(), StoreError> {
        for shard in self.shards.iter() {
            shard.lock().forget_changes();
        }
        self.clear_cold_changes()
    }

    /// Puts a restored row (metadata and `stride` values) in place.
    pub fn restore_row(&self, meta: RowMeta, values: &[f32]) {
        debug_assert_eq!(values.len(), self.stride);
        self.shards[self.shard_of(meta.key)].lock().restore(meta, values);
    }

    /// Sets the version a restored table continues from.
    pub fn restore_version(&self, version: u64) {
        self.version.store(version, Ordering::Release);
    }

    /// Every row's key, weights and metadata, in no particular order (tests, debugging).
    pub fn scan(&self, mut f: impl FnMut(u64, &[f32], &RowMeta)) {
        let (dim, stride) = (self.dim, self.stride);
        for shard in self.shards.iter() {
            let shard = shard.lock();
            for pos in 0..shard.len() {
                let meta = shard.meta(pos);
                f(meta.key, &shard.row(pos, stride)[..dim], meta);
            }
        }
    }

    /// The key and weights of every row of shard `s`, under its lock: `f` must be quick. In a
    /// tiered table clean rows are left out: the caller reads the cold tier's records
    /// ([`Self::scan_cold`]) under the tier gate, and a clean row is its record.
    pub fn scan_shard(&self, s: usize, mut f: impl FnMut(u64, &[f32])) {
        let shard = self.shards[s].lock();
        let tiered = self.cold.is_some();
        for pos in (0..shard.len()).filter(|pos| !tiered || shard.is_dirty(*pos)) {
            f(shard.meta(pos).key, &shard.row(pos, self.stride)[..self.dim]);
        }
    }

    /// The weights and metadata of one row, if present (tests, export, debugging).
    pub fn get(&self, key: u64) -> Option<(Vec<f32>, RowMeta)> {
        let shard = self.shards[self.shard_of(key)].lock();
        let pos = shard.find(key)?;
        Some((shard.row(pos, self.stride)[..self.dim].to_vec(), *shard.meta(pos)))
    }

    /// Rows, approximate bytes, row updates and rejected pushes.
    pub fn stats(&self) -> SparseStats {
        let (mut rows, mut bytes) = (0u64, 0u64);
        for shard in self.shards.iter() {
            let shard = shard.lock();
            rows += shard.len() as u64;
            bytes += shard.heap_bytes() as u64;
        }
        SparseStats {
            rows,
            bytes,
            version: self.version(),
            row_updates: self.row_updates.load(Ordering::Relaxed),
            rejected_nonfinite: self.rejected_nonfinite.load(Ordering::Relaxed),
            admitted: self.admitted.load(Ordering::Relaxed),
            filtered: self.filtered.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            evicted: self.evicted.load(Ordering::Relaxed),
            tier: if self.is_tiered() { self.tier_stats() } else { TierStats::default() },
        }
    }
}
