//! The shard map: virtual slots -> servers.
//!
//! Invariant: a key's slot never changes (`slot_of(key, num_slots)`); only slot ownership moves
//! when servers join or leave, so scaling never rehashes keys. Until the scheduler exists, maps
//! are built locally: one server owning every slot, or slots spread round-robin.

use ember_core::slot_of;

/// Default number of virtual slots.
pub const DEFAULT_SLOTS: u32 = 1024;

/// Which server owns each slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardMap {
    endpoints: Vec<String>,
    owners: Vec<u32>,
}

impl ShardMap {
    /// One server owns all [`DEFAULT_SLOTS`] slots.
    pub fn single(endpoint: impl Into<String>) -> Self {
        Self::round_robin(vec![endpoint.into()], DEFAULT_SLOTS).expect("one endpoint and non-zero slots")
    }

    /// `num_slots` slots spread round-robin over `endpoints`. None if either is empty.
    pub fn round_robin(endpoints: Vec<String>, num_slots: u32) -> Option<Self> {
        if endpoints.is_empty() || num_slots == 0 {
            return None;
        }
        let n = endpoints.len() as u32;
        Some(Self { endpoints, owners: (0..num_slots).map(|s| s % n).collect() })
    }

    /// A map from the scheduler's parts. None if empty or an owner is out of range.
    pub fn from_parts(endpoints: Vec<String>, owners: Vec<u32>) -> Option<Self> {
        let valid =
            !endpoints.is_empty() && !owners.is_empty() && owners.iter().all(|o| (*o as usize) < endpoints.len());
        valid.then_some(Self { endpoints, owners })
    }

    /// Server endpoints, indexed by server number.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// Number of virtual slots.
    pub fn num_slots(&self) -> u32 {
        self.owners.len() as u32
    }

    /// The server number that owns `key`.
    #[inline]
    pub fn server_of(&self, key: u64) -> usize {
        self.owners[slot_of(key, self.num_slots()) as usize] as usize
    }

    /// The server that holds a dense table (dense tables are placed whole, by name).
    pub fn server_of_name(&self, name: &str) -> usize {
        // FNV-1a over the name, then the same slot routing as keys.
        let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        self.server_of(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_spreads_keys_and_routes_stably() {
        let map = ShardMap::round_robin(vec!["a".into(), "b".into(), "c".into()], 1024).unwrap();
        let mut per = [0usize; 3];
        for key in 0..30_000u64 {
            per[map.server_of(key)] += 1;
            assert_eq!(map.server_of(key), map.server_of(key));
        }
        assert!(per.iter().all(|n| (9_000..11_000).contains(n)), "{per:?}");
        assert!(ShardMap::round_robin(vec![], 8).is_none());
        assert_eq!(ShardMap::single("x").server_of(u64::MAX), 0);
    }
}
