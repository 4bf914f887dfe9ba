//! Checkpoint round trips, fallbacks past corrupt files, and failed writes.

use std::collections::BTreeMap;
use std::path::Path;

use ember_core::{Initializer, Optimizer, SplitMix64, TableSpec};

use super::*;
use crate::{RowMeta, Store, StoreConfig, Table};

type Rows = BTreeMap<u64, (Vec<f32>, RowMeta)>;

fn le(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn new_store() -> Store {
    let store = Store::new(StoreConfig { shard_bits: 3, max_batch_keys: 100_000, ..StoreConfig::default() });
    let emb =
        TableSpec::sparse("emb", 4, Optimizer::Adagrad { learning_rate: 0.1, initial_accumulator: 0.1, epsilon: 1e-8 })
            .with_initializer(Initializer::Normal { mean: 0.0, stddev: 0.1 }, 7);
    store.create_table(emb, None).unwrap();
    let w = TableSpec::sparse("w", 1, Optimizer::Ftrl { alpha: 0.1, beta: 1.0, l1: 0.1, l2: 0.1 });
    store.create_table(w, None).unwrap();
    let dense =
        TableSpec::dense("mlp", 6, Optimizer::Adam { learning_rate: 0.01, beta1: 0.9, beta2: 0.999, epsilon: 1e-8 });
    store.create_table(dense, Some(&le(&[0.5; 6]))).unwrap();
    store
}

/// Every row of every sparse table, plus each dense vector as key 0 of its table.
fn contents(store: &Store) -> BTreeMap<String, Rows> {
    let mut all = BTreeMap::new();
    for table in store.all_tables() {
        let mut rows = Rows::new();
        match &table {
            Table::Sparse(t) => t.scan(|k, v, m| {
                rows.insert(k, (v.to_vec(), *m));
            }),
            Table::Dense(t) => {
                let (values, _, version) = t.snapshot();
                rows.insert(0, (values, RowMeta { key: 0, updates: version, last_step: version, last_time: 0 }));
            }
        }
        all.insert(table.spec().name.clone(), rows);
    }
    all
}

/// Random pulls, pushes and deletes over a small key space, so rows are created, updated many
/// times and deleted.
fn churn(store: &Store, rng: &mut SplitMix64, steps: usize) {
    for _ in 0..steps {
        let keys: Vec<u64> = (0..32).map(|_| rng.next_u64() % 500).collect();
        match rng.next_u64() % 4 {
            0 => {
                store.pull("emb", &keys).unwrap();
            }
            1 => {
                store.delete_keys("emb", &keys[..4]).unwrap();
                store.delete_keys("w", &keys[..2]).unwrap();
            }
            _ => {
                let g: Vec<f32> = (0..keys.len() * 4).map(|_| rng.next_f32() - 0.5).collect();
                store.push("emb", &keys, &le(&g)).unwrap();
                store.push("w", &keys, &le(&g[..keys.len()])).unwrap();
                store.push_dense("mlp", &le(&g[..6])).unwrap();
            }
        }
    }
}

fn restored(dir: &Path) -> (Store, Vec<CheckpointInfo>) {
    let store = Store::new(StoreConfig { shard_bits: 3, max_batch_keys: 100_000, ..StoreConfig::default() });
    let chain = Checkpointer::open(dir).unwrap().restore(&store, IfNoIntactChain::Refuse).unwrap();
    (store, chain)
}

#[test]
fn full_plus_incrementals_with_deletes_restore_the_live_store() {
    let dir = tempfile::tempdir().unwrap();
    let (store, ckpt) = (new_store(), Checkpointer::open(dir.path()).unwrap());
    let mut rng = SplitMix64::new(1);
    churn(&store, &mut rng, 50);
    let full = ckpt.write(&store, CheckpointKind::Full, 10).unwrap();
    assert_eq!((full.kind, full.parent), (CheckpointKind::Full, 0));
    let mut previous = full.id;
    for step in 0..4 {
        churn(&store, &mut rng, 20);
        let incr = ckpt.write(&store, CheckpointKind::Incremental, 11 + step).unwrap();
        assert_eq!((incr.kind, incr.parent), (CheckpointKind::Incremental, previous));
        assert!(incr.deleted > 0, "the churn deletes keys every few steps");
        previous = incr.id;
    }
    let (copy, chain) = restored(dir.path());
    assert_eq!(chain.len(), 5);
    assert_eq!(chain.last().unwrap().label, 14);
    assert_eq!(contents(&copy), contents(&store));
    assert_eq!(copy.sparse("emb").unwrap().version(), store.sparse("emb").unwrap().version());
    // Optimizer state came back too: the same gradients give the same rows. (Each store's clock
    // was read when it was made; pin both, or a second ticking between the two makes the pushes'
    // last-update times differ.)
    let now = 1_800_000_000;
    store.set_now(now);
    copy.set_now(now);
    let keys: Vec<u64> = (0..500).collect();
    let g: Vec<f32> = (0..500 * 4).map(|i| (i % 7) as f32 * 0.1 - 0.3).collect();
    for s in [&store, &copy] {
        s.push("emb", &keys, &le(&g)).unwrap();
        s.push("w", &keys, &le(&g[..500])).unwrap();
        s.push_dense("mlp", &le(&g[..6])).unwrap();
    }
    assert_eq!(contents(&copy), contents(&store));
    let manifest: Manifest = serde_json::from_slice(&fs::read(dir.path().join("MANIFEST.json")).unwrap()).unwrap();
    assert_eq!(manifest.chain.iter().map(|c| c.id).collect::<Vec<_>>(), chain.iter().map(|c| c.id).collect::<Vec<_>>());
}

#[test]
fn an_incremental_holds_only_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let (store, ckpt) = (new_store(), Checkpointer::open(dir.path()).unwrap());
    store.pull("emb", &(0..1000).collect::<Vec<_>>()).unwrap();
    let full = ckpt.write(&store, CheckpointKind::Full, 0).unwrap();
    assert_eq!(full.rows, 1000);
    store.push("emb", &[3, 4], &le(&[0.1; 8])).unwrap();
    store.delete_keys("emb", &[5]).unwrap();
    let incr = ckpt.write(&store, CheckpointKind::Incremental, 1).unwrap();
    assert_eq!((incr.rows, incr.deleted), (2, 1));
    assert!(incr.bytes * 20 < full.bytes, "incremental {} vs full {}", incr.bytes, full.bytes);
    let nothing = ckpt.write(&store, CheckpointKind::Incremental, 2).unwrap();
    assert_eq!((nothing.rows, nothing.deleted), (0, 0));
}

/// Writes a full checkpoint (label 0) and an incremental (label 1) of a churned store, churns
/// more and writes a third of `kind` (label 2). Returns the store's contents as of the second
/// checkpoint (what a restore must give once the third is damaged) and the third's info.
fn full_incremental_then(dir: &Path, seed: u64, kind: CheckpointKind) -> (BTreeMap<String, Rows>, CheckpointInfo) {
    let (store, ckpt) = (new_store(), Checkpointer::open(dir).unwrap());
    let mut rng = SplitMix64::new(seed);
    churn(&store, &mut rng, 30);
    ckpt.write(&store, CheckpointKind::Full, 0).unwrap();
    churn(&store, &mut rng, 10);
    ckpt.write(&store, CheckpointKind::Incremental, 1).unwrap();
    let expected = contents(&store);
    churn(&store, &mut rng, 10);
    (expected, ckpt.write(&store, kind, 2).unwrap())
}

#[test]
fn a_corrupt_incremental_ends_the_chain_at_the_previous_one() {
    let dir = tempfile::tempdir().unwrap();
    let (expected, last) = full_incremental_then(dir.path(), 2, CheckpointKind::Incremental);
    // Flip one bit in the middle of the last file.
    let path = dir.path().join(&last.file);
    let mut bytes = fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    fs::write(&path, &bytes).unwrap();
    assert!(matches!(format::verify(&path), Err(CheckpointError::Corrupt { .. })));
    let (copy, chain) = restored(dir.path());
    assert_eq!(chain.len(), 2);
    assert_eq!(contents(&copy), expected);
}

#[test]
fn a_truncated_full_falls_back_to_the_previous_full_chain() {
    let dir = tempfile::tempdir().unwrap();
    let (expected, newest) = full_incremental_then(dir.path(), 3, CheckpointKind::Full);
    let path = dir.path().join(&newest.file);
    let len = fs::metadata(&path).unwrap().len();
    fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(len - 100).unwrap();
    let (copy, chain) = restored(dir.path());
    assert_eq!(chain.iter().map(|c| c.label).collect::<Vec<_>>(), vec![0, 1]);
    assert_eq!(contents(&copy), expected);
}

#[test]
fn a_failed_write_keeps_the_previous_checkpoint_and_the_next_one_is_full() {
    let dir = tempfile::tempdir().unwrap();
    let (store, ckpt) = (new_store(), Checkpointer::open(dir.path()).unwrap());
    let mut rng = SplitMix64::new(4);
    churn(&store, &mut rng, 30);
    let full = ckpt.write(&store, CheckpointKind::Full, 0).unwrap();
    let expected = contents(&store);
    churn(&store, &mut rng, 10);
    ckpt.fail_writes_after(Some(200));
    let err = ckpt.write(&store, CheckpointKind::Incremental, 1).unwrap_err();
    assert!(err.to_string().contains("no space left"), "{err}");
    let names: Vec<String> =
        fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "temporary file left behind: {names:?}");
    assert_eq!(contents(&restored(dir.path()).0), expected, "the previous checkpoint still restores");
    // The failed attempt consumed change flags: the next checkpoint must not be incremental.
    ckpt.fail_writes_after(None);
    let next = ckpt.write(&store, CheckpointKind::Incremental, 2).unwrap();
    assert_eq!(next.kind, CheckpointKind::Full);
    assert!(next.id > full.id);
    assert_eq!(contents(&restored(dir.path()).0), contents(&store));
}

#[test]
fn a_dropped_table_forces_a_full_checkpoint_and_stays_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (store, ckpt) = (new_store(), Checkpointer::open(dir.path()).unwrap());
    store.pull("w", &[1, 2, 3]).unwrap();
    ckpt.write(&store, CheckpointKind::Full, 0).unwrap();
    store.drop_table("w").unwrap();
    store.create_table(TableSpec::sparse("w", 1, Optimizer::Sgd { learning_rate: 0.1 }), None).unwrap();
    store.pull("w", &[9]).unwrap();
    assert_eq!(ckpt.write(&store, CheckpointKind::Incremental, 1).unwrap().kind, CheckpointKind::Full);
    let (copy, _) = restored(dir.path());
    assert_eq!(contents(&copy), contents(&store));
    assert!(copy.sparse("w").unwrap().get(1).is_none(), "no row of the dropped table came back");
}

#[test]
fn reopen_loop_loses_nothing_checkpointed_and_invents_nothing() {
    // Write, "crash" (drop the store and the checkpointer), reopen from disk, compare, go on
    // training the reopened store: what a restarted ps-server does.
    let dir = tempfile::tempdir().unwrap();
    let mut store = new_store();
    let mut rng = SplitMix64::new(5);
    for round in 0..6 {
        let ckpt = Checkpointer::open(dir.path()).unwrap();
        if round > 0 {
            let chain = ckpt.restore(&store, IfNoIntactChain::Refuse).unwrap();
            assert!(!chain.is_empty());
        }
        churn(&store, &mut rng, 15);
        let kind = if round % 3 == 0 { CheckpointKind::Full } else { CheckpointKind::Incremental };
        ckpt.write(&store, kind, round).unwrap();
        let expected = contents(&store);
        churn(&store, &mut rng, 5); // updates after the checkpoint: lost by the crash, by design
        drop(ckpt);
        store = Store::new(StoreConfig { shard_bits: 3, max_batch_keys: 100_000, ..StoreConfig::default() });
        let check = Checkpointer::open(dir.path()).unwrap();
        check.restore(&store, IfNoIntactChain::Refuse).unwrap();
        assert_eq!(contents(&store), expected, "round {round}");
    }
}

#[test]
fn garbage_and_foreign_files_are_not_restored() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("0000000000000001-full.ckpt"), b"not a checkpoint at all, just text").unwrap();
    fs::write(dir.path().join("notes.txt"), b"hello").unwrap();
    let store = Store::new(StoreConfig { shard_bits: 3, max_batch_keys: 100_000, ..StoreConfig::default() });
    let ckpt = Checkpointer::open(dir.path()).unwrap();
    // A checkpoint file is there, so starting empty is refused unless allowed.
    let err = ckpt.restore(&store, IfNoIntactChain::Refuse).unwrap_err();
    assert!(matches!(err, CheckpointError::NoIntactChain { .. }), "{err}");
    assert!(err.to_string().contains("0000000000000001-full.ckpt"), "{err}");
    let chain = ckpt.restore(&store, IfNoIntactChain::StartEmpty).unwrap();
    assert!(chain.is_empty());
    assert!(store.list_tables().is_empty());
    // The next id skips the garbage file's id, so nothing is overwritten.
    let ckpt = Checkpointer::open(dir.path()).unwrap();
    assert_eq!(ckpt.write(&new_store(), CheckpointKind::Full, 0).unwrap().id, 2);
}

#[path = "damage_tests.rs"]
mod damage;

/// Weights (no optimizer state) of every sparse table.
fn weights(store: &Store) -> BTreeMap<String, BTreeMap<u64, Vec<f32>>> {
    let mut all = BTreeMap::new();
    for table in store.all_tables() {
        if let Table::Sparse(t) = &table {
            let dim = table.spec().dim as usize;
            let mut rows = BTreeMap::new();
            t.scan(|k, v, _| {
                rows.insert(k, v[..dim].to_vec());
            });
            all.insert(table.spec().name.clone(), rows);
        }
    }
    all
}

/// Applies a chain's events to `held` as a replica would.
fn apply_chain(
    ck: &Checkpointer,
    after: u64,
    upto: u64,
    held: &mut BTreeMap<String, BTreeMap<u64, Vec<f32>>>,
) -> Vec<u64> {
    let mut table = String::new();
    ck.read_chain(after, upto, |event| {
        match event {
            ChainEvent::Table { spec, reset } => {
                table = spec.name.clone();
                let rows = held.entry(table.clone()).or_default();
                if reset {
                    rows.clear();
                }
            }
            ChainEvent::Rows { keys, weights } => {
                let rows = held.get_mut(&table).unwrap();
                let dim = weights.len() / keys.len();
                for (k, w) in keys.iter().zip(weights.chunks_exact(dim)) {
                    rows.insert(*k, w.to_vec());
                }
            }
            ChainEvent::Deleted(keys) => {
                let rows = held.get_mut(&table).unwrap();
                for k in keys {
                    rows.remove(k);
                }
            }
        }
        Ok(())
    })
    .unwrap()
}

#[test]
fn a_chain_read_without_a_store_holds_each_checkpoints_weights() {
    let dir = tempfile::tempdir().unwrap();
    let ck = Checkpointer::open(dir.path()).unwrap();
    let store = new_store();
    let mut rng = SplitMix64::new(5);
    let mut at = BTreeMap::new();
    for (i, kind) in
        [CheckpointKind::Full, CheckpointKind::Incremental, CheckpointKind::Incremental].into_iter().enumerate()
    {
        churn(&store, &mut rng, 40);
        let info = ck.write(&store, kind, i as u64).unwrap();
        at.insert(info.id, weights(&store));
    }
    let ids: Vec<u64> = at.keys().copied().collect();
    // From nothing: the whole chain, each prefix equal to the store when that file was written.
    for (n, id) in ids.iter().enumerate() {
        let mut held = BTreeMap::new();
        assert_eq!(apply_chain(&ck, 0, *id, &mut held), ids[..=n].to_vec());
        assert_eq!(held, at[id], "chain up to {id}");
    }
    // Holding the first: only the files after it.
    let mut held = at[&ids[0]].clone();
    assert_eq!(apply_chain(&ck, ids[0], ids[2], &mut held), ids[1..].to_vec());
    assert_eq!(held, at[&ids[2]]);
    // A newer full checkpoint starts a new chain: reading up to it resets, whatever is held.
    churn(&store, &mut rng, 40);
    let full = ck.write(&store, CheckpointKind::Full, 9).unwrap();
    let mut held = at[&ids[2]].clone();
    held.insert("stale".into(), BTreeMap::from([(1, vec![1.0])]));
    assert_eq!(apply_chain(&ck, ids[2], full.id, &mut held), vec![full.id]);
    held.remove("stale");
    assert_eq!(held, weights(&store));
    // An older version is still readable from its own files.
    let mut held = BTreeMap::new();
    apply_chain(&ck, 0, ids[1], &mut held);
    assert_eq!(held, at[&ids[1]]);

    let err = ck.read_chain(0, 99, |_| Ok(())).unwrap_err();
    assert_eq!(ember_core::HasCode::code(&err), ember_core::Code::NotFound, "{err}");
}

/// A running store returned to an earlier checkpoint of its chain holds exactly what it held
/// then (rows, deletions, dense values, optimizer state), including a table created since,
/// which is dropped; a full checkpoint of it is written, so a restart restores the rolled-back
/// state, not the branch after it; an id that is not there changes nothing.
#[test]
fn a_running_store_returns_to_a_checkpoint_and_a_restart_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let (store, ckpt) = (new_store(), Checkpointer::open(dir.path()).unwrap());
    let mut rng = SplitMix64::new(3);
    churn(&store, &mut rng, 40);
    ckpt.write(&store, CheckpointKind::Full, 100).unwrap();
    churn(&store, &mut rng, 20);
    let target = ckpt.write(&store, CheckpointKind::Incremental, 200).unwrap();
    let then = contents(&store);
    churn(&store, &mut rng, 30);
    ckpt.write(&store, CheckpointKind::Incremental, 300).unwrap();
    store.create_table(TableSpec::sparse("late", 2, Optimizer::Sgd { learning_rate: 0.1 }), None).unwrap();
    churn(&store, &mut rng, 10);
    assert_ne!(contents(&store), then);

    assert!(matches!(ckpt.restore_to(&store, 99), Err(CheckpointError::Missing { id: 99, .. })));
    let (applied, written) = ckpt.restore_to(&store, target.id).unwrap();
    assert_eq!(applied.iter().map(|c| c.label).collect::<Vec<_>>(), vec![100, 200]);
    assert_eq!((written.kind, written.label), (CheckpointKind::Full, 200));
    assert_eq!(contents(&store), then, "the store is back at checkpoint {}", target.id);
    let (copy, chain) = restored(dir.path());
    assert_eq!(chain.iter().map(|c| c.id).collect::<Vec<_>>(), vec![written.id]);
    assert_eq!(contents(&copy), then, "a restart restores the rolled-back state");
    // Training goes on from there: the next incremental builds on the new full checkpoint.
    churn(&store, &mut rng, 5);
    assert_eq!(ckpt.write(&store, CheckpointKind::Incremental, 210).unwrap().parent, written.id);
}
