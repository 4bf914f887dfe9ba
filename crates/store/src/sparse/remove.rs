//! Removing rows: deletes by key and eviction by the table's TTL and min_l2 rules, in both
//! tiers, one shard locked at a time.

use std::sync::atomic::Ordering;

use super::SparseTable;
use crate::shard::RowMeta;
use crate::StoreError;

impl SparseTable {
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
}
