//! Row deltas: a subscriber that applies `changes_since` (or a snapshot when told to resync)
//! after every cut holds exactly the store's rows, whatever mix of creates, pushes, deletes,
//! evictions and demotions happened in between, and however small the delta log.

use std::collections::HashMap;
use std::sync::Arc;

use ember_core::{DemotePolicy, FeaturePolicy, Initializer, Optimizer, TableSpec};
use proptest::prelude::*;

use crate::{DeltaRows, MemCold, Store, StoreConfig};

const KEYS: u64 = 300;
const DIM: usize = 4;

fn spec() -> TableSpec {
    TableSpec::sparse(
        "t",
        DIM as u32,
        Optimizer::Adagrad { learning_rate: 0.1, initial_accumulator: 0.1, epsilon: 1e-8 },
    )
    .with_initializer(Initializer::Normal { mean: 0.0, stddev: 0.1 }, 3)
    .with_policy(FeaturePolicy { demote: DemotePolicy::Lru, ..Default::default() })
}

fn store(log_keys: usize, tiered: bool) -> Store {
    let config = StoreConfig { shard_bits: 2, max_batch_keys: 10_000, delta_log_keys: log_keys };
    let store = if tiered { Store::tiered(config, Arc::new(MemCold::default()), 1 << 30) } else { Store::new(config) };
    store.create_table(spec(), None).unwrap();
    store.deltas().activate();
    store
}

/// A replica of one table: key -> weights, and the cut it has applied.
#[derive(Default)]
struct Follower {
    rows: HashMap<u64, Vec<f32>>,
    seq: u64,
    snapshots: usize,
}

impl Follower {
    fn apply(&mut self, delta: DeltaRows) {
        for (i, key) in delta.keys.iter().enumerate() {
            self.rows.insert(*key, delta.values[i * DIM..(i + 1) * DIM].to_vec());
        }
        for key in delta.deleted {
            self.rows.remove(&key);
        }
    }

    /// Cuts, then catches up to the cut: incrementally if the log reaches back, else by snapshot.
    fn sync(&mut self, store: &Store, keep: &dyn Fn(u64) -> bool) {
        let table = store.sparse("t").unwrap();
        let cut = store.deltas().cut();
        match table.changes_since(self.seq, keep).unwrap() {
            Some(delta) if self.seq > 0 => self.apply(delta),
            _ => {
                self.rows.clear();
                self.snapshots += 1;
                table
                    .snapshot(keep, 7, &mut |batch| {
                        self.apply(batch);
                        true
                    })
                    .unwrap();
            }
        }
        self.seq = cut;
    }

    /// Every key `keep`s: present here exactly when the store has a row, with the same weights.
    fn assert_equals(&self, store: &Store, keep: &dyn Fn(u64) -> bool) {
        let all: Vec<u64> = (0..KEYS).filter(|k| keep(*k)).collect();
        let rows = store.lookup("t", &all).unwrap();
        for (i, key) in all.iter().enumerate() {
            let want = (!rows.missing[i]).then(|| rows.values[i * DIM..(i + 1) * DIM].to_vec());
            assert_eq!(self.rows.get(key), want.as_ref(), "key {key}");
        }
        assert!(self.rows.keys().all(|k| keep(*k)), "only the kept keys");
    }
}

#[derive(Debug, Clone)]
enum Op {
    Pull(Vec<u64>),
    Push(Vec<u64>, i8),
    Delete(Vec<u64>),
    Demote(u8),
    Sync,
}

fn keys() -> impl Strategy<Value = Vec<u64>> {
    prop::collection::vec(0..KEYS, 1..60)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => keys().prop_map(Op::Pull),
        4 => (keys(), any::<i8>()).prop_map(|(k, g)| Op::Push(k, g)),
        1 => keys().prop_map(Op::Delete),
        1 => (1u8..=100).prop_map(Op::Demote),
        2 => Just(Op::Sync),
    ]
}

fn run(ops: &[Op], log_keys: usize, tiered: bool, keep: &dyn Fn(u64) -> bool) -> Follower {
    let store = store(log_keys, tiered);
    let mut follower = Follower::default();
    for op in ops {
        match op {
            Op::Pull(k) => drop(store.pull("t", k).unwrap()),
            Op::Push(k, g) => {
                let grads: Vec<u8> =
                    (0..k.len() * DIM).flat_map(|i| (f32::from(*g) * 0.01 + i as f32 * 1e-3).to_le_bytes()).collect();
                store.push("t", k, &grads).unwrap();
            }
            Op::Delete(k) => drop(store.delete_keys("t", k).unwrap()),
            Op::Demote(pct) if tiered => drop(store.sparse("t").unwrap().demote(f64::from(*pct) / 100.0).unwrap()),
            Op::Demote(_) => {}
            Op::Sync => {
                follower.sync(&store, keep);
                follower.assert_equals(&store, keep);
            }
        }
    }
    follower.sync(&store, keep);
    follower.assert_equals(&store, keep);
    follower
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn a_follower_of_the_deltas_holds_the_stores_rows(
        ops in prop::collection::vec(op(), 1..60),
        tiered in any::<bool>(),
        tiny_log in any::<bool>(),
        odd_only in any::<bool>(),
    ) {
        // A tiny log (64 entries a shard) forces compactions and resyncs on the way.
        let log_keys = if tiny_log { 4 * 64 } else { 1 << 16 };
        let keep: &dyn Fn(u64) -> bool = if odd_only { &|k| k % 2 == 1 } else { &|_| true };
        run(&ops, log_keys, tiered, keep);
    }
}

#[test]
fn a_follower_only_resyncs_when_it_falls_behind_the_log() {
    let ops: Vec<Op> = (0..40u64).flat_map(|i| [Op::Push((i * 5..i * 5 + 20).collect(), 3), Op::Sync]).collect();
    let roomy = run(&ops, 1 << 16, false, &|_| true);
    assert_eq!(roomy.snapshots, 1, "the first sync is the only snapshot");
    // 200 new keys a round (one entry each: created and updated before the same cut) against
    // 16 entries a shard.
    let cramped: Vec<Op> =
        (0..10u64).flat_map(|i| [Op::Push((i * 200..i * 200 + 200).collect(), 1), Op::Sync]).collect();
    let behind = run(&cramped, 4 * 16, false, &|_| true);
    assert!(behind.snapshots > 1, "a follower behind the log resyncs ({} snapshots)", behind.snapshots);
}

#[test]
fn deltas_cut_during_concurrent_pushes_converge_to_the_stores_rows() {
    let store = Arc::new(store(1 << 16, false));
    let mut follower = Follower::default();
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        for t in 0..2u64 {
            let store = Arc::clone(&store);
            s.spawn(move || {
                for p in 0..400u64 {
                    let keys: Vec<u64> = (0..32).map(|i| (t * 97 + p * 13 + i * 7) % KEYS).collect();
                    let grads: Vec<u8> = (0..keys.len() * DIM).flat_map(|i| (i as f32 * 1e-3).to_le_bytes()).collect();
                    store.push("t", &keys, &grads).unwrap();
                    if p % 50 == 0 {
                        store.delete_keys("t", &keys[..4]).unwrap();
                    }
                }
            });
        }
        s.spawn(|| {
            while !done.load(std::sync::atomic::Ordering::Acquire) {
                follower.sync(&store, &|_| true);
            }
        });
        // The pushers end with the scope's first two threads; then the follower stops.
        std::thread::sleep(std::time::Duration::from_millis(1));
        while Arc::strong_count(&store) > 1 {
            std::thread::yield_now();
        }
        done.store(true, std::sync::atomic::Ordering::Release);
    });
    follower.sync(&store, &|_| true);
    follower.assert_equals(&store, &|_| true);
    assert_eq!(follower.snapshots, 1);
}
