//! The cold tier: where rows go when the hot (DRAM) tier is over its budget.
//!
//! [`ColdTier`] is the seam: [`MemCold`] (a map, for tests) and, with the `rocksdb` feature,
//! `RocksCold` (one RocksDB per server, a column family per table) implement it, so the tiering
//! logic in `sparse` is tested without RocksDB.
//!
//! Invariants the sparse table keeps on top of it:
//! - A key's value is its hot row if it has one, else its cold record, else it has none. A hot
//!   row shadows a cold record of the same key (a promoted row keeps its disk copy until it is
//!   demoted again, which overwrites it, or deleted, which deletes both).
//! - Rows are written to the cold tier before they leave the hot tier, and leave it only if they
//!   did not change in between, so a row is never in neither tier.

#[cfg(feature = "rocksdb")]
mod rocks;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use parking_lot::Mutex;

pub use crate::record::{decode_row, encode_row};
#[cfg(feature = "rocksdb")]
pub use rocks::RocksCold;

/// A cold-tier failure (I/O, corruption reported by the backend).
#[derive(Debug, thiserror::Error)]
#[error("cold tier: {0}")]
pub struct TierError(pub String);

/// Durable key -> record storage per table. Records are [`encode_row`] bytes.
pub trait ColdTier: Send + Sync + std::fmt::Debug {
    /// Makes room for a table (idempotent).
    fn open_table(&self, table: &str) -> Result<(), TierError>;
    /// Deletes a table and all its records (idempotent).
    fn drop_table(&self, table: &str) -> Result<(), TierError>;
    /// The records of `keys`, in order (`None` where absent).
    fn get_many(&self, table: &str, keys: &[u64]) -> Result<Vec<Option<Vec<u8>>>, TierError>;
    /// Writes `puts` and deletes `deletes`, atomically.
    fn write(&self, table: &str, puts: &[(u64, Vec<u8>)], deletes: &[u64]) -> Result<(), TierError>;
    /// Visits every record of a table in key order.
    fn scan(&self, table: &str, f: &mut dyn FnMut(u64, &[u8])) -> Result<(), TierError>;
    /// Records in a table (may be an estimate for large tables).
    fn count(&self, table: &str) -> Result<u64, TierError>;
    /// Marks `keys` changed since the last checkpoint: their rows left DRAM with changes no
    /// checkpoint holds yet. The marks live here rather than in DRAM so that their memory does not
    /// grow with the cold tier (a bulk load without checkpoints marks every row it demotes).
    fn mark_changed(&self, table: &str, keys: &[u64]) -> Result<(), TierError>;
    /// Up to `limit` marked keys greater than `after` (all when `None`), in key order: a page, so
    /// the caller can read their records between pages.
    fn changed_keys(&self, table: &str, after: Option<u64>, limit: usize) -> Result<Vec<u64>, TierError>;
    /// Forgets every mark of a table.
    fn clear_changed(&self, table: &str) -> Result<(), TierError>;
    /// DRAM the backend holds for a table outside the hot tier's budget: (index and filter
    /// blocks of its files, write buffers), in bytes. Zero for backends that cannot tell.
    fn memory_bytes(&self, _table: &str) -> Result<(u64, u64), TierError> {
        Ok((0, 0))
    }
    /// Background work the backend still owes for `tables` (flushes and compactions). Cold reads
    /// slow down while it is behind (more files to look in), and a bulk load leaves it behind for
    /// a while; zeros for backends without such work.
    fn backlog(&self, _tables: &[&str]) -> Result<ColdBacklog, TierError> {
        Ok(ColdBacklog::default())
    }
}

/// What [`ColdTier::backlog`] reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ColdBacklog {
    /// Flushes and compactions running now. RocksDB schedules the next compaction as one ends,
    /// so a backlog shows as this staying above zero. (Its `compaction-pending` flag is no
    /// such signal: it stayed set on an idle marks family with two sorted runs.)
    pub running: u64,
    /// Files in level 0 (for universal compaction: unmerged runs), which every cold read checks.
    pub l0_files: u64,
    /// Whether the backend is throttling or stopping writes.
    pub writes_throttled: bool,
}

/// An in-memory cold tier: the tiering logic's test double, and a reference for backends.
#[derive(Debug, Default)]
pub struct MemCold {
    tables: Mutex<HashMap<String, MemTable>>,
}

/// One table of a [`MemCold`]: records, and the keys marked changed.
#[derive(Debug, Default)]
struct MemTable {
    records: BTreeMap<u64, Vec<u8>>,
    changed: BTreeSet<u64>,
}

impl MemCold {
    fn with_table<T>(&self, table: &str, f: impl FnOnce(&mut MemTable) -> T) -> Result<T, TierError> {
        let mut tables = self.tables.lock();
        let t = tables.get_mut(table).ok_or_else(|| TierError(format!("no table {table:?}")))?;
        Ok(f(t))
    }
}

impl ColdTier for MemCold {
    fn open_table(&self, table: &str) -> Result<(), TierError> {
        self.tables.lock().entry(table.to_string()).or_default();
        Ok(())
    }

    fn drop_table(&self, table: &str) -> Result<(), TierError> {
        self.tables.lock().remove(table);
        Ok(())
    }

    fn get_many(&self, table: &str, keys: &[u64]) -> Result<Vec<Option<Vec<u8>>>, TierError> {
        self.with_table(table, |t| keys.iter().map(|k| t.records.get(k).cloned()).collect())
    }

    fn write(&self, table: &str, puts: &[(u64, Vec<u8>)], deletes: &[u64]) -> Result<(), TierError> {
        self.with_table(table, |t| {
            for (k, v) in puts {
                t.records.insert(*k, v.clone());
            }
            for k in deletes {
                t.records.remove(k);
            }
        })
    }

    fn scan(&self, table: &str, f: &mut dyn FnMut(u64, &[u8])) -> Result<(), TierError> {
        self.with_table(table, |t| t.records.iter().for_each(|(k, v)| f(*k, v)))
    }

    fn count(&self, table: &str) -> Result<u64, TierError> {
        self.with_table(table, |t| t.records.len() as u64)
    }

    fn mark_changed(&self, table: &str, keys: &[u64]) -> Result<(), TierError> {
        self.with_table(table, |t| t.changed.extend(keys))
    }

    fn changed_keys(&self, table: &str, after: Option<u64>, limit: usize) -> Result<Vec<u64>, TierError> {
        use std::ops::Bound::{Excluded, Unbounded};
        let from = after.map_or(Unbounded, Excluded);
        self.with_table(table, |t| t.changed.range((from, Unbounded)).take(limit).copied().collect())
    }

    fn clear_changed(&self, table: &str) -> Result<(), TierError> {
        self.with_table(table, |t| t.changed.clear())
    }
}
