//! The RocksDB cold tier: one DB per server, one column family per table, keys as 8 big-endian
//! bytes (so a scan is in key order), values as [`super::encode_row`] records.
//!
//! Cold reads are point lookups of a batch's misses: `batched_multi_get_cf` on sorted keys, with
//! a bloom filter per SST so a key that was never demoted (a new feature) costs no disk read.
//! Writes go through the WAL-less path: the cold tier is a cache of evicted DRAM rows whose
//! durability comes from checkpoints, and on start the DB is emptied before a restore.

use std::path::Path;

use rocksdb::{
    BlockBasedOptions, Cache, DBCompressionType, DBWithThreadMode, MultiThreaded, Options, WriteBatch, WriteOptions,
};

use super::{ColdBacklog, ColdTier, TierError};

type Db = DBWithThreadMode<MultiThreaded>;

/// Block cache shared by every table of the server.
const BLOCK_CACHE_BYTES: usize = 16 << 20;

/// A RocksDB cold tier.
pub struct RocksCold {
    db: Db,
    cf_options: Options,
    /// Options of the change-mark column families: only iterated, never read by key, so no
    /// bloom filter (its ~1.25 bytes per key would be DRAM again).
    marks_options: Options,
}

impl std::fmt::Debug for RocksCold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksCold").field("path", &self.db.path()).finish_non_exhaustive()
    }
}

fn err(e: rocksdb::Error) -> TierError {
    TierError(e.into_string())
}

fn cf_name(table: &str) -> String {
    format!("t.{table}")
}

/// The column family of a table's change marks (keys only).
fn marks_name(table: &str) -> String {
    format!("c.{table}")
}

impl RocksCold {
    /// Opens (creating) the DB at `path` and drops every table in it: cold records are only valid
    /// for the process that wrote them (the store restores from checkpoints on start).
    pub fn open_empty(path: &Path) -> Result<Self, TierError> {
        let mut db_options = Options::default();
        db_options.create_if_missing(true);
        db_options.create_missing_column_families(true);
        db_options.increase_parallelism(2);
        let mut cf_options = Options::default();
        let mut table = BlockBasedOptions::default();
        table.set_bloom_filter(10.0, false);
        // Filters and indexes stay in the table readers (~2.5 bytes per cold key), not in the
        // block cache: there they were evicted by data blocks and every MultiGet re-read and
        // re-checksummed them (Zipf pulls 1.2M -> 1.8M keys/s, docs/benchmarks.md).
        table.set_cache_index_and_filter_blocks(false);
        // Cold reads are point lookups spread over the whole tier, so they skip the block cache
        // (`fill_cache(false)`); it only serves iterators (checkpoints, export).
        table.set_block_cache(&Cache::new_lru_cache(BLOCK_CACHE_BYTES));
        cf_options.set_block_based_table_factory(&table);
        // Rows are float records: lz4 saved little and cost a decompression per cold read.
        cf_options.set_compression_type(DBCompressionType::None);
        // A bloom filter over the write buffer: without it every cold read (and every first read
        // of a new key) searched the skiplist of up to 16 MB of recent demotions, a cache miss per
        // level (benches/cold_tier.rs: 1.3x reads of present keys, 2.7x of absent ones). It costs
        // a tenth of the buffer.
        cf_options.set_memtable_prefix_bloom_ratio(0.1);
        cf_options.set_memtable_whole_key_filtering(true);
        // Memtables are DRAM outside the budget too: keep them small.
        cf_options.set_write_buffer_size(16 << 20);
        cf_options.set_max_write_buffer_number(2);
        // Demotion writes in bursts. With leveled compaction and the default L0 triggers the
        // burst after a bulk load stalled writes at 8-16 MB/s while the hot tier kept growing;
        // universal compaction rewrites less, and the higher triggers let L0 absorb a burst.
        cf_options.set_compaction_style(rocksdb::DBCompactionStyle::Universal);
        cf_options.set_level_zero_slowdown_writes_trigger(40);
        cf_options.set_level_zero_stop_writes_trigger(64);
        // The change marks take the same L0 triggers: a bulk load marks every row it demotes,
        // and with the defaults (slowdown at 20 L0 files) the marks family held the whole DB's
        // writes at 16 MB/s through most of a 50M-row preload (60 stall episodes in its LOG).
        // With them the rows family stalls instead, about as often, and the preload takes as
        // long (94.6 s before, 93.6 s after): the cold tier's compaction on 2 cores is the
        // limit, and the marks should not add a throttle of their own (docs/benchmarks.md).
        let mut marks_options = Options::default();
        marks_options.set_compression_type(DBCompressionType::None);
        marks_options.set_write_buffer_size(4 << 20);
        marks_options.set_max_write_buffer_number(2);
        marks_options.set_compaction_style(rocksdb::DBCompactionStyle::Universal);
        marks_options.set_level_zero_slowdown_writes_trigger(40);
        marks_options.set_level_zero_stop_writes_trigger(64);
        let existing = Db::list_cf(&db_options, path).unwrap_or_default();
        let db = Db::open_cf(&db_options, path, existing.iter()).map_err(err)?;
        for name in existing.iter().filter(|n| n.starts_with("t.") || n.starts_with("c.")) {
            db.drop_cf(name).map_err(err)?;
        }
        Ok(Self { db, cf_options, marks_options })
    }

    fn cf(&self, table: &str) -> Result<std::sync::Arc<rocksdb::BoundColumnFamily<'_>>, TierError> {
        self.db.cf_handle(&cf_name(table)).ok_or_else(|| TierError(format!("no column family for table {table:?}")))
    }

    fn marks_cf(&self, table: &str) -> Result<std::sync::Arc<rocksdb::BoundColumnFamily<'_>>, TierError> {
        self.db.cf_handle(&marks_name(table)).ok_or_else(|| TierError(format!("no change marks for table {table:?}")))
    }

    fn drop_if_present(&self, name: &str) -> Result<(), TierError> {
        if self.db.cf_handle(name).is_some() {
            self.db.drop_cf(name).map_err(err)?;
        }
        Ok(())
    }
}

impl ColdTier for RocksCold {
    fn open_table(&self, table: &str) -> Result<(), TierError> {
        if self.db.cf_handle(&cf_name(table)).is_none() {
            self.db.create_cf(cf_name(table), &self.cf_options).map_err(err)?;
        }
        if self.db.cf_handle(&marks_name(table)).is_none() {
            self.db.create_cf(marks_name(table), &self.marks_options).map_err(err)?;
        }
        Ok(())
    }

    fn drop_table(&self, table: &str) -> Result<(), TierError> {
        self.drop_if_present(&cf_name(table))?;
        self.drop_if_present(&marks_name(table))
    }

    fn get_many(&self, table: &str, keys: &[u64]) -> Result<Vec<Option<Vec<u8>>>, TierError> {
        let cf = self.cf(table)?;
        // Sorted input lets RocksDB walk each SST once for the whole batch.
        let mut order: Vec<u32> = (0..keys.len() as u32).collect();
        order.sort_unstable_by_key(|i| keys[*i as usize]);
        let encoded: Vec<[u8; 8]> = order.iter().map(|i| keys[*i as usize].to_be_bytes()).collect();
        let mut read = rocksdb::ReadOptions::default();
        read.fill_cache(false);
        let results = self.db.batched_multi_get_cf_opt(&cf, encoded.iter(), true, &read);
        let mut out = vec![None; keys.len()];
        for (i, result) in order.iter().zip(results) {
            out[*i as usize] = result.map_err(err)?.map(|slice| slice.to_vec());
        }
        Ok(out)
    }

    fn write(&self, table: &str, puts: &[(u64, Vec<u8>)], deletes: &[u64]) -> Result<(), TierError> {
        let cf = self.cf(table)?;
        let mut batch = WriteBatch::default();
        for (k, v) in puts {
            batch.put_cf(&cf, k.to_be_bytes(), v);
        }
        for k in deletes {
            batch.delete_cf(&cf, k.to_be_bytes());
        }
        let mut options = WriteOptions::default();
        options.disable_wal(true);
        self.db.write_opt(batch, &options).map_err(err)
    }

    fn scan(&self, table: &str, f: &mut dyn FnMut(u64, &[u8])) -> Result<(), TierError> {
        let cf = self.cf(table)?;
        for item in self.db.iterator_cf(&cf, rocksdb::IteratorMode::Start) {
            let (key, value) = item.map_err(err)?;
            let key: [u8; 8] =
                key.as_ref().try_into().map_err(|_| TierError(format!("bad key of {} bytes", key.len())))?;
            f(u64::from_be_bytes(key), &value);
        }
        Ok(())
    }

    fn count(&self, table: &str) -> Result<u64, TierError> {
        let cf = self.cf(table)?;
        Ok(self.db.property_int_value_cf(&cf, "rocksdb.estimate-num-keys").map_err(err)?.unwrap_or(0))
    }

    fn mark_changed(&self, table: &str, keys: &[u64]) -> Result<(), TierError> {
        let cf = self.marks_cf(table)?;
        let mut batch = WriteBatch::default();
        for k in keys {
            batch.put_cf(&cf, k.to_be_bytes(), []);
        }
        let mut options = WriteOptions::default();
        options.disable_wal(true);
        self.db.write_opt(batch, &options).map_err(err)
    }

    fn changed_keys(&self, table: &str, after: Option<u64>, limit: usize) -> Result<Vec<u64>, TierError> {
        let cf = self.marks_cf(table)?;
        let start = match after {
            None => 0u64,
            Some(u64::MAX) => return Ok(Vec::new()),
            Some(k) => k + 1,
        }
        .to_be_bytes();
        let mut keys = Vec::new();
        for item in self.db.iterator_cf(&cf, rocksdb::IteratorMode::From(&start, rocksdb::Direction::Forward)) {
            if keys.len() >= limit {
                break;
            }
            let (key, _) = item.map_err(err)?;
            let key: [u8; 8] =
                key.as_ref().try_into().map_err(|_| TierError(format!("bad change mark of {} bytes", key.len())))?;
            keys.push(u64::from_be_bytes(key));
        }
        Ok(keys)
    }

    fn memory_bytes(&self, table: &str) -> Result<(u64, u64), TierError> {
        let (mut readers, mut memtables) = (0, 0);
        for cf in [self.cf(table)?, self.marks_cf(table)?] {
            let int = |name: &str| self.db.property_int_value_cf(&cf, name).map(|v| v.unwrap_or(0)).map_err(err);
            readers += int("rocksdb.estimate-table-readers-mem")?;
            memtables += int("rocksdb.cur-size-all-mem-tables")?;
        }
        Ok((readers, memtables))
    }

    fn backlog(&self, tables: &[&str]) -> Result<ColdBacklog, TierError> {
        let db_int = |name: &str| self.db.property_int_value(name).map(|v| v.unwrap_or(0)).map_err(err);
        let mut backlog = ColdBacklog {
            running: db_int("rocksdb.num-running-compactions")? + db_int("rocksdb.num-running-flushes")?,
            writes_throttled: db_int("rocksdb.actual-delayed-write-rate")? > 0
                || db_int("rocksdb.is-write-stopped")? > 0,
            ..ColdBacklog::default()
        };
        for table in tables {
            for cf in [self.cf(table)?, self.marks_cf(table)?] {
                let int = |name: &str| self.db.property_int_value_cf(&cf, name).map(|v| v.unwrap_or(0)).map_err(err);
                backlog.l0_files += int("rocksdb.num-files-at-level0")?;
            }
        }
        Ok(backlog)
    }

    fn clear_changed(&self, table: &str) -> Result<(), TierError> {
        // Dropping the column family deletes its files at once; range deletes would leave
        // tombstones that the next scan of the marks has to step over.
        self.drop_if_present(&marks_name(table))?;
        self.db.create_cf(marks_name(table), &self.marks_options).map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_batches_scans_and_table_drops_and_reopen_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        let cold = RocksCold::open_empty(dir.path()).unwrap();
        cold.open_table("a").unwrap();
        cold.open_table("a").unwrap();
        cold.write("a", &[(5, vec![1, 2]), (1, vec![3]), (9, vec![4])], &[]).unwrap();
        cold.write("a", &[(7, vec![5])], &[9]).unwrap();
        assert_eq!(cold.get_many("a", &[9, 5, 3, 1]).unwrap(), vec![None, Some(vec![1, 2]), None, Some(vec![3])]);
        let mut seen = Vec::new();
        cold.scan("a", &mut |k, v| seen.push((k, v.to_vec()))).unwrap();
        assert_eq!(seen, vec![(1, vec![3]), (5, vec![1, 2]), (7, vec![5])]);
        assert!(cold.get_many("b", &[1]).is_err(), "unknown table");
        cold.drop_table("a").unwrap();
        cold.open_table("a").unwrap();
        assert_eq!(cold.get_many("a", &[5]).unwrap(), vec![None]);
        cold.write("a", &[(5, vec![1])], &[]).unwrap();
        drop(cold);
        let reopened = RocksCold::open_empty(dir.path()).unwrap();
        reopened.open_table("a").unwrap();
        assert_eq!(reopened.get_many("a", &[5]).unwrap(), vec![None]);
    }

    #[test]
    fn change_marks_page_in_key_order_clear_and_do_not_show_as_records() {
        let dir = tempfile::tempdir().unwrap();
        let cold = RocksCold::open_empty(dir.path()).unwrap();
        cold.open_table("a").unwrap();
        cold.write("a", &[(3, vec![1])], &[]).unwrap();
        cold.mark_changed("a", &[u64::MAX, 9, 3, 1 << 40]).unwrap();
        cold.mark_changed("a", &[9]).unwrap();
        assert_eq!(cold.changed_keys("a", None, 2).unwrap(), vec![3, 9]);
        assert_eq!(cold.changed_keys("a", Some(9), 10).unwrap(), vec![1 << 40, u64::MAX]);
        assert_eq!(cold.changed_keys("a", Some(u64::MAX), 10).unwrap(), Vec::<u64>::new());
        let mut records = Vec::new();
        cold.scan("a", &mut |k, _| records.push(k)).unwrap();
        assert_eq!(records, vec![3], "marks are not records");
        cold.clear_changed("a").unwrap();
        assert_eq!(cold.changed_keys("a", None, 10).unwrap(), Vec::<u64>::new());
        assert_eq!(cold.get_many("a", &[3]).unwrap(), vec![Some(vec![1])], "clearing marks keeps records");
        cold.mark_changed("a", &[4]).unwrap();
        cold.drop_table("a").unwrap();
        cold.open_table("a").unwrap();
        assert_eq!(cold.changed_keys("a", None, 10).unwrap(), Vec::<u64>::new(), "a dropped table's marks go too");
    }

    #[test]
    fn memory_counts_write_buffers_and_then_table_readers() {
        let dir = tempfile::tempdir().unwrap();
        let cold = RocksCold::open_empty(dir.path()).unwrap();
        cold.open_table("a").unwrap();
        let puts: Vec<(u64, Vec<u8>)> = (0..20_000u64).map(|k| (k, vec![7; 100])).collect();
        cold.write("a", &puts, &[]).unwrap();
        let (_, memtables) = cold.memory_bytes("a").unwrap();
        assert!(memtables > 2_000_000, "{memtables} bytes of write buffers for 2 MB of records");
        cold.db.flush_cf(&cold.cf("a").unwrap()).unwrap();
        let (readers, _) = cold.memory_bytes("a").unwrap();
        assert!(readers > 0, "a flushed file has an index and a filter in memory");
        assert!(cold.memory_bytes("b").is_err(), "unknown table");
    }

    #[test]
    fn backlog_counts_unmerged_files_and_ends_idle() {
        let dir = tempfile::tempdir().unwrap();
        let cold = RocksCold::open_empty(dir.path()).unwrap();
        cold.open_table("a").unwrap();
        assert_eq!(cold.backlog(&["a"]).unwrap().l0_files, 0, "nothing written yet");
        for round in 0..2u64 {
            cold.write("a", &[(round, vec![1; 10])], &[]).unwrap();
            cold.db.flush_cf(&cold.cf("a").unwrap()).unwrap();
        }
        // Below universal compaction's trigger (4 runs), the two flushed files stay unmerged.
        let mut backlog = cold.backlog(&["a"]).unwrap();
        assert_eq!(backlog.l0_files, 2);
        for _ in 0..500 {
            if backlog.running == 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
            backlog = cold.backlog(&["a"]).unwrap();
        }
        assert_eq!(backlog.running, 0, "flushes done, nothing to compact");
        assert!(!backlog.writes_throttled);
        assert!(cold.backlog(&["b"]).is_err(), "unknown table");
    }
}
