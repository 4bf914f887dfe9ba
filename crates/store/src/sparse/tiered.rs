//! The cold-tier half of a sparse table: hot misses resolved against the cold tier, promotion,
//! demotion of least recently / least frequently updated rows, and the counters behind `Stats`.
//!
//! A request first serves every hot hit under each shard's lock (`mod.rs`), then reads its misses
//! from the cold tier with no lock held, then takes the shards again to promote the rows found
//! (training pulls and pushes; lookups read without promoting) or to create the rest. A
//! demotion writes rows to the cold tier first and removes them from DRAM only if unchanged in
//! between, then bumps that shard's demotion epoch under the shard lock. A request whose key is
//! not in DRAM when it takes the shard again re-reads the cold tier if that shard's epoch moved
//! since it read it: the row may have been promoted, updated and demoted again in between, so
//! what it read may be stale (or absent), and using it would lose an update or re-create a row
//! from the initializer.

use std::sync::atomic::{AtomicU64, Ordering};

use ember_core::DemotePolicy;
use parking_lot::Mutex;

use super::{AdmissionCounts, SparseTable};
use crate::tier::{decode_row, encode_row, ColdTier, TierError};
use crate::{RowMeta, StoreError};

/// Change marks read per page by an incremental checkpoint (bounds its memory).
const COLD_CHANGES_PAGE: usize = 4096;

/// Counters and coordination of a tiered table.
#[derive(Debug, Default)]
pub(super) struct TierCounters {
    /// Held by a demotion round and by a checkpoint's pass over the table, so no row is written
    /// out of DRAM while a checkpoint reads both tiers. Rows still move without it: promotions,
    /// and clean rows dropped by [`SparseTable::drop_clean_rows`] (each equals its record).
    pub gate: Mutex<()>,
    /// Set while the gate is held through [`SparseTable::tier_gate`] (a checkpoint, export,
    /// eviction or delete), not by a demotion round: requests under memory pressure then drop
    /// clean rows instead of waiting.
    reading: std::sync::atomic::AtomicBool,
    /// One request at a time does those clean-only rounds; the others go on.
    relief: Mutex<()>,
    /// Per shard: demotions out of it, bumped under its lock.
    epochs: Box<[AtomicU64]>,
    hot_hits: AtomicU64,
    cold_hits: AtomicU64,
    promoted: AtomicU64,
    demoted: AtomicU64,
}

impl TierCounters {
    pub fn new(shards: usize) -> Self {
        Self { epochs: (0..shards).map(|_| AtomicU64::new(0)).collect(), ..Self::default() }
    }

    /// Every shard's demotion epoch (taken before reading the cold tier).
    pub fn epochs(&self) -> Vec<u64> {
        self.epochs.iter().map(|e| e.load(Ordering::Acquire)).collect()
    }

    /// Marks every shard as moved: records were deleted from the cold tier, so cold reads taken
    /// before must be redone.
    pub fn bump_epochs(&self) {
        for e in self.epochs.iter() {
            e.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn moved(&self, shard: usize, seen: &[u64]) -> bool {
        self.epochs[shard].load(Ordering::Acquire) != seen[shard]
    }

    pub fn count_hot_hits(&self, n: usize) {
        self.hot_hits.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Tier figures of one table (its DRAM rows are `SparseStats::rows`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TierStats {
    /// Records in the cold tier (an estimate for RocksDB; includes disk copies of rows that were
    /// promoted since, which a later demotion overwrites).
    pub cold_rows: u64,
    /// Keys of pulls and pushes served from DRAM.
    pub hot_hits: u64,
    /// Keys served from the cold tier.
    pub cold_hits: u64,
    /// Rows moved cold -> hot.
    pub promoted: u64,
    /// Rows moved hot -> cold.
    pub demoted: u64,
}

impl SparseTable {
    pub(super) fn tier_err(&self, e: TierError) -> StoreError {
        StoreError::Tier { table: self.spec.name.clone(), reason: e.0 }
    }

    /// Bytes one hot row costs: values and optimizer state, metadata, three bytes of per-row
    /// state (changed, heat, dirty), and an index slot: a `(u64, u32)` entry padded to 16 bytes
    /// and a control byte, at the table's fullest load of 7/8 (20 bytes; this counted 15, the
    /// entry unpadded).
    pub fn row_bytes(&self) -> u64 {
        (self.stride * 4 + std::mem::size_of::<RowMeta>() + 3 + 20) as u64
    }

    /// Rows in DRAM.
    pub fn hot_rows(&self) -> u64 {
        self.shards.iter().map(|s| s.lock().len() as u64).sum()
    }

    /// Whether rows can be demoted.
    pub fn is_tiered(&self) -> bool {
        self.cold.is_some()
    }

    /// Tier figures (cold count from the backend).
    pub fn tier_stats(&self) -> TierStats {
        let cold_rows = self.cold.as_ref().and_then(|c| c.count(&self.spec.name).ok()).unwrap_or(0);
        TierStats {
            cold_rows,
            hot_hits: self.tier.hot_hits.load(Ordering::Relaxed),
            cold_hits: self.tier.cold_hits.load(Ordering::Relaxed),
            promoted: self.tier.promoted.load(Ordering::Relaxed),
            demoted: self.tier.demoted.load(Ordering::Relaxed),
        }
    }

    /// Resolves a read's hot misses (batch positions `pending`) against the cold tier.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn read_cold(
        &self,
        cold: &dyn ColdTier,
        keys: &[u64],
        out: &mut [f32],
        create: bool,
        mut missing: Option<&mut [bool]>,
        mut pending: Vec<u32>,
        mut epochs: Vec<u64>,
    ) -> Result<(), StoreError> {
        let (dim, stride, now) = (self.dim, self.stride, self.now());
        let version = self.version();
        let mut values = vec![0f32; stride];
        let mut admission = AdmissionCounts::default();
        while !pending.is_empty() {
            let pending_keys: Vec<u64> = pending.iter().map(|i| keys[*i as usize]).collect();
            let records = cold.get_many(&self.spec.name, &pending_keys).map_err(|e| self.tier_err(e))?;
            let g = self.group(&pending_keys);
            let mut retry = Vec::new();
            let (mut cold_hits, mut promoted) = (0u64, 0u64);
            for (s, part) in g.parts() {
                let mut shard = self.shards[s].lock();
                let moved = self.tier.moved(s, &epochs);
                for &j in part {
                    let i = pending[j as usize] as usize;
                    let key = keys[i];
                    let dst = &mut out[i * dim..(i + 1) * dim];
                    if let Some(pos) = shard.find(key) {
                        dst.copy_from_slice(&shard.row(pos, stride)[..dim]);
                    } else if moved {
                        retry.push(i as u32);
                    } else if let Some(record) = &records[j as usize] {
                        let meta = decode_row(key, record, &mut values).ok_or_else(|| {
                            self.tier_err(TierError(format!("record of key {key} has {} bytes", record.len())))
                        })?;
                        dst.copy_from_slice(&values[..dim]);
                        cold_hits += 1;
                        if create {
                            shard.promote(meta, &values);
                            promoted += 1;
                        }
                    } else if create {
                        if let Some(pos) = self.create_or_filter(&mut shard, key, dst, version, now, &mut admission) {
                            dst.copy_from_slice(&shard.row(pos, stride)[..dim]);
                        }
                    } else {
                        self.read_missing(key, dst, i, missing.as_deref_mut());
                    }
                }
            }
            self.tier.cold_hits.fetch_add(cold_hits, Ordering::Relaxed);
            self.tier.promoted.fetch_add(promoted, Ordering::Relaxed);
            epochs = self.tier.epochs();
            pending = retry;
        }
        self.count_admission(admission);
        Ok(())
    }

    /// Resolves a push's hot misses (`keys`, with their summed gradients back to back) against
    /// the cold tier: promote and apply, or create (or drop, under admission) and apply.
    /// `step` is the push's (version, learning-rate scale). Returns (rows updated, rows dropped,
    /// rows updated with a coordinate refused as not finite).
    pub(super) fn push_cold(
        &self,
        cold: &dyn ColdTier,
        mut keys: Vec<u64>,
        mut grads: Vec<f32>,
        (version, scale): (u64, super::StepScale),
        mut epochs: Vec<u64>,
    ) -> Result<(u64, u64, u64), StoreError> {
        let (dim, stride, now) = (self.dim, self.stride, self.now());
        let admission = self.spec.policy.admission();
        let mut values = vec![0f32; stride];
        let (mut updated, mut dropped, mut rejected) = (0u64, 0u64, 0u64);
        while !keys.is_empty() {
            let records = cold.get_many(&self.spec.name, &keys).map_err(|e| self.tier_err(e))?;
            let g = self.group(&keys);
            let (mut retry_keys, mut retry_grads) = (Vec::new(), Vec::new());
            let (mut cold_hits, mut promoted) = (0u64, 0u64);
            for (s, part) in g.parts() {
                let mut shard = self.shards[s].lock();
                let moved = self.tier.moved(s, &epochs);
                for &j in part {
                    let j = j as usize;
                    let (key, grad) = (keys[j], &grads[j * dim..(j + 1) * dim]);
                    let pos = if let Some(pos) = shard.find(key) {
                        pos
                    } else if moved {
                        retry_keys.push(key);
                        retry_grads.extend_from_slice(grad);
                        continue;
                    } else if let Some(record) = &records[j] {
                        let meta = decode_row(key, record, &mut values).ok_or_else(|| {
                            self.tier_err(TierError(format!("record of key {key} has {} bytes", record.len())))
                        })?;
                        cold_hits += 1;
                        promoted += 1;
                        shard.promote(meta, &values)
                    } else if admission {
                        dropped += 1;
                        continue;
                    } else {
                        shard.insert_with(key, stride, version, now, |row| self.init_row(key, row))
                    };
                    updated += 1;
                    if !self.apply_at(&mut shard, pos, grad, (version, now), scale) {
                        rejected += 1;
                    }
                }
            }
            self.tier.cold_hits.fetch_add(cold_hits, Ordering::Relaxed);
            self.tier.promoted.fetch_add(promoted, Ordering::Relaxed);
            epochs = self.tier.epochs();
            (keys, grads) = (retry_keys, retry_grads);
        }
        Ok((updated, dropped, rejected))
    }

    /// Moves about `fraction` of every shard's rows to the cold tier: those updated least
    /// recently (LRU) or least often (LFU), by the table's policy. Returns the rows moved.
    ///
    /// A clean victim (promoted and only read since) leaves DRAM at once: its record is already
    /// in the cold tier. Only dirty victims are written, outside the shard lock.
    pub fn demote(&self, fraction: f64) -> Result<u64, StoreError> {
        let Some(cold) = &self.cold else { return Ok(0) };
        let _gate = self.tier.gate.lock();
        self.demote_gated(cold.as_ref(), fraction, true)
    }

    /// [`Self::demote`] for the store's demotion rounds (background and requests under memory
    /// pressure), which must not wait for a checkpoint or export holding the tier gate (at 50M
    /// rows a full checkpoint holds it for ~13 s): while one does, it only drops clean, unchanged
    /// victims from DRAM. That is safe while both
    /// tiers are being read: such a row's cold record was there before the reader started and
    /// is what the reader keeps (a full checkpoint and an export skip clean DRAM rows; an
    /// incremental one writes only changed rows or marked keys, whose record is read first).
    ///
    /// A demotion round holding the gate is waited for, as before: it is what frees memory.
    pub fn demote_without_waiting(&self, fraction: f64) -> Result<u64, StoreError> {
        let Some(cold) = &self.cold else { return Ok(0) };
        loop {
            if self.is_being_read() {
                return self.drop_clean_rows(fraction);
            }
            if let Some(_gate) = self.tier.gate.try_lock_for(std::time::Duration::from_millis(5)) {
                return self.demote_gated(cold.as_ref(), fraction, true);
            }
        }
    }

    /// Whether a checkpoint, export, eviction or delete holds the tier gate.
    pub fn is_being_read(&self) -> bool {
        self.tier.reading.load(Ordering::Acquire)
    }

    /// The part of a demotion that needs no gate: drops about `fraction` of every shard's rows,
    /// chosen among its clean, unchanged ones (see [`Self::demote_without_waiting`]). One caller
    /// at a time; others return at once.
    pub fn drop_clean_rows(&self, fraction: f64) -> Result<u64, StoreError> {
        let Some(cold) = &self.cold else { return Ok(0) };
        let Some(_relief) = self.tier.relief.try_lock() else { return Ok(0) };
        self.demote_gated(cold.as_ref(), fraction, false)
    }

    /// The demotion round; the caller holds the gate if `write` (dirty victims are written to
    /// the cold tier), else only clean, unchanged victims are chosen and nothing is written.
    fn demote_gated(&self, cold: &dyn ColdTier, fraction: f64, write: bool) -> Result<u64, StoreError> {
        let stride = self.stride;
        let mut moved = 0;
        for (s, shard) in self.shards.iter().enumerate() {
            // Pick victims under the lock: drop the clean ones, copy the others out as
            // (key, meta when copied, changed) and their encoded records.
            let (written, puts) = {
                let mut shard = shard.lock();
                let n = (shard.len() as f64 * fraction).ceil() as usize;
                if n == 0 {
                    continue;
                }
                // The coldest rows go first (fewest recent reads and writes, `Shard::cool`);
                // among equally cold ones, the least recently (LRU) or least often (LFU) updated.
                let mut order: Vec<(u8, u64, usize)> = shard
                    .rows()
                    .filter(|(pos, _)| write || !(shard.is_dirty(*pos) || shard.is_changed(*pos)))
                    .map(|(pos, m)| {
                        let metric = match self.spec.policy.demote {
                            DemotePolicy::Lru => m.last_step,
                            DemotePolicy::Lfu => m.updates,
                        };
                        (shard.heat(pos), metric, pos)
                    })
                    .collect();
                if write {
                    // Rounds that only drop clean rows (under a checkpoint) can come many per
                    // second; cooling in them would forget reads within one checkpoint.
                    shard.cool();
                }
                let n = n.min(order.len());
                if n == 0 {
                    continue;
                }
                order.select_nth_unstable(n - 1);
                let (mut clean, mut written, mut puts) = (Vec::new(), Vec::new(), Vec::new());
                for &(_, _, pos) in &order[..n] {
                    let meta = *shard.meta(pos);
                    // A changed row goes the written way even if clean (promotion clears the flag,
                    // so none is expected): its mark must be on disk before it leaves.
                    if shard.is_dirty(pos) || shard.is_changed(pos) {
                        written.push((meta.key, meta, shard.is_changed(pos)));
                        puts.push((meta.key, encode_row(&meta, shard.row(pos, stride))));
                    } else {
                        clean.push(meta.key);
                    }
                }
                // Positions move as rows leave, so clean rows go by key once all are chosen.
                let dropped = clean.iter().filter(|key| shard.demote(**key, stride)).count() as u64;
                if dropped > 0 {
                    self.tier.epochs[s].fetch_add(1, Ordering::AcqRel);
                    moved += dropped;
                }
                if written.is_empty() {
                    shard.shrink_if_sparse(stride);
                    continue;
                }
                (written, puts)
            };
            cold.write(&self.spec.name, &puts, &[]).map_err(|e| self.tier_err(e))?;
            // Marks before any of these rows leaves DRAM, so a failure here or later in the round
            // leaves no changed row outside DRAM unmarked. A mark for a row that then stays
            // (touched meanwhile) only makes the next incremental look at it.
            let marks: Vec<u64> = written.iter().filter(|w| w.2).map(|w| w.0).collect();
            if !marks.is_empty() {
                cold.mark_changed(&self.spec.name, &marks).map_err(|e| self.tier_err(e))?;
            }
            // Drop from DRAM only rows nobody touched while they were being written.
            let mut shard = shard.lock();
            let mut removed = 0;
            for (key, meta, _) in &written {
                if shard.find(*key).is_some_and(|pos| shard.meta(pos) == meta) && shard.demote(*key, stride) {
                    removed += 1;
                }
            }
            if removed > 0 {
                self.tier.epochs[s].fetch_add(1, Ordering::AcqRel);
            }
            shard.shrink_if_sparse(stride);
            moved += removed;
        }
        self.tier.demoted.fetch_add(moved, Ordering::Relaxed);
        Ok(moved)
    }

    /// Checkpoint support: visits every cold record as (meta, stride values). Rows also in DRAM
    /// are visited too; a checkpoint writes the DRAM rows after these, so they win on restore.
    pub fn scan_cold(&self, f: &mut dyn FnMut(RowMeta, &[f32])) -> Result<(), StoreError> {
        let Some(cold) = &self.cold else { return Ok(()) };
        let mut values = vec![0f32; self.stride];
        let mut bad = None;
        cold.scan(&self.spec.name, &mut |key, record| match decode_row(key, record, &mut values) {
            Some(meta) => f(meta, &values),
            None => bad = Some(key),
        })
        .map_err(|e| self.tier_err(e))?;
        match bad {
            Some(key) => Err(self.tier_err(TierError(format!("malformed cold record for key {key}")))),
            None => Ok(()),
        }
    }

    /// Checkpoint support (the caller holds the tier gate): visits the rows whose keys were
    /// marked changed when they left DRAM, then forgets the marks. A marked key back in DRAM is
    /// visited from there unless it changed again (then the checkpoint's DRAM pass writes it);
    /// a marked key in neither tier was deleted (and recorded as such).
    pub fn take_cold_changes(&self, f: &mut dyn FnMut(RowMeta, &[f32])) -> Result<(), StoreError> {
        let Some(cold) = &self.cold else { return Ok(()) };
        let name = &self.spec.name;
        let mut values = vec![0f32; self.stride];
        let mut after = None;
        loop {
            let keys = cold.changed_keys(name, after, COLD_CHANGES_PAGE).map_err(|e| self.tier_err(e))?;
            let Some(&last) = keys.last() else { break };
            after = Some(last);
            let records = cold.get_many(name, &keys).map_err(|e| self.tier_err(e))?;
            for (key, record) in keys.iter().zip(&records) {
                let hot = {
                    let shard = self.shards[self.shard_of(*key)].lock();
                    shard.find(*key).map(|pos| {
                        let row = (!shard.is_changed(pos)).then(|| shard.row(pos, self.stride).to_vec());
                        (*shard.meta(pos), row)
                    })
                };
                match hot {
                    Some((meta, Some(row))) => f(meta, &row),
                    Some((_, None)) => {}
                    None => {
                        if let Some(meta) = record.as_ref().and_then(|r| decode_row(*key, r, &mut values)) {
                            f(meta, &values);
                        }
                    }
                }
            }
        }
        self.clear_cold_changes()
    }

    /// Forgets the change marks (a full checkpoint writes every row; a restore starts clean).
    pub fn clear_cold_changes(&self) -> Result<(), StoreError> {
        match &self.cold {
            Some(cold) => cold.clear_changed(&self.spec.name).map_err(|e| self.tier_err(e)),
            None => Ok(()),
        }
    }

    /// The gate a checkpoint (or export, eviction, delete) holds while it reads both tiers of
    /// this table: no demotion round runs meanwhile, only clean-only drops by requests under
    /// pressure ([`Self::demote_without_waiting`]).
    pub fn tier_gate(&self) -> TierReadGuard<'_> {
        let guard = self.tier.gate.lock();
        self.tier.reading.store(true, Ordering::Release);
        TierReadGuard { _guard: guard, reading: &self.tier.reading }
    }
}

/// The tier gate held by a reader of both tiers; see [`SparseTable::tier_gate`].
pub struct TierReadGuard<'a> {
    _guard: parking_lot::MutexGuard<'a, ()>,
    reading: &'a std::sync::atomic::AtomicBool,
}

impl Drop for TierReadGuard<'_> {
    fn drop(&mut self) {
        // Cleared before the gate is released (fields drop after this), so a request never sees
        // the flag of a reader that is gone.
        self.reading.store(false, Ordering::Release);
    }
}
