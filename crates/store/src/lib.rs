//! Ember's embedding store: the state a ps-server holds, with no gRPC in it.
//!
//! Layout:
//! - [`Store`]: the table registry and the byte-level API the gRPC adapter calls (decode LE f32,
//!   check the key limit, dispatch to a table).
//! - [`sparse`]: elastic key -> row tables, sharded internally, optimizer applied in place.
//! - [`dense`]: named f32 vectors.
//! - `shard`: one shard's index and row arena.
//! - [`delta`]: row-delta sequence and per-shard change logs, for read-only replicas.
//! - [`segment`]: immutable memory-mapped row files (sorted keys, checksummed) for replicas.
//! - [`replica`]: a replica's copy of a table: a segment, overlay layers, pinned versions.
//! - `budget`: a tiered store's DRAM budget, demotion rounds and the hard limit.
//!
//! Invariants: a refused operation changes nothing; each shard lock is taken once per batch; the
//! store never blocks on I/O or async work while holding a lock. [`checkpoint`] writes the store
//! to files and restores it; a table's [`ember_core::FeaturePolicy`] adds admission (counted in
//! `admission`) and eviction; [`tier`] moves rows between DRAM and a cold tier.

#[cfg(target_endian = "big")]
compile_error!("ember-store reads and writes little-endian f32 in place; big-endian targets are not supported");

mod admission;
mod arena;
mod budget;
pub mod checkpoint;
pub mod delta;
#[cfg(test)]
mod delta_tests;
pub mod dense;
mod error;
#[cfg(test)]
mod policy_tests;
mod record;
pub mod replica;
pub mod segment;
mod shard;
mod softsync;
pub mod sparse;
#[cfg(test)]
mod sync_tests;
#[cfg(test)]
mod tests;
pub mod tier;
#[cfg(test)]
mod tier_tests;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use ember_core::codec::{self, Compression};
use ember_core::{TableKind, TableSpec};
use parking_lot::RwLock;

pub use budget::HOT_HARD_LIMIT;
pub use checkpoint::{CheckpointError, CheckpointInfo, CheckpointKind, Checkpointer, IfNoIntactChain};
pub use delta::DeltaClock;
pub use dense::DenseTable;
pub use error::StoreError;
pub use record::f32s_from_le_bytes;
pub use segment::{Segment, SegmentError, SegmentWriter};
pub use shard::RowMeta;
pub use sparse::{DeltaRows, PushOutcome, SparseStats, SparseTable, TierStats};
pub use tier::{ColdTier, MemCold, TierError};

/// Most values (keys x dim) one pull or lookup returns: 64 MiB of f32, the default message
/// limit, whatever the key limit and the table's width.
pub const MAX_READ_VALUES: usize = 16 << 20;

/// Tunables of a store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// log2 of the internal shards per sparse table.
    pub shard_bits: u32,
    /// Most keys accepted in one pull, lookup, push or delete.
    pub max_batch_keys: usize,
    /// Entries each sparse table's delta log keeps before compacting (16 bytes each; 0 turns
    /// row deltas off). A subscriber more than this many distinct changed keys behind resyncs.
    pub delta_log_keys: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self { shard_bits: 6, max_batch_keys: 262_144, delta_log_keys: DEFAULT_DELTA_LOG_KEYS }
    }
}

/// Default [`StoreConfig::delta_log_keys`]: 4M keys (64 MiB at most) per table.
pub const DEFAULT_DELTA_LOG_KEYS: usize = 1 << 22;

/// A table of either kind.
#[derive(Debug, Clone)]
pub enum Table {
    /// key -> row.
    Sparse(Arc<SparseTable>),
    /// one vector.
    Dense(Arc<DenseTable>),
}

impl Table {
    /// The table's spec.
    pub fn spec(&self) -> &TableSpec {
        match self {
            Table::Sparse(t) => t.spec(),
            Table::Dense(t) => t.spec(),
        }
    }
}

/// Rows read by a pull or lookup.
#[derive(Debug, Clone, PartialEq)]
pub struct Rows {
    /// Values per row.
    pub dim: u32,
    /// `keys.len() * dim` values in request order.
    pub values: Vec<f32>,
    /// The table's version when read.
    pub version: u64,
    /// Lookup only: one flag per key, true where the table had no row.
    pub missing: Vec<bool>,
}

/// One dense gradient of a [`Store::push_dense_versioned`].
#[derive(Debug, Clone, Copy)]
pub struct DensePush<'a> {
    /// The table.
    pub name: &'a str,
    /// How `bytes` are encoded.
    pub encoding: Compression,
    /// The gradient.
    pub bytes: &'a [u8],
    /// The table version it was computed from (`None`: unknown, staleness 0).
    pub version: Option<u64>,
}

/// One table's figures for `Stats`.
#[derive(Debug, Clone, PartialEq)]
pub struct TableStats {
    /// The spec.
    pub spec: TableSpec,
    /// Counters (dense tables report one row).
    pub counters: SparseStats,
}

/// All tables of one server.
#[derive(Debug)]
pub struct Store {
    config: StoreConfig,
    tables: RwLock<BTreeMap<String, Table>>,
    /// A table was dropped since the last checkpoint took it into account: an incremental
    /// checkpoint cannot express that (a re-created table would keep the old rows), so the next
    /// checkpoint is full.
    dropped_since_checkpoint: AtomicBool,
    /// Unix seconds, read by row TTLs; advanced by [`Store::set_now`] (the server ticks it).
    clock: Arc<AtomicU64>,
    /// Row-delta sequence and stream id ([`delta`]).
    deltas: Arc<DeltaClock>,
    /// The cold tier and the DRAM budget (bytes) it enforces, if any.
    tiering: Option<(Arc<dyn ColdTier>, u64)>,
    /// Held by one demotion round over all tables at a time. Each round measures the hot tier
    /// only once it holds this: rounds that measured before waiting can each demote a stale
    /// fraction in turn (after a 13 s stall in a 50M-key bench-tiers run the hot tier fell from
    /// ~5.7M rows to 1.46M, which this explains; inferred from the counts, not traced).
    demotion_round: parking_lot::Mutex<()>,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Default for Store {
    fn default() -> Self {
        Self::new(StoreConfig::default())
    }
}

impl Store {
    /// An empty store.
    pub fn new(config: StoreConfig) -> Self {
        Self {
            config: config.clone(),
            tables: RwLock::default(),
            dropped_since_checkpoint: AtomicBool::new(false),
            clock: Arc::new(AtomicU64::new(unix_now())),
            deltas: Arc::new(DeltaClock::new(match config.delta_log_keys {
                0 => 0,
                keys => (keys >> config.shard_bits).max(16),
            })),
            tiering: None,
            demotion_round: parking_lot::Mutex::new(()),
        }
    }

    /// An empty store whose sparse tables keep at most about `dram_budget` bytes of rows in DRAM
    /// and demote the rest to `cold` (see [`Store::enforce_budget`]).
    pub fn tiered(config: StoreConfig, cold: Arc<dyn ColdTier>, dram_budget: u64) -> Self {
        Self { tiering: Some((cold, dram_budget)), ..Self::new(config) }
    }

    /// Sets the clock row TTLs read (unix seconds). Servers call it with the wall clock; tests
    /// move it by hand.
    pub fn set_now(&self, unix_seconds: u64) {
        self.clock.store(unix_seconds, Ordering::Relaxed);
    }

    /// Advances the clock to the wall clock.
    pub fn tick(&self) {
        self.set_now(unix_now());
    }

    /// Runs every sparse table's eviction rules; returns the rows deleted.
    pub fn evict(&self) -> Result<u64, StoreError> {
        let mut evicted = 0;
        for table in self.all_tables() {
            if let Table::Sparse(s) = table {
                evicted += s.evict()?;
            }
        }
        Ok(evicted)
    }

    /// The row-delta clock: stream id, current sequence, cuts.
    pub fn deltas(&self) -> &DeltaClock {
        &self.deltas
    }

    /// The store's tunables.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// Creates a table. Returns false (and changes nothing) if an identical table exists.
    /// `initial_values` (LE f32) may seed a dense table; it is ignored for an existing table.
    pub fn create_table(&self, spec: TableSpec, initial_values: Option<&[u8]>) -> Result<bool, StoreError> {
        spec.validate()?;
        if let Some(existing) = self.tables.read().get(&spec.name) {
            return same_spec(existing, &spec);
        }
        // Build outside the write lock: a dense table may be large.
        let table = match spec.kind {
            TableKind::Sparse => {
                let table = SparseTable::new(spec.clone(), self.config.shard_bits, Arc::clone(&self.clock));
                table.attach_deltas(&self.deltas);
                let table = match &self.tiering {
                    Some((cold, _)) => {
                        let tier_err = |e: TierError| StoreError::Tier { table: spec.name.clone(), reason: e.0 };
                        cold.open_table(&spec.name).map_err(tier_err)?;
                        table.with_cold_tier(Arc::clone(cold))
                    }
                    None => table,
                };
                Table::Sparse(Arc::new(table))
            }
            TableKind::Dense => {
                let initial = match initial_values {
                    Some(bytes) if !bytes.is_empty() => {
                        Some(self.decode(&spec, "initial values", bytes, 1)?.into_owned())
                    }
                    _ => None,
                };
                Table::Dense(Arc::new(DenseTable::new(spec.clone(), initial)?))
            }
        };
        let mut tables = self.tables.write();
        if let Some(existing) = tables.get(&spec.name) {
            return same_spec(existing, &spec);
        }
        tables.insert(spec.name.clone(), table);
        Ok(true)
    }

    /// Drops a table and all its rows.
    pub fn drop_table(&self, name: &str) -> Result<(), StoreError> {
        let removed = self.tables.write().remove(name);
        if removed.is_some() {
            self.dropped_since_checkpoint.store(true, Ordering::Release);
            if let Some((cold, _)) = &self.tiering {
                cold.drop_table(name).map_err(|e| StoreError::Tier { table: name.to_string(), reason: e.0 })?;
            }
        }
        // The table (possibly millions of rows) is freed here, after the registry lock is gone.
        removed.map(drop).ok_or_else(|| StoreError::TableNotFound(name.to_string()))
    }

    /// Specs of all tables, by name.
    pub fn list_tables(&self) -> Vec<TableSpec> {
        self.tables.read().values().map(|t| t.spec().clone()).collect()
    }

    /// Every table, by name.
    pub fn all_tables(&self) -> Vec<Table> {
        self.tables.read().values().cloned().collect()
    }

    /// True (once) if a table was dropped since the last call.
    pub(crate) fn take_dropped_flag(&self) -> bool {
        self.dropped_since_checkpoint.swap(false, Ordering::AcqRel)
    }

    /// A table by name.
    pub fn table(&self, name: &str) -> Result<Table, StoreError> {
        self.tables.read().get(name).cloned().ok_or_else(|| StoreError::TableNotFound(name.to_string()))
    }

    /// A sparse table by name.
    pub fn sparse(&self, name: &str) -> Result<Arc<SparseTable>, StoreError> {
        match self.table(name)? {
            Table::Sparse(t) => Ok(t),
            Table::Dense(_) => Err(StoreError::WrongKind { name: name.into(), actual: "dense", expected: "sparse" }),
        }
    }

    /// A dense table by name.
    pub fn dense(&self, name: &str) -> Result<Arc<DenseTable>, StoreError> {
        match self.table(name)? {
            Table::Dense(t) => Ok(t),
            Table::Sparse(_) => Err(StoreError::WrongKind { name: name.into(), actual: "sparse", expected: "dense" }),
        }
    }

    fn check_batch(&self, keys: usize) -> Result<(), StoreError> {
        if keys > self.config.max_batch_keys {
            return Err(StoreError::BatchTooLarge { got: keys, limit: self.config.max_batch_keys });
        }
        Ok(())
    }

    fn decode<'a>(
        &self,
        spec: &TableSpec,
        what: &'static str,
        bytes: &'a [u8],
        keys: usize,
    ) -> Result<Cow<'a, [f32]>, StoreError> {
        let dim = spec.dim as usize;
        let bad = || StoreError::BadLength { table: spec.name.clone(), what, got_bytes: bytes.len(), keys, dim };
        if bytes.len() != keys * dim * 4 {
            return Err(bad());
        }
        f32s_from_le_bytes(bytes).ok_or_else(bad)
    }

    /// Training read: missing rows are created.
    pub fn pull(&self, name: &str, keys: &[u64]) -> Result<Rows, StoreError> {
        self.read(name, keys, true)
    }

    /// Read-only read: missing rows read as the initializer's value and are flagged.
    pub fn lookup(&self, name: &str, keys: &[u64]) -> Result<Rows, StoreError> {
        self.read(name, keys, false)
    }

    fn read(&self, name: &str, keys: &[u64], create: bool) -> Result<Rows, StoreError> {
        self.check_batch(keys.len())?;
        let table = self.sparse(name)?;
        // The reply, not only the request, is bounded: keys x dim values.
        let limit = MAX_READ_VALUES / table.dim().max(1);
        if keys.len() > limit {
            return Err(StoreError::BatchTooLarge { got: keys.len(), limit });
        }
        let mut values = vec![0f32; keys.len() * table.dim()];
        let mut missing = if create { Vec::new() } else { vec![false; keys.len()] };
        let version = table.read(keys, &mut values, create, (!create).then_some(missing.as_mut_slice()))?;
        if create {
            self.relieve_pressure()?;
        }
        Ok(Rows { dim: table.spec().dim, values, version, missing })
    }

    /// Applies sparse gradients given as LE f32 bytes, with no gradient version (staleness 0).
    pub fn push(&self, name: &str, keys: &[u64], grad_bytes: &[u8]) -> Result<PushOutcome, StoreError> {
        self.push_versioned(name, keys, Compression::None, grad_bytes, None)
    }

    /// Applies sparse gradients sent in `encoding` (see [`ember_core::codec`]), computed from the
    /// table at `gradient_version`. They are decoded to f32 before the optimizer sees them and
    /// refused whole if they do not decode; the outcome carries the staleness, and the table's
    /// apply rule may scale or buffer them.
    pub fn push_versioned(
        &self,
        name: &str,
        keys: &[u64],
        encoding: Compression,
        grad_bytes: &[u8],
        gradient_version: Option<u64>,
    ) -> Result<PushOutcome, StoreError> {
        self.check_batch(keys.len())?;
        let table = self.sparse(name)?;
        let grads = self.decode_gradient(table.spec(), encoding, grad_bytes, keys.len())?;
        let outcome = table.push_at(keys, &grads, gradient_version)?;
        self.relieve_pressure()?;
        Ok(outcome)
    }

    /// Applies every table's softsync buffer (end of training, checkpoints); returns the tables
    /// that had one.
    pub fn flush_pending(&self) -> Result<u64, StoreError> {
        let mut flushed = 0;
        for table in self.all_tables() {
            let had = match table {
                Table::Sparse(t) => t.flush_pending()? > 0,
                Table::Dense(t) => t.flush_pending(),
            };
            flushed += u64::from(had);
        }
        Ok(flushed)
    }

    fn decode_gradient<'a>(
        &self,
        spec: &TableSpec,
        encoding: Compression,
        bytes: &'a [u8],
        keys: usize,
    ) -> Result<Cow<'a, [f32]>, StoreError> {
        match encoding {
            Compression::None => self.decode(spec, "gradients", bytes, keys),
            _ => codec::decode(encoding, bytes, keys * spec.dim as usize)
                .map(Cow::Owned)
                .map_err(|e| StoreError::BadEncoding { table: spec.name.clone(), reason: e.to_string() }),
        }
    }

    /// Deletes rows; returns how many existed.
    pub fn delete_keys(&self, name: &str, keys: &[u64]) -> Result<u64, StoreError> {
        self.check_batch(keys.len())?;
        self.sparse(name)?.delete(keys)
    }

    /// A dense vector and its version.
    pub fn pull_dense(&self, name: &str) -> Result<(Vec<f32>, u64), StoreError> {
        Ok(self.dense(name)?.pull())
    }

    /// Applies a dense gradient given as LE f32 bytes; returns the new version.
    pub fn push_dense(&self, name: &str, grad_bytes: &[u8]) -> Result<u64, StoreError> {
        let table = self.dense(name)?;
        let grads = self.decode(table.spec(), "gradients", grad_bytes, 1)?;
        table.push(&grads)
    }

    /// Applies several dense gradients given as LE f32 bytes, all or none: every table and length
    /// is checked first. Returns each table's new version in request order.
    pub fn push_dense_many(&self, grads: &[(&str, &[u8])]) -> Result<Vec<u64>, StoreError> {
        let pushes: Vec<DensePush> = grads
            .iter()
            .map(|(name, bytes)| DensePush { name, encoding: Compression::None, bytes, version: None })
            .collect();
        Ok(self.push_dense_versioned(&pushes)?.into_iter().map(|out| out.version).collect())
    }

    /// Applies several dense gradients, each computed from its table at its version, all or
    /// none; one outcome per gradient, in request order.
    pub fn push_dense_versioned(&self, grads: &[DensePush<'_>]) -> Result<Vec<PushOutcome>, StoreError> {
        let mut checked = Vec::with_capacity(grads.len());
        for push in grads {
            let table = self.dense(push.name)?;
            let values = self.decode_gradient(table.spec(), push.encoding, push.bytes, 1)?;
            table.validate(&values)?;
            checked.push((table, values, push.version));
        }
        checked.into_iter().map(|(table, values, version)| table.push_at(&values, version)).collect()
    }

    /// Figures for every table.
    pub fn stats(&self) -> Vec<TableStats> {
        self.all_tables()
            .into_iter()
            .map(|t| match t {
                Table::Sparse(s) => TableStats { spec: s.spec().clone(), counters: s.stats() },
                Table::Dense(d) => {
                    let (version, rejected_nonfinite, bytes) = d.counters();
                    let counters = SparseStats {
                        rows: 1,
                        bytes,
                        version,
                        row_updates: version,
                        rejected_nonfinite,
                        ..Default::default()
                    };
                    TableStats { spec: d.spec().clone(), counters }
                }
            })
            .collect()
    }
}

fn same_spec(existing: &Table, spec: &TableSpec) -> Result<bool, StoreError> {
    if existing.spec() == spec {
        Ok(false)
    } else {
        Err(StoreError::SpecConflict { existing: Box::new(existing.spec().clone()) })
    }
}
