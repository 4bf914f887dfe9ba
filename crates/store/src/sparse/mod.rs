//! Sparse tables: elastic key -> row maps with the optimizer applied in place.
//!
//! Invariants:
//! - A batch is grouped by internal shard first; each shard's lock is taken once per batch and
//!   nothing blocks or allocates a large buffer while it is held.
//! - A push is validated whole (length, finiteness) before any row changes: a rejected push
//!   changes nothing.
//! - Gradients for a key repeated within one push are summed (in request order, so the result is
//!   deterministic) and applied once; the row's update count grows by one.
//! - Pushes follow the spec's [`ember_core::sync::ApplyRule`] (`push`): at once, at a
//!   staleness-scaled learning rate, or buffered (softsync, sync) until s have arrived, then
//!   applied as one update of their sum. The staleness scale applies to rows updated since the
//!   gradient's pull; untouched rows are fresh.
//! - The table version counts applied pushes. A push takes the next version before it applies, and
//!   each row it touches records that version as its last-update step (and the store clock as
//!   its last-update time); a new row records the version and time it was created at.
//! - With admission on, a pull creates a row only for a key counted `min_count` times; until
//!   then it returns the initializer's value, and a push for a key without a row is dropped.
//!   Both are counted. Lookups neither count nor create.
//! - Eviction deletes rows by the table's TTL and min_l2 rules, shard by shard, and counts them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ember_core::{mix64, TableSpec};
use parking_lot::Mutex;

use crate::shard::Shard;
use crate::softsync::Pending;
use crate::tier::ColdTier;
use crate::StoreError;

mod deltas;
mod push;
mod remove;
mod scan;
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
