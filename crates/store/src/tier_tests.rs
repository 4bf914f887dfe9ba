//! Tier transparency: a store with a tiny DRAM budget behaves exactly like an all-DRAM store,
//! whatever mix of pulls, lookups, pushes, deletes, demotions and checkpoints it sees.

use std::sync::Arc;

use ember_core::{DemotePolicy, FeaturePolicy, Initializer, Optimizer, TableSpec};
use proptest::prelude::*;

use crate::{CheckpointKind, Checkpointer, ColdTier, MemCold, Store, StoreConfig};

fn le(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

const KEYS: u64 = 200;
const DIM: usize = 3;

fn spec(demote: DemotePolicy) -> TableSpec {
    // Adam: its update depends on each row's update count, so a row that lost or duplicated its
    // metadata on the way through the cold tier would diverge at once.
    TableSpec::sparse("t", DIM as u32, Optimizer::Adam { learning_rate: 0.01, beta1: 0.9, beta2: 0.999, epsilon: 1e-8 })
        .with_initializer(Initializer::Normal { mean: 0.0, stddev: 0.1 }, 5)
        .with_policy(FeaturePolicy { demote, ..Default::default() })
}

fn config() -> StoreConfig {
    StoreConfig { shard_bits: 2, max_batch_keys: 10_000, ..StoreConfig::default() }
}

/// A store whose budget holds about 20 rows of the 200-key space.
fn tiered(cold: Arc<dyn ColdTier>, demote: DemotePolicy) -> Store {
    let store = Store::tiered(config(), cold, 20 * 80);
    store.create_table(spec(demote), None).unwrap();
    store
}

/// A store over `cold` with a budget the tests never reach: only their own demotions move rows.
fn unpressed(cold: Arc<dyn ColdTier>) -> Store {
    let store = Store::tiered(config(), cold, 1 << 30);
    store.create_table(spec(DemotePolicy::Lru), None).unwrap();
    store
}

/// Restores the checkpoints in `dir` into a fresh store and checks it serves `keys` as `store` does.
fn assert_restores_as(dir: &std::path::Path, store: &Store, keys: &[u64]) {
    let restored = Store::tiered(config(), Arc::new(MemCold::default()), 1 << 30);
    Checkpointer::open(dir).unwrap().restore(&restored, crate::IfNoIntactChain::Refuse).unwrap();
    assert_eq!(restored.lookup("t", keys).unwrap(), store.lookup("t", keys).unwrap());
}

fn plain(demote: DemotePolicy) -> Store {
    let store = Store::new(config());
    store.create_table(spec(demote), None).unwrap();
    store
}

#[derive(Debug, Clone)]
enum Op {
    Pull(Vec<u64>),
    Lookup(Vec<u64>),
    Push(Vec<u64>, i8),
    Delete(Vec<u64>),
    Demote(u8),
    CheckpointAndRestore(bool),
}

fn keys() -> impl Strategy<Value = Vec<u64>> {
    prop::collection::vec(0..KEYS, 1..40)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => keys().prop_map(Op::Pull),
        2 => keys().prop_map(Op::Lookup),
        4 => (keys(), any::<i8>()).prop_map(|(k, g)| Op::Push(k, g)),
        1 => keys().prop_map(Op::Delete),
        2 => (1u8..=100).prop_map(Op::Demote),
        1 => any::<bool>().prop_map(Op::CheckpointAndRestore),
    ]
}

/// Every key's lookup (value and missing flag) in both stores.
fn assert_same_rows(a: &Store, b: &Store) {
    let all: Vec<u64> = (0..KEYS).collect();
    let (ra, rb) = (a.lookup("t", &all).unwrap(), b.lookup("t", &all).unwrap());
    assert_eq!(ra.missing, rb.missing, "which keys have rows");
    assert_eq!(ra.values, rb.values, "row values");
}

fn run(ops: &[Op], cold: Arc<dyn ColdTier>, demote: DemotePolicy) {
    let dir = tempfile::tempdir().unwrap();
    let mut tiered_store = tiered(Arc::clone(&cold), demote);
    let reference = plain(demote);
    let mut checkpoints = Checkpointer::open(dir.path()).unwrap();
    for op in ops {
        match op {
            Op::Pull(k) => {
                assert_eq!(tiered_store.pull("t", k).unwrap().values, reference.pull("t", k).unwrap().values)
            }
            Op::Lookup(k) => assert_eq!(tiered_store.lookup("t", k).unwrap(), reference.lookup("t", k).unwrap()),
            Op::Push(k, g) => {
                let grads: Vec<f32> = (0..k.len() * DIM).map(|i| f32::from(*g) * 0.01 + i as f32 * 1e-3).collect();
                let (a, b) =
                    (tiered_store.push("t", k, &le(&grads)).unwrap(), reference.push("t", k, &le(&grads)).unwrap());
                assert_eq!(a.rows_updated, b.rows_updated);
            }
            Op::Delete(k) => {
                assert_eq!(tiered_store.delete_keys("t", k).unwrap(), reference.delete_keys("t", k).unwrap())
            }
            Op::Demote(pct) => {
                tiered_store.sparse("t").unwrap().demote(f64::from(*pct) / 100.0).unwrap();
            }
            Op::CheckpointAndRestore(full) => {
                let kind = if *full { CheckpointKind::Full } else { CheckpointKind::Incremental };
                checkpoints.write(&tiered_store, kind, 0).unwrap();
                // A restart: a fresh cold tier and store, restored from the files.
                let fresh: Arc<dyn ColdTier> = Arc::new(MemCold::default());
                tiered_store = Store::tiered(config(), fresh, 20 * 80);
                checkpoints = Checkpointer::open(dir.path()).unwrap();
                checkpoints.restore(&tiered_store, crate::IfNoIntactChain::Refuse).unwrap();
            }
        }
        tiered_store.enforce_budget().unwrap();
    }
    assert_same_rows(&tiered_store, &reference);
    assert!(tiered_store.hot_bytes() <= 20 * 80, "over budget: {} bytes hot", tiered_store.hot_bytes());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn a_tiny_budget_store_matches_an_all_dram_store(ops in prop::collection::vec(op(), 1..60), lfu in any::<bool>()) {
        let demote = if lfu { DemotePolicy::Lfu } else { DemotePolicy::Lru };
        run(&ops, Arc::new(MemCold::default()), demote);
    }
}

#[cfg(feature = "rocksdb")]
#[test]
fn the_rocksdb_tier_matches_an_all_dram_store() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    for _ in 0..8 {
        let ops = prop::collection::vec(op(), 20..60).new_tree(&mut runner).unwrap().current();
        let dir = tempfile::tempdir().unwrap();
        let cold = Arc::new(crate::tier::RocksCold::open_empty(dir.path()).unwrap());
        run(&ops, cold, DemotePolicy::Lru);
    }
}

#[test]
fn rows_are_never_lost_while_demotions_race_pushes() {
    // Pushes from several threads while another thread demotes half of every shard over and
    // over: SGD with exact (power-of-two) steps makes the final rows order-independent, so any
    // lost, duplicated or re-initialized row shows up as a wrong value.
    let store = Arc::new(Store::tiered(config(), Arc::new(MemCold::default()), 1));
    let spec = TableSpec::sparse("t", 2, Optimizer::Sgd { learning_rate: 0.5 });
    store.create_table(spec, None).unwrap();
    let (threads, pushes) = (4u64, 300u64);
    store.pull("t", &(0..64).collect::<Vec<u64>>()).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The workers start only after a first demotion, so the race is exercised however the OS
    // schedules the threads (on a loaded CI machine the demoter could otherwise start last).
    let first_demotion = Arc::new(std::sync::Barrier::new(threads as usize + 1));
    std::thread::scope(|s| {
        let demoter = {
            let (store, stop, first) = (Arc::clone(&store), Arc::clone(&stop), Arc::clone(&first_demotion));
            s.spawn(move || {
                let table = store.sparse("t").unwrap();
                table.demote(0.5).unwrap();
                first.wait();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    table.demote(0.5).unwrap();
                }
            })
        };
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (store, first) = (Arc::clone(&store), Arc::clone(&first_demotion));
                s.spawn(move || {
                    first.wait();
                    for p in 0..pushes {
                        let keys: Vec<u64> = (0..16).map(|i| (t * 7 + p * 3 + i) % 64).collect();
                        store.push("t", &keys, &le(&vec![0.25; keys.len() * 2])).unwrap();
                        store.pull("t", &keys).unwrap();
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        demoter.join().unwrap();
    });
    let mut touches = vec![0u32; 64];
    for t in 0..threads {
        for p in 0..pushes {
            for i in 0..16 {
                touches[((t * 7 + p * 3 + i) % 64) as usize] += 1;
            }
        }
    }
    let all: Vec<u64> = (0..64).collect();
    let rows = store.lookup("t", &all).unwrap();
    for (k, touched) in touches.iter().enumerate() {
        let expected = -0.125 * *touched as f32;
        assert_eq!(&rows.values[k * 2..k * 2 + 2], &[expected, expected], "key {k}");
    }
    let stats = store.sparse("t").unwrap().stats().tier;
    assert!(stats.demoted > 0 && stats.promoted > 0, "{stats:?}");
}

/// A cold tier for tests: an in-memory one that counts the records written to it, can run a
/// hook once right after a read (a way to put another request between a request's cold read and
/// its promotion), and can fail writes.
#[derive(Default)]
struct TestCold {
    inner: MemCold,
    puts: std::sync::atomic::AtomicU64,
    hook: parking_lot::Mutex<Option<Box<dyn FnOnce() + Send>>>,
    /// Record writes that succeed before the next ones fail (`None`: all succeed).
    writes_left: parking_lot::Mutex<Option<usize>>,
}

impl std::fmt::Debug for TestCold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TestCold")
    }
}

impl ColdTier for TestCold {
    fn open_table(&self, table: &str) -> Result<(), crate::TierError> {
        self.inner.open_table(table)
    }
    fn drop_table(&self, table: &str) -> Result<(), crate::TierError> {
        self.inner.drop_table(table)
    }
    fn get_many(&self, table: &str, keys: &[u64]) -> Result<Vec<Option<Vec<u8>>>, crate::TierError> {
        let records = self.inner.get_many(table, keys);
        let hook = self.hook.lock().take();
        if let Some(hook) = hook {
            hook();
        }
        records
    }
    fn write(&self, table: &str, puts: &[(u64, Vec<u8>)], deletes: &[u64]) -> Result<(), crate::TierError> {
        if let Some(left) = self.writes_left.lock().as_mut() {
            if *left == 0 {
                return Err(crate::TierError("disk full (test)".into()));
            }
            *left -= 1;
        }
        self.puts.fetch_add(puts.len() as u64, std::sync::atomic::Ordering::Relaxed);
        self.inner.write(table, puts, deletes)
    }
    fn scan(&self, table: &str, f: &mut dyn FnMut(u64, &[u8])) -> Result<(), crate::TierError> {
        self.inner.scan(table, f)
    }
    fn count(&self, table: &str) -> Result<u64, crate::TierError> {
        self.inner.count(table)
    }
    fn mark_changed(&self, table: &str, keys: &[u64]) -> Result<(), crate::TierError> {
        self.inner.mark_changed(table, keys)
    }
    fn changed_keys(&self, table: &str, after: Option<u64>, limit: usize) -> Result<Vec<u64>, crate::TierError> {
        self.inner.changed_keys(table, after, limit)
    }
    fn clear_changed(&self, table: &str) -> Result<(), crate::TierError> {
        self.inner.clear_changed(table)
    }
}

#[test]
fn a_demotion_that_fails_halfway_leaves_no_changed_row_unmarked() {
    let cold = Arc::new(TestCold::default());
    let store = unpressed(Arc::clone(&cold) as Arc<dyn ColdTier>);
    let table = store.sparse("t").unwrap();
    let keys: Vec<u64> = (0..KEYS).collect();
    store.pull("t", &keys).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let checkpoints = Checkpointer::open(dir.path()).unwrap();
    checkpoints.write(&store, CheckpointKind::Full, 0).unwrap();
    store.push("t", &keys, &le(&vec![0.5; keys.len() * DIM])).unwrap();
    // The first shard's rows are written and leave DRAM; the second shard's write fails.
    *cold.writes_left.lock() = Some(1);
    assert!(table.demote(1.0).is_err());
    assert!(table.hot_rows() < KEYS, "part of the round happened");
    *cold.writes_left.lock() = None;
    checkpoints.write(&store, CheckpointKind::Incremental, 1).unwrap();
    assert_restores_as(dir.path(), &store, &keys);
}

#[test]
fn a_row_deleted_between_a_pulls_cold_read_and_its_promotion_stays_deleted() {
    let cold = Arc::new(TestCold::default());
    let store = Arc::new(unpressed(Arc::clone(&cold) as Arc<dyn ColdTier>));
    let reference = plain(DemotePolicy::Lru);
    let table = store.sparse("t").unwrap();
    store.pull("t", &[7]).unwrap();
    store.push("t", &[7], &le(&[0.5; DIM])).unwrap();
    assert_eq!(table.demote(1.0).unwrap(), 1);
    // The pull reads key 7's record; before it promotes it, a delete removes the row.
    let deleter = Arc::downgrade(&store);
    *cold.hook.lock() = Some(Box::new(move || {
        deleter.upgrade().unwrap().delete_keys("t", &[7]).unwrap();
    }));
    let pulled = store.pull("t", &[7]).unwrap().values;
    assert_eq!(pulled, reference.pull("t", &[7]).unwrap().values, "a fresh row, not the deleted one");
    // And a full checkpoint holds the row the store serves.
    let dir = tempfile::tempdir().unwrap();
    Checkpointer::open(dir.path()).unwrap().write(&store, CheckpointKind::Full, 0).unwrap();
    assert_restores_as(dir.path(), &store, &[7]);
}

#[test]
fn demoting_a_row_only_read_since_its_promotion_writes_nothing() {
    let cold = Arc::new(TestCold::default());
    let store = unpressed(Arc::clone(&cold) as Arc<dyn ColdTier>);
    let table = store.sparse("t").unwrap();
    let written = || cold.puts.load(std::sync::atomic::Ordering::Relaxed);
    let keys: Vec<u64> = (0..50).collect();
    let created = store.pull("t", &keys).unwrap().values;
    assert_eq!(table.demote(1.0).unwrap(), 50);
    assert_eq!(written(), 50, "new rows have no record yet");
    // Promoted by a pull, then demoted again: the records on disk are still the rows.
    assert_eq!(store.pull("t", &keys).unwrap().values, created);
    assert_eq!(table.demote(1.0).unwrap(), 50);
    assert_eq!(written(), 50, "clean rows leave DRAM without a write");
    // A push dirties the rows it updates; only those are written at the next demotion.
    store.pull("t", &keys).unwrap();
    store.push("t", &keys[..5], &le(&[0.5; 5 * DIM])).unwrap();
    assert_eq!(table.demote(1.0).unwrap(), 50);
    assert_eq!(written(), 55);
    let after = store.lookup("t", &keys).unwrap().values;
    assert_eq!(after[5 * DIM..], created[5 * DIM..], "untouched rows as created");
    assert_ne!(after[..5 * DIM], created[..5 * DIM], "pushed rows carry their update");
    let reference = plain(DemotePolicy::Lru);
    reference.pull("t", &keys).unwrap();
    reference.push("t", &keys[..5], &le(&[0.5; 5 * DIM])).unwrap();
    assert_eq!(after, reference.lookup("t", &keys).unwrap().values);
}

#[test]
fn a_full_checkpoint_writes_a_row_in_both_tiers_once() {
    let store = unpressed(Arc::new(MemCold::default()));
    let table = store.sparse("t").unwrap();
    let keys: Vec<u64> = (0..50).collect();
    store.pull("t", &keys).unwrap();
    assert_eq!(table.demote(1.0).unwrap(), 50);
    // Back in DRAM with their records still on disk: 40 clean, 10 dirtied by a push.
    store.pull("t", &keys).unwrap();
    store.push("t", &keys[..10], &le(&[0.5; 10 * DIM])).unwrap();
    store.pull("t", &(50..60).collect::<Vec<u64>>()).unwrap(); // new rows: DRAM only
    let dir = tempfile::tempdir().unwrap();
    let info = Checkpointer::open(dir.path()).unwrap().write(&store, CheckpointKind::Full, 0).unwrap();
    // 50 cold records, the 10 dirty rows again (their newer values win on restore), 10 new rows;
    // the 40 clean rows are their cold records and are not written twice.
    assert_eq!(info.rows, 70);
    let all: Vec<u64> = (0..60).collect();
    assert_restores_as(dir.path(), &store, &all);
}

#[test]
fn an_incremental_holds_rows_that_changed_and_left_dram_and_no_others() {
    let cold = Arc::new(TestCold::default());
    let store = unpressed(Arc::clone(&cold) as Arc<dyn ColdTier>);
    let table = store.sparse("t").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let checkpoints = Checkpointer::open(dir.path()).unwrap();
    store.pull("t", &(0..40).collect::<Vec<u64>>()).unwrap();
    checkpoints.write(&store, CheckpointKind::Full, 0).unwrap();
    // Changed, then demoted: 0..10 stay cold, 10..20 come back by a pull (clean, unchanged since),
    // 20..25 are deleted while cold. 30..40 are demoted unchanged.
    store.push("t", &(0..25).collect::<Vec<u64>>(), &le(&[0.25; 25 * DIM])).unwrap();
    assert_eq!(table.demote(1.0).unwrap(), 40);
    let marked = cold.changed_keys("t", None, 100).unwrap();
    assert_eq!(marked, (0..25).collect::<Vec<u64>>(), "only rows with changes are marked");
    store.pull("t", &(10..20).collect::<Vec<u64>>()).unwrap();
    store.delete_keys("t", &(20..25).collect::<Vec<u64>>()).unwrap();
    let info = checkpoints.write(&store, CheckpointKind::Incremental, 1).unwrap();
    assert_eq!((info.rows, info.deleted), (20, 5), "{info:?}");
    assert!(cold.changed_keys("t", None, 100).unwrap().is_empty(), "the checkpoint took the marks");
    assert_eq!(checkpoints.write(&store, CheckpointKind::Incremental, 2).unwrap().rows, 0);

    let all: Vec<u64> = (0..40).collect();
    assert_restores_as(dir.path(), &store, &all);
}

#[test]
fn requests_that_outrun_demotion_demote_before_they_return() {
    // No background demotion at all (as when it stalls): the hot tier still never passes the
    // hard limit by more than the last request's own rows.
    let budget = 20 * 80;
    let store = Store::tiered(config(), Arc::new(MemCold::default()), budget);
    store.create_table(spec(DemotePolicy::Lru), None).unwrap();
    let row = store.sparse("t").unwrap().row_bytes();
    let batch = 10u64;
    for start in (0..KEYS).step_by(batch as usize) {
        let keys: Vec<u64> = (start..start + batch).collect();
        if start % 20 == 0 {
            store.pull("t", &keys).unwrap();
        } else {
            store.push("t", &keys, &le(&vec![0.1; keys.len() * DIM])).unwrap();
        }
        let hot = store.hot_bytes();
        assert!(hot as f64 <= budget as f64 * crate::HOT_HARD_LIMIT + (batch * row) as f64, "{hot} bytes hot");
    }
    let stats = store.sparse("t").unwrap().stats().tier;
    assert!(stats.demoted >= KEYS - budget / row, "{stats:?}");
    assert_eq!(store.lookup("t", &(0..KEYS).collect::<Vec<u64>>()).unwrap().missing, vec![false; KEYS as usize]);
}

#[test]
fn requests_under_pressure_drop_clean_rows_instead_of_waiting_for_a_checkpoint() {
    let budget = 20 * 80;
    let store = Arc::new(Store::tiered(config(), Arc::new(MemCold::default()), budget));
    store.create_table(spec(DemotePolicy::Lru), None).unwrap();
    let reference = plain(DemotePolicy::Lru);
    let table = store.sparse("t").unwrap();
    let row = table.row_bytes() as f64;
    let limit = budget as f64 * crate::HOT_HARD_LIMIT;
    let keys: Vec<u64> = (0..KEYS).collect();
    assert_eq!(store.pull("t", &keys).unwrap(), reference.pull("t", &keys).unwrap());

    // A checkpoint's hold on the gate. Requests run on another thread: before, they waited for
    // the gate, so this test would hang there (the channel would time out after a minute).
    let gate = table.tier_gate();
    let (tx, rx) = std::sync::mpsc::channel();
    let worker = Arc::clone(&store);
    std::thread::spawn(move || {
        for start in (0..KEYS).step_by(10) {
            // Promotions: clean rows, which the requests themselves drop again.
            let pulled = worker.pull("t", &(start..start + 10).collect::<Vec<u64>>()).unwrap();
            tx.send((pulled.values, worker.hot_bytes())).unwrap();
        }
    });
    for start in (0..KEYS).step_by(10) {
        let (values, hot) = rx.recv_timeout(std::time::Duration::from_secs(60)).expect("a pull waited for the gate");
        assert_eq!(values, reference.lookup("t", &(start..start + 10).collect::<Vec<u64>>()).unwrap().values);
        assert!(hot as f64 <= limit + 10.0 * row, "{hot} bytes hot while a checkpoint reads");
    }
    // New rows are dirty: with the gate held nothing may write them out, so the hot tier passes
    // the limit until the checkpoint ends, and the requests still return.
    let fresh: Vec<u64> = (KEYS..3 * KEYS).collect();
    store.pull("t", &fresh).unwrap();
    assert!(store.hot_bytes() as f64 > limit);
    drop(gate);
    store.enforce_budget().unwrap();
    assert!(store.hot_bytes() <= budget);
    reference.pull("t", &fresh).unwrap();
    let all: Vec<u64> = (0..3 * KEYS).collect();
    assert_eq!(store.lookup("t", &all).unwrap(), reference.lookup("t", &all).unwrap());
}

#[test]
fn rows_pulled_often_stay_in_dram_over_rows_read_once() {
    let store = unpressed(Arc::new(MemCold::default()));
    let table = store.sparse("t").unwrap();
    let all: Vec<u64> = (0..100).collect();
    let often: Vec<u64> = (0..10).collect();
    store.pull("t", &all).unwrap();
    for _ in 0..4 {
        store.pull("t", &often).unwrap();
    }
    // Every row was created in the same round at the same version: only the read counts tell
    // the often-pulled rows apart (a one-bit "read since the last round" flag does not).
    assert!(table.demote(0.5).unwrap() >= 50);
    let promoted = table.stats().tier.promoted;
    store.pull("t", &often).unwrap();
    assert_eq!(table.stats().tier.promoted, promoted, "an often-pulled row was demoted");
    let others: Vec<u64> = (10..100).collect();
    store.pull("t", &others).unwrap();
    assert!(table.stats().tier.promoted >= promoted + 45, "half the rows read once were demoted");
}
