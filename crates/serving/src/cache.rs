//! A bounded cache of looked-up rows, per table, with a TTL.
//!
//! Sharded by key hash (16 shards, one lock each, taken once per request and shard); time is an
//! argument so tests control it. Invariants: a row older than the TTL is never returned; a shard
//! never holds more than its share of the row bound (when full, expired rows go first, then
//! arbitrary ones: hash-map order is as good as random here and needs no bookkeeping on hits).

use std::time::{Duration, Instant};

use ember_core::{mix64, U64Map};
use parking_lot::Mutex;

const SHARDS: usize = 16;

struct Entry {
    values: Box<[f32]>,
    at: Instant,
}

/// Cached rows of one table.
pub struct TableCache {
    dim: usize,
    ttl: Duration,
    per_shard: usize,
    shards: Vec<Mutex<U64Map<Entry>>>,
}

fn shard_of(key: u64) -> usize {
    (mix64(key) % SHARDS as u64) as usize
}

impl TableCache {
    /// A cache of rows of `dim` values, at most `max_rows` of them, each used for `ttl`.
    pub fn new(dim: usize, max_rows: usize, ttl: Duration) -> Self {
        Self {
            dim,
            ttl,
            per_shard: max_rows.div_ceil(SHARDS).max(1),
            shards: (0..SHARDS).map(|_| Mutex::new(U64Map::default())).collect(),
        }
    }

    /// Row width.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Copies the fresh cached rows of `keys` into `out` (`keys.len() * dim`) and returns the
    /// positions of the keys it did not have.
    pub fn get(&self, keys: &[u64], now: Instant, out: &mut [f32]) -> Vec<usize> {
        if self.ttl.is_zero() {
            return (0..keys.len()).collect();
        }
        let mut by_shard: Vec<Vec<usize>> = vec![Vec::new(); SHARDS];
        for (i, k) in keys.iter().enumerate() {
            by_shard[shard_of(*k)].push(i);
        }
        let mut misses = Vec::new();
        for (shard, positions) in self.shards.iter().zip(by_shard) {
            if positions.is_empty() {
                continue;
            }
            let map = shard.lock();
            for i in positions {
                match map.get(&keys[i]) {
                    Some(e) if now.saturating_duration_since(e.at) < self.ttl => {
                        out[i * self.dim..(i + 1) * self.dim].copy_from_slice(&e.values);
                    }
                    _ => misses.push(i),
                }
            }
        }
        misses
    }

    /// Caches `values` (`keys.len() * dim`) for `keys`, read at `now`.
    pub fn insert(&self, keys: &[u64], values: &[f32], now: Instant) {
        if self.ttl.is_zero() {
            return;
        }
        let mut by_shard: Vec<Vec<usize>> = vec![Vec::new(); SHARDS];
        for (i, k) in keys.iter().enumerate() {
            by_shard[shard_of(*k)].push(i);
        }
        for (shard, positions) in self.shards.iter().zip(by_shard) {
            if positions.is_empty() {
                continue;
            }
            let mut map = shard.lock();
            if map.len() + positions.len() > self.per_shard {
                map.retain(|_, e| now.saturating_duration_since(e.at) < self.ttl);
                let over = (map.len() + positions.len()).saturating_sub(self.per_shard);
                if over > 0 {
                    let victims: Vec<u64> = map.keys().take(over.max(self.per_shard / 8)).copied().collect();
                    for v in victims {
                        map.remove(&v);
                    }
                }
            }
            for i in positions.into_iter().take(self.per_shard) {
                let values = values[i * self.dim..(i + 1) * self.dim].into();
                map.insert(keys[i], Entry { values, at: now });
            }
        }
    }

    /// Rows held (fresh or not).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// True when no row is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_served_until_the_ttl_and_then_missed() {
        let cache = TableCache::new(2, 100, Duration::from_millis(500));
        let t0 = Instant::now();
        cache.insert(&[1, 2], &[1.0, 1.5, 2.0, 2.5], t0);
        let mut out = vec![0.0; 6];
        assert_eq!(cache.get(&[2, 3, 1], t0 + Duration::from_millis(499), &mut out), vec![1]);
        assert_eq!(out, vec![2.0, 2.5, 0.0, 0.0, 1.0, 1.5]);
        let mut out = vec![0.0; 4];
        assert_eq!(cache.get(&[1, 2], t0 + Duration::from_millis(500), &mut out), vec![0, 1], "expired at the TTL");
        cache.insert(&[1], &[9.0, 9.5], t0 + Duration::from_millis(600));
        assert_eq!(cache.get(&[1], t0 + Duration::from_millis(700), &mut out[..2]), Vec::<usize>::new());
        assert_eq!(&out[..2], &[9.0, 9.5], "a re-read row replaces the stale one");
    }

    #[test]
    fn the_row_bound_holds() {
        let cache = TableCache::new(1, 64, Duration::from_secs(60));
        let t0 = Instant::now();
        for batch in 0..100u64 {
            let keys: Vec<u64> = (batch * 50..batch * 50 + 50).collect();
            cache.insert(&keys, &[1.0; 50], t0);
            assert!(cache.len() <= 64, "{} rows cached", cache.len());
        }
        assert!(!cache.is_empty());
    }

    #[test]
    fn a_zero_ttl_caches_nothing() {
        let cache = TableCache::new(1, 64, Duration::ZERO);
        let t0 = Instant::now();
        cache.insert(&[1], &[1.0], t0);
        assert_eq!(cache.get(&[1], t0, &mut [0.0]), vec![0]);
        assert!(cache.is_empty());
    }
}
