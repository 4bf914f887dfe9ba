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

use std::collections::{BTreeMap, HashMap};

use parking_lot::Mutex;

use crate::RowMeta;
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
}

/// Bytes of a record before its values: updates, last step, last time.
const RECORD_HEADER: usize = 24;

/// A row as a cold record: metadata (without the key, which is the record's key) then `stride`
/// little-endian f32.
pub fn encode_row(meta: &RowMeta, values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(RECORD_HEADER + values.len() * 4);
    for word in [meta.updates, meta.last_step, meta.last_time] {
        out.extend_from_slice(&word.to_le_bytes());
    }
    out.extend_from_slice(bytemuck::cast_slice(values));
    out
}

/// Decodes a record of `key` into `values` (which must hold `stride` values); `None` if the
/// record has the wrong size.
pub fn decode_row(key: u64, record: &[u8], values: &mut [f32]) -> Option<RowMeta> {
    if record.len() != RECORD_HEADER + values.len() * 4 {
        return None;
    }
    let word = |i: usize| u64::from_le_bytes(record[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
    bytemuck::cast_slice_mut::<f32, u8>(values).copy_from_slice(&record[RECORD_HEADER..]);
    Some(RowMeta { key, updates: word(0), last_step: word(1), last_time: word(2) })
}

/// An in-memory cold tier: the tiering logic's test double, and a reference for backends.
#[derive(Debug, Default)]
pub struct MemCold {
    tables: Mutex<HashMap<String, BTreeMap<u64, Vec<u8>>>>,
}

impl MemCold {
    fn with_table<T>(&self, table: &str, f: impl FnOnce(&mut BTreeMap<u64, Vec<u8>>) -> T) -> Result<T, TierError> {
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
        self.with_table(table, |t| keys.iter().map(|k| t.get(k).cloned()).collect())
    }

    fn write(&self, table: &str, puts: &[(u64, Vec<u8>)], deletes: &[u64]) -> Result<(), TierError> {
        self.with_table(table, |t| {
            for (k, v) in puts {
                t.insert(*k, v.clone());
            }
            for k in deletes {
                t.remove(k);
            }
        })
    }

    fn scan(&self, table: &str, f: &mut dyn FnMut(u64, &[u8])) -> Result<(), TierError> {
        self.with_table(table, |t| t.iter().for_each(|(k, v)| f(*k, v)))
    }

    fn count(&self, table: &str) -> Result<u64, TierError> {
        self.with_table(table, |t| t.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_wrong_sizes_are_refused() {
        let meta = RowMeta { key: 9, updates: 3, last_step: 17, last_time: 1_700_000_000 };
        let record = encode_row(&meta, &[1.5, -2.0, 0.25]);
        let mut values = [0f32; 3];
        assert_eq!(decode_row(9, &record, &mut values), Some(meta));
        assert_eq!(values, [1.5, -2.0, 0.25]);
        assert_eq!(decode_row(9, &record[1..], &mut values), None);
        let mut two = [0f32; 2];
        assert_eq!(decode_row(9, &record, &mut two), None);
    }
}
