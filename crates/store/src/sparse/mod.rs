//! Sparse tables: elastic key -> row maps with the optimizer applied in place.
//!
//! Invariants:
//! - A batch is grouped by internal shard first; each shard's lock is taken once per batch and
//!   nothing blocks or allocates a large buffer while it is held.
//! - A push is validated whole (length, finiteness) before any row changes: a rejected push
//!   changes nothing.
//! - Gradients for a key repeated within one push are summed (in request order, so the result is
//!   deterministic) and applied once; the row's update count grows by one.
//! - Pushes follow the spec's [`ApplyRule`]: at once, at a staleness-scaled learning rate, or
//!   buffered (softsync, sync) until s have arrived, then applied as one update of their sum. The
//!   staleness scale applies to rows updated since the gradient's pull; untouched rows are fresh.
//! - The table version counts applied pushes. A push takes the next version before it applies, and
//!   each row it touches records that version as its last-update step (and the store clock as
//!   its last-update time); a new row records the version and time it was created at.
//! - With admission on, a pull creates a row only for a key counted `min_count` times; until
//!   then it returns the initializer's value, and a push for a key without a row is dropped.
//!   Both are counted. Lookups neither count nor create.
//! - Eviction deletes rows by the table's TTL and min_l2 rules, shard by shard, and counts them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ember_core::sync::{staleness_weight, ApplyRule};
use ember_core::{mix64, TableSpec};
use parking_lot::Mutex;

use crate::shard::{RowMeta, Shard};
use crate::softsync::Pending;
use crate::tier::ColdTier;
use crate::StoreError;

mod deltas;
mod tiered;

pub use deltas::DeltaRows;
pub use tiered::TierStats;

/// Result of a push.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PushOutcome {
    /// Distinct rows updated (by this push, or by the softsync update it completed).
    pub rows_updated: u64,
    /// The table's version after this push.
    pub version: u64,
    /// Versions the table had moved on between the gradient's pull and its arrival.
    pub staleness: u64,
    /// Softsync: the gradient waits in the buffer for the update that completes it.
    pub buffered: bool,
    /// Rows updated of which some coordinate's update was refused because it would have stored
    /// NaN or Inf (finite gradients can still overflow: a large learning rate times 3e38).
    /// Those coordinates kept their previous weight and state.
    pub rows_rejected: u64,
}

/// The learning-rate scale of one push. A row updated after the pull its gradient came from
/// (`last_step > since`) gets `stale`; a row nobody touched since is as fresh as it can be and
/// gets `fresh`. The table version is a coarse clock: most rows of a large table do not move
/// between a worker's pull and its push, and scaling them down would only slow learning.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StepScale {
    stale: f32,
    fresh: f32,
    since: u64,
}

impl StepScale {
    /// The same scale for every row.
    fn uniform(scale: f32) -> Self {
        Self { stale: scale, fresh: scale, since: u64::MAX }
    }

    fn of(&self, last_step: u64) -> f32 {
        if last_step > self.since {
            self.stale
        } else {
            self.fresh
        }
    }
}

/// A sparse table.
pub struct SparseTable {
    spec: TableSpec,
    dim: usize,
    stride: usize,
    shard_bits: u32,
    shards: Box<[Mutex<Shard>]>,
    version: AtomicU64,
    row_updates: AtomicU64,
    rejected_nonfinite: AtomicU64,
    /// The store's clock, unix seconds (set by the server's ticker, or by tests).
    clock: Arc<AtomicU64>,
    admitted: AtomicU64,
    filtered: AtomicU64,
    dropped: AtomicU64,
    evicted: AtomicU64,
    /// Where demoted rows go (`None`: everything stays in DRAM).
    cold: Option<Arc<dyn ColdTier>>,
    tier: tiered::TierCounters,
    /// Softsync gradients not yet applied.
    pending: Pending,
}

impl std::fmt::Debug for SparseTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SparseTable").field("spec", &self.spec).finish_non_exhaustive()
    }
}

/// Admission outcomes of one batch, added to the table's counters once per batch.
#[derive(Debug, Default, Clone, Copy)]
struct AdmissionCounts {
    admitted: u64,
    filtered: u64,
}

/// Indices of a batch grouped by shard: `order[offsets[s]..offsets[s + 1]]` are the positions in
/// the batch whose keys belong to shard `s`, in request order.
struct Grouping {
    order: Vec<u32>,
    offsets: Vec<u32>,
}

impl Grouping {
    /// Each shard that has keys in the batch, with the batch positions of those keys.
    fn parts(&self) -> impl Iterator<Item = (usize, &[u32])> + '_ {
        (0..self.offsets.len() - 1)
            .map(|s| (s, &self.order[self.offsets[s] as usize..self.offsets[s + 1] as usize]))
            .filter(|(_, part)| !part.is_empty())
    }
}

impl SparseTable {
    /// An empty table with `2^shard_bits` internal shards, reading time from `clock` (unix
    /// seconds). The spec must be valid.
    pub fn new(spec: TableSpec, shard_bits: u32, clock: Arc<AtomicU64>) -> Self {
        let dim = spec.dim as usize;
        let stride = dim + spec.state_len();
        let admission = spec.policy.admission();
        let shards = (0..1usize << shard_bits)
            .map(|_| Mutex::new(if admission { Shard::with_admission() } else { Shard::default() }))
            .collect();
        Self {
            pending: Pending::default(),
            spec,
            dim,
            stride,
            shard_bits,
            shards,
            version: AtomicU64::new(0),
            row_updates: AtomicU64::new(0),
            rejected_nonfinite: AtomicU64::new(0),
            clock,
            admitted: AtomicU64::new(0),
            filtered: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            cold: None,
            tier: tiered::TierCounters::default(),
        }
    }

    /// Puts rows that do not fit the DRAM budget in `cold` (whose table must be open).
    pub fn with_cold_tier(mut self, cold: Arc<dyn ColdTier>) -> Self {
        self.cold = Some(cold);
        self.tier = tiered::TierCounters::new(self.shards.len());
        self
    }

    fn now(&self) -> u64 {
        self.clock.load(Ordering::Relaxed)
    }

    /// The table's spec.
    pub fn spec(&self) -> &TableSpec {
        &self.spec
    }

    /// Values per row.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Pushes applied so far.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    #[inline]
    fn shard_of(&self, key: u64) -> usize {
        if self.shard_bits == 0 {
            0
        } else {
            (mix64(key) >> (64 - self.shard_bits)) as usize
        }
    }

    fn group(&self, keys: &[u64]) -> Grouping {
        let n_shards = self.shards.len();
        let shard_ids: Vec<u32> = keys.iter().map(|k| self.shard_of(*k) as u32).collect();
        let mut offsets = vec![0u32; n_shards + 1];
        for s in &shard_ids {
            offsets[*s as usize + 1] += 1;
        }
        for s in 0..n_shards {
            offsets[s + 1] += offsets[s];
        }
        let mut cursor = offsets.clone();
        let mut order = vec![0u32; keys.len()];
        for (i, s) in shard_ids.iter().enumerate() {
            let c = &mut cursor[*s as usize];
            order[*c as usize] = i as u32;
            *c += 1;
        }
        Grouping { order, offsets }
    }

    fn init_row(&self, key: u64, row: &mut [f32]) {
        let (weights, state) = row.split_at_mut(self.dim);
        self.spec.fill_weights(key, weights);
        self.spec.init_state(weights, state);
    }

    /// Reads the rows of `keys` into `out` (`keys.len() * dim`, request order). With `create`,
    /// missing rows are created from the initializer (training pull); without, they read as the
    /// initializer's value, are not stored, and are flagged in `missing` if given (lookup).
    /// Returns the table version seen before reading. With a cold tier, hot misses are looked up
    /// there (and promoted by a training pull) before a row counts as missing.
    pub fn read(
        &self,
        keys: &[u64],
        out: &mut [f32],
        create: bool,
        mut missing: Option<&mut [bool]>,
    ) -> Result<u64, StoreError> {
        debug_assert_eq!(out.len(), keys.len() * self.dim);
        let version = self.version();
        let (dim, stride, now) = (self.dim, self.stride, self.now());
        let tiered = self.cold.is_some();
        let mut admission = AdmissionCounts::default();
        let mut cold_misses: Vec<u32> = Vec::new();
        // Before anything is read: a demotion after this point makes a cold read suspect.
        let epochs = if tiered { self.tier.epochs() } else { Vec::new() };
        let g = self.group(keys);
        for (s, part) in g.parts() {
            let mut shard = self.shards[s].lock();
            for &i in part {
                let i = i as usize;
                let key = keys[i];
                let dst = &mut out[i * dim..(i + 1) * dim];
                let pos = match shard.find(key) {
                    Some(pos) => pos,
                    None if tiered => {
                        cold_misses.push(i as u32);
                        continue;
                    }
                    None if create => match self.create_or_filter(&mut shard, key, dst, version, now, &mut admission) {
                        Some(pos) => pos,
                        None => continue,
                    },
                    None => {
                        self.read_missing(key, dst, i, missing.as_deref_mut());
                        continue;
                    }
                };
                dst.copy_from_slice(&shard.row(pos, stride)[..dim]);
                if create && tiered {
                    shard.touch(pos);
                }
            }
        }
        self.count_admission(admission);
        if let Some(cold) = &self.cold {
            self.tier.count_hot_hits(keys.len() - cold_misses.len());
            if !cold_misses.is_empty() {
                self.read_cold(cold.as_ref(), keys, out, create, missing, cold_misses, epochs)?;
            }
        }
        Ok(version)
    }

    /// Creates `key`'s row at a training pull if admission lets it (returning its position),
    /// else fills `dst` with the initializer's value; counts either in `counts`.
    fn create_or_filter(
        &self,
        shard: &mut Shard,
        key: u64,
        dst: &mut [f32],
        version: u64,
        now: u64,
        counts: &mut AdmissionCounts,
    ) -> Option<usize> {
        let policy = self.spec.policy;
        if shard.admit(key, policy.min_count) {
            counts.admitted += u64::from(policy.admission());
            Some(shard.insert_with(key, self.stride, version, now, |row| self.init_row(key, row)))
        } else {
            counts.filtered += 1;
            self.spec.fill_weights(key, dst);
            None
        }
    }

    /// A lookup of a key without a row: the initializer's value, flagged missing.
    fn read_missing(&self, key: u64, dst: &mut [f32], i: usize, missing: Option<&mut [bool]>) {
        self.spec.fill_weights(key, dst);
        if let Some(m) = missing {
            m[i] = true;
        }
    }

    /// Adds one batch's admission counts to the table's (one atomic add each per batch).
    fn count_admission(&self, counts: AdmissionCounts) {
        if counts.admitted > 0 {
            self.admitted.fetch_add(counts.admitted, Ordering::Relaxed);
        }
        if counts.filtered > 0 {
            self.filtered.fetch_add(counts.filtered, Ordering::Relaxed);
        }
    }

    /// Applies one (summed) gradient to the row at `pos`, the step scaled by `scale`. Returns
    /// whether every coordinate took its update: a coordinate whose update overflowed to NaN or
    /// Inf is reset to its initial value and state (what the row's key starts from), and the
    /// row is counted.
    fn apply_at(
        &self,
        shard: &mut Shard,
        pos: usize,
        grad: &[f32],
        (version, now): (u64, u64),
        scale: StepScale,
    ) -> bool {
        let (row, meta) = shard.row_mut(pos, self.stride);
        // A row never updated still holds its initializer's value, which is what any pull read.
        let lr_scale = if meta.updates == 0 { scale.fresh } else { scale.of(meta.last_step) };
        meta.updates += 1;
        meta.last_step = version;
        meta.last_time = now;
        let (weights, state) = row.split_at_mut(self.dim);
        if self.spec.apply_scaled(weights, state, grad, meta.updates, lr_scale) == 0 {
            return true;
        }
        self.spec.repair(meta.key, weights, state);
        self.rejected_nonfinite.fetch_add(1, Ordering::Relaxed);
        false
    }

    /// A push with no gradient version (staleness 0); see [`Self::push_at`].
    pub fn push(&self, keys: &[u64], grads: &[f32]) -> Result<PushOutcome, StoreError> {
        self.push_at(keys, grads, None)
    }

    /// Applies `grads` (`keys.len() * dim`, request order), computed from the table at
    /// `gradient_version`, by the table's apply rule, creating missing rows first. Rejects the
    /// whole push, changing nothing, if any value is NaN or Inf.
    pub fn push_at(
        &self,
        keys: &[u64],
        grads: &[f32],
        gradient_version: Option<u64>,
    ) -> Result<PushOutcome, StoreError> {
        self.check_gradients(keys, grads)?;
        let staleness = gradient_version.map_or(0, |v| self.version().saturating_sub(v));
        let outcome = match self.spec.sync {
            ApplyRule::Async => self.apply_push(keys, grads, StepScale::uniform(1.0))?,
            ApplyRule::Staleness { lambda0 } => {
                let scale = match gradient_version {
                    Some(since) => StepScale {
                        stale: staleness_weight(lambda0, staleness),
                        fresh: staleness_weight(lambda0, 0),
                        since,
                    },
                    None => StepScale::uniform(staleness_weight(lambda0, 0)),
                };
                self.apply_push(keys, grads, scale)?
            }
            ApplyRule::Softsync { s, lambda0 } => {
                self.buffer_push(keys, grads, staleness_weight(lambda0, staleness), s)?
            }
            ApplyRule::Sync { s } => self.buffer_push(keys, grads, 1.0, s)?,
        };
        Ok(PushOutcome { staleness, ..outcome })
    }

    /// Buffers a push weighted by `weight`; the `s`-th applies the buffer as one update.
    fn buffer_push(&self, keys: &[u64], grads: &[f32], weight: f32, s: u32) -> Result<PushOutcome, StoreError> {
        match self.pending.add(keys, grads, self.dim, weight, s) {
            Some(merged) => self.apply_push(&merged.keys, &merged.grads, StepScale::uniform(1.0)),
            None => Ok(PushOutcome { version: self.version(), buffered: true, ..PushOutcome::default() }),
        }
    }

    /// Applies the softsync buffer, if any, as the sum of the (weighted) gradients received;
    /// returns the rows updated.
    pub fn flush_pending(&self) -> Result<u64, StoreError> {
        match self.pending.flush() {
            Some(merged) => Ok(self.apply_push(&merged.keys, &merged.grads, StepScale::uniform(1.0))?.rows_updated),
            None => Ok(0),
        }
    }

    fn check_gradients(&self, keys: &[u64], grads: &[f32]) -> Result<(), StoreError> {
        let dim = self.dim;
        if grads.len() != keys.len() * dim {
            return Err(StoreError::BadLength {
                table: self.spec.name.clone(),
                what: "gradients",
                got_bytes: grads.len() * 4,
                keys: keys.len(),
                dim,
            });
        }
        if let Some(i) = grads.iter().position(|g| !g.is_finite()) {
            self.rejected_nonfinite.fetch_add(1, Ordering::Relaxed);
            return Err(StoreError::NonFinite { table: self.spec.name.clone(), key: keys[i / dim], value: grads[i] });
        }
        Ok(())
    }

    /// Applies checked gradients now, as one version.
    fn apply_push(&self, keys: &[u64], grads: &[f32], scale: StepScale) -> Result<PushOutcome, StoreError> {
        let dim = self.dim;
        let mut g = self.group(keys);
        // Sort each shard's part by key so duplicates are adjacent; stable, so they stay in
        // request order and their sum is deterministic.
        for s in 0..self.shards.len() {
            g.order[g.offsets[s] as usize..g.offsets[s + 1] as usize].sort_by_key(|i| keys[*i as usize]);
        }
        let epochs = if self.cold.is_some() { self.tier.epochs() } else { Vec::new() };
        let version = self.version.fetch_add(1, Ordering::AcqRel) + 1;
        let (now, admission) = (self.now(), self.spec.policy.admission());
        let mut scratch = vec![0f32; dim];
        let (mut rows_updated, mut dropped, mut rejected) = (0u64, 0u64, 0u64);
        // Hot misses of a tiered table: their keys and summed gradients, resolved after the
        // cold tier has been read without any lock held.
        let (mut cold_keys, mut cold_grads) = (Vec::new(), Vec::new());
        for (s, part) in g.parts() {
            let mut shard = self.shards[s].lock();
            // Rows only get appended below, so positions found now stay valid under the lock.
            let found = shard.locate(part.iter().map(|&i| keys[i as usize]), self.stride);
            let mut run = 0;
            while run < part.len() {
                let key = keys[part[run] as usize];
                let mut end = run + 1;
                while end < part.len() && keys[part[end] as usize] == key {
                    end += 1;
                }
                let first = part[run] as usize;
                let grad: &[f32] = if end - run == 1 {
                    &grads[first * dim..(first + 1) * dim]
                } else {
                    scratch.fill(0.0);
                    for &i in &part[run..end] {
                        let i = i as usize;
                        for (acc, g) in scratch.iter_mut().zip(&grads[i * dim..(i + 1) * dim]) {
                            *acc += g;
                        }
                    }
                    &scratch
                };
                let pos = match found[run] {
                    Some(pos) => pos,
                    None if self.cold.is_some() => {
                        cold_keys.push(key);
                        cold_grads.extend_from_slice(grad);
                        run = end;
                        continue;
                    }
                    None if admission => {
                        dropped += 1;
                        run = end;
                        continue;
                    }
                    None => shard.insert_with(key, self.stride, version, now, |row| self.init_row(key, row)),
                };
                rows_updated += 1;
                if !self.apply_at(&mut shard, pos, grad, (version, now), scale) {
                    rejected += 1;
                }
                run = end;
            }
        }
        if let Some(cold) = &self.cold {
            self.tier.count_hot_hits(keys.len() - cold_keys.len());
            if !cold_keys.is_empty() {
                let (updated, not_admitted, not_finite) =
                    self.push_cold(cold.as_ref(), cold_keys, cold_grads, (version, scale), epochs)?;
                rows_updated += updated;
                dropped += not_admitted;
                rejected += not_finite;
            }
        }
        self.row_updates.fetch_add(rows_updated, Ordering::Relaxed);
        if dropped > 0 {
            self.dropped.fetch_add(dropped, Ordering::Relaxed);
        }
        Ok(PushOutcome { rows_updated, version, rows_rejected: rejected, ..PushOutcome::default() })
    }

    /// Deletes the rows of `keys` from both tiers; returns how many existed.
    pub fn delete(&self, keys: &[u64]) -> Result<u64, StoreError> {
        let _gate = self.cold.is_some().then(|| self.tier_gate());
        // Cold records first: a key is then never only in a tier the delete has passed.
        let on_disk: Vec<bool> = match &self.cold {
            Some(cold) => {
                let found = cold.get_many(&self.spec.name, keys).map_err(|e| self.tier_err(e))?;
                let gone: Vec<u64> = keys.iter().zip(&found).filter(|(_, r)| r.is_some()).map(|(k, _)| *k).collect();
                cold.write(&self.spec.name, &[], &gone).map_err(|e| self.tier_err(e))?;
                // A pull that read one of these records before the write re-reads instead of
                // promoting it (it would come back, clean and with no record).
                self.tier.bump_epochs();
                found.iter().map(Option::is_some).collect()
            }
            None => Vec::new(),
        };
        let mut counted_on_disk: ember_core::U64Map<()> = ember_core::U64Map::default();
        let mut deleted = 0;
        for (s, part) in self.group(keys).parts() {
            let mut shard = self.shards[s].lock();
            for &i in part {
                let key = keys[i as usize];
                let was_hot = shard.remove(key, self.stride);
                let was_cold =
                    on_disk.get(i as usize).copied().unwrap_or(false) && counted_on_disk.insert(key, ()).is_none();
                if was_cold {
                    // Recorded for the next checkpoint even when only the cold copy existed.
                    shard.note_deleted(key);
                }
                deleted += u64::from(was_hot || was_cold);
            }
        }
        Ok(deleted)
    }

    /// Deletes the rows the table's eviction rules expire at the current version and clock, in
    /// both tiers; returns how many. One shard locked at a time; demotion waits meanwhile.
    pub fn evict(&self) -> Result<u64, StoreError> {
        let policy = self.spec.policy;
        if !policy.eviction() {
            return Ok(0);
        }
        let (version, now, dim) = (self.version(), self.now(), self.dim);
        let expired = |meta: &RowMeta, row: &[f32]| {
            (policy.ttl_steps > 0 && version.saturating_sub(meta.last_step) > policy.ttl_steps)
                || (policy.ttl_seconds > 0 && now.saturating_sub(meta.last_time) > policy.ttl_seconds)
                || (policy.min_l2 > 0.0
                    && meta.updates > 0
                    && row[..dim].iter().map(|w| w * w).sum::<f32>().sqrt() < policy.min_l2)
        };
        let _gate = self.cold.is_some().then(|| self.tier_gate());
        let mut gone: Vec<u64> = Vec::new();
        for shard in self.shards.iter() {
            gone.extend(shard.lock().evict(self.stride, expired));
        }
        let mut evicted = gone.len() as u64;
        if let Some(cold) = &self.cold {
            // Rows only on disk expire by the same rules; a row also in DRAM was judged above.
            let mut doomed = Vec::new();
            self.scan_cold(&mut |meta, values| {
                if expired(&meta, values) {
                    doomed.push(meta.key);
                }
            })?;
            let evicted_hot: ember_core::U64Map<()> = gone.iter().map(|k| (*k, ())).collect();
            doomed.retain(|k| !evicted_hot.contains_key(k));
            // The expired records and the disk copies of evicted DRAM rows (which would otherwise
            // come back) go first; the epoch bump then makes a pull that read one of them before
            // this re-read the cold tier instead of promoting it.
            let on_disk: Vec<u64> = gone.iter().chain(&doomed).copied().collect();
            cold.write(&self.spec.name, &[], &on_disk).map_err(|e| self.tier_err(e))?;
            self.tier.bump_epochs();
            for key in doomed {
                let mut shard = self.shards[self.shard_of(key)].lock();
                match shard.find(key) {
                    None => shard.note_deleted(key),
                    // Promoted since the scan, from the record just deleted, and not updated:
                    // expired by the same rule (and clean rows must have a record).
                    Some(pos) if !shard.is_dirty(pos) => {
                        shard.remove(key, self.stride);
                    }
                    Some(_) => continue, // updated since: live again, and dirty
                }
                gone.push(key);
                evicted += 1;
            }
        }
        self.evicted.fetch_add(evicted, Ordering::Relaxed);
        Ok(evicted)
    }

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

/// A snapshot of a table's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SparseStats {
    /// Live rows.
    pub rows: u64,
    /// Approximate heap bytes (rows, optimizer state, metadata, index).
    pub bytes: u64,
    /// Pushes applied.
    pub version: u64,
    /// Row updates applied.
    pub row_updates: u64,
    /// Pushes rejected for NaN/Inf.
    pub rejected_nonfinite: u64,
    /// Rows created by admission.
    pub admitted: u64,
    /// Pulled keys not (yet) admitted.
    pub filtered: u64,
    /// Pushed rows dropped for keys without a row under admission.
    pub dropped: u64,
    /// Rows deleted by eviction rules.
    pub evicted: u64,
    /// Tier figures (all zero for a table without a cold tier).
    pub tier: TierStats,
}
