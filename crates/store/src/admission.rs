//! Admission counts: a count-min sketch per internal shard, so counting a batch's keys needs no
//! lock beyond the shard's own.
//!
//! A count-min sketch never under-counts: a key is admitted no later than its `min_count`-th
//! sighting, and hash collisions can only admit it earlier. Counters are bytes and saturate at
//! 255, the largest `min_count` a spec accepts.

use ember_core::mix64;

/// Rows of counters, each indexed by an independent hash of the key.
const DEPTH: usize = 4;
/// Counters per row in one shard (power of two). 64 shards x 4 x 8192 bytes = 2 MiB per table.
pub const WIDTH: usize = 8192;

/// One shard's sketch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountMin {
    counters: Vec<u8>,
}

impl Default for CountMin {
    fn default() -> Self {
        Self { counters: vec![0; DEPTH * WIDTH] }
    }
}

const SEEDS: [u64; DEPTH] =
    [0x9e37_79b9_7f4a_7c15, 0xc2b2_ae3d_27d4_eb4f, 0x1656_67b1_9e37_79f9, 0x27d4_eb2f_1656_67c5];

impl CountMin {
    #[inline]
    fn slot(row: usize, key: u64) -> usize {
        row * WIDTH + (mix64(key ^ SEEDS[row]) as usize & (WIDTH - 1))
    }

    /// Counts one sighting of `key`; returns its (over-)estimated count including this one.
    pub fn increment(&mut self, key: u64) -> u32 {
        // Conservative update: raise only the counters at the current minimum, which keeps the
        // over-count of frequent colliding keys down without ever under-counting.
        let slots: [usize; DEPTH] = std::array::from_fn(|row| Self::slot(row, key));
        let min = slots.iter().map(|s| self.counters[*s]).min().unwrap_or(0);
        let next = min.saturating_add(1);
        for s in slots {
            if self.counters[s] < next {
                self.counters[s] = next;
            }
        }
        u32::from(next)
    }

    /// The estimated count of `key`.
    #[cfg(test)]
    pub fn estimate(&self, key: u64) -> u32 {
        (0..DEPTH).map(|row| u32::from(self.counters[Self::slot(row, key)])).min().unwrap_or(0)
    }

    /// The raw counters (checkpoints).
    pub fn as_bytes(&self) -> &[u8] {
        &self.counters
    }

    /// A sketch from raw counters; `None` if the size is not this build's.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        (bytes.len() == DEPTH * WIDTH).then(|| Self { counters: bytes.to_vec() })
    }

    /// Bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.counters.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_never_fall_short_and_saturate() {
        let mut s = CountMin::default();
        for i in 1..=5 {
            assert!(s.increment(42) >= i);
        }
        assert!(s.estimate(42) >= 5);
        // Many other keys: 42's estimate may only grow, and most keys stay exact.
        let mut exact = 0;
        for k in 1000..3000u64 {
            if s.increment(k) == 1 {
                exact += 1;
            }
        }
        assert!(s.estimate(42) >= 5);
        assert!(exact > 1900, "only {exact} of 2000 fresh keys counted exactly");
        for _ in 0..300 {
            s.increment(7);
        }
        assert_eq!(s.estimate(7), 255);
        let copy = CountMin::from_bytes(s.as_bytes()).unwrap();
        assert_eq!(copy, s);
        assert!(CountMin::from_bytes(&[0; 10]).is_none());
    }
}
