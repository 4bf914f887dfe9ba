//! Admission and eviction rules, with the store's clock and versions driven by the test.

use ember_core::{FeaturePolicy, Initializer, Optimizer, TableSpec};

use crate::{CheckpointKind, Checkpointer, Store, StoreConfig};

fn le(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn store_with(policy: FeaturePolicy) -> Store {
    let store = Store::new(StoreConfig { shard_bits: 2, max_batch_keys: 1000, ..StoreConfig::default() });
    let spec = TableSpec::sparse("t", 2, Optimizer::Sgd { learning_rate: 1.0 })
        .with_initializer(Initializer::Uniform { low: 0.5, high: 1.0 }, 3)
        .with_policy(policy);
    store.create_table(spec, None).unwrap();
    store
}

fn rows(store: &Store) -> u64 {
    store.sparse("t").unwrap().stats().rows
}

#[test]
fn a_key_gets_a_row_on_its_min_count_th_pull_and_pushes_before_that_are_dropped() {
    let store = store_with(FeaturePolicy { min_count: 3, ..Default::default() });
    let first = store.pull("t", &[5]).unwrap();
    assert_eq!(rows(&store), 0, "not admitted yet");
    assert_eq!(first.values, store.lookup("t", &[5]).unwrap().values, "the initializer's value is served");
    for _ in 0..10 {
        store.lookup("t", &[5]).unwrap(); // lookups (serving) never count
    }
    let pushed = store.push("t", &[5], &le(&[0.1, 0.1])).unwrap();
    assert_eq!((pushed.rows_updated, rows(&store)), (0, 0), "a push for an unadmitted key is dropped");
    store.pull("t", &[5]).unwrap();
    assert_eq!(rows(&store), 0);
    store.pull("t", &[5]).unwrap();
    assert_eq!(rows(&store), 1, "third pull admits");
    assert_eq!(store.push("t", &[5], &le(&[0.1, 0.1])).unwrap().rows_updated, 1);
    let stats = store.sparse("t").unwrap().stats();
    assert_eq!((stats.admitted, stats.filtered, stats.dropped), (1, 2, 1));
}

#[test]
fn admission_counts_survive_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let policy = FeaturePolicy { min_count: 3, ..Default::default() };
    let store = store_with(policy);
    store.pull("t", &[8, 9]).unwrap();
    store.pull("t", &[8, 9]).unwrap();
    Checkpointer::open(dir.path()).unwrap().write(&store, CheckpointKind::Full, 0).unwrap();
    let copy = Store::new(StoreConfig { shard_bits: 2, max_batch_keys: 1000, ..StoreConfig::default() });
    Checkpointer::open(dir.path()).unwrap().restore(&copy, crate::IfNoIntactChain::Refuse).unwrap();
    assert_eq!(copy.sparse("t").unwrap().spec().policy, policy);
    copy.pull("t", &[8]).unwrap();
    assert_eq!(rows(&copy), 1, "two sightings came back with the checkpoint; the third admits");
}

#[test]
fn rows_not_updated_for_ttl_steps_are_evicted() {
    let store = store_with(FeaturePolicy { ttl_steps: 2, ..Default::default() });
    store.pull("t", &[1, 2]).unwrap(); // both created at version 0
    store.push("t", &[2], &le(&[0.0, 0.0])).unwrap(); // version 1: key 2 updated
    assert_eq!(store.evict().unwrap(), 0, "nothing is older than 2 steps yet");
    store.push("t", &[2], &le(&[0.0, 0.0])).unwrap(); // version 2
    store.push("t", &[2], &le(&[0.0, 0.0])).unwrap(); // version 3: key 1 is 3 steps old
    assert_eq!(store.evict().unwrap(), 1);
    let t = store.sparse("t").unwrap();
    assert!(t.get(1).is_none() && t.get(2).is_some());
    assert_eq!(t.stats().evicted, 1);
}

#[test]
fn rows_not_updated_for_ttl_seconds_are_evicted() {
    let store = store_with(FeaturePolicy { ttl_seconds: 60, ..Default::default() });
    store.set_now(1_000);
    store.pull("t", &[1, 2]).unwrap();
    store.set_now(1_050);
    store.push("t", &[2], &le(&[0.0, 0.0])).unwrap();
    store.set_now(1_060);
    assert_eq!(store.evict().unwrap(), 0, "60 seconds is not more than the TTL");
    store.set_now(1_061);
    assert_eq!(store.evict().unwrap(), 1);
    assert!(store.sparse("t").unwrap().get(2).is_some(), "updated at 1050: 11 seconds old");
    store.set_now(1_111);
    assert_eq!(store.evict().unwrap(), 1);
    assert_eq!(rows(&store), 0);
}

#[test]
fn updated_rows_with_a_small_norm_are_evicted_and_untouched_ones_are_not() {
    let store = store_with(FeaturePolicy { min_l2: 0.01, ..Default::default() });
    let pulled = store.pull("t", &[1, 2, 3]).unwrap().values;
    // SGD with lr 1: a gradient equal to the weights sets key 1's row to exactly zero; key 2
    // moves but stays large.
    let grads = [pulled[0], pulled[1], 0.1, 0.1];
    store.push("t", &[1, 2], &le(&grads)).unwrap();
    assert_eq!(store.evict().unwrap(), 1);
    let t = store.sparse("t").unwrap();
    assert!(t.get(1).is_none() && t.get(2).is_some() && t.get(3).is_some());
}

#[test]
fn expired_rows_are_evicted_at_checkpoint_and_not_written() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with(FeaturePolicy { ttl_steps: 1, ..Default::default() });
    store.pull("t", &[1, 2, 3]).unwrap();
    store.push("t", &[3], &le(&[0.0, 0.0])).unwrap();
    store.push("t", &[3], &le(&[0.0, 0.0])).unwrap();
    let info = Checkpointer::open(dir.path()).unwrap().write(&store, CheckpointKind::Full, 0).unwrap();
    assert_eq!(info.rows, 1, "keys 1 and 2 expired before the write");
    assert_eq!(store.sparse("t").unwrap().stats().evicted, 2);
}

#[test]
fn dense_tables_refuse_a_policy() {
    let store = Store::new(StoreConfig::default());
    let spec = TableSpec::dense("d", 4, Optimizer::Sgd { learning_rate: 0.1 })
        .with_policy(FeaturePolicy { ttl_steps: 5, ..Default::default() });
    let err = store.create_table(spec, None).unwrap_err();
    assert!(err.to_string().contains("sparse tables only"), "{err}");
}

#[test]
fn eviction_reaches_rows_on_disk_and_the_disk_copies_of_evicted_rows() {
    use std::sync::Arc;
    let store = Store::tiered(
        StoreConfig { shard_bits: 2, max_batch_keys: 1000, ..StoreConfig::default() },
        Arc::new(crate::MemCold::default()),
        1 << 20,
    );
    let spec = TableSpec::sparse("t", 2, Optimizer::Sgd { learning_rate: 1.0 })
        .with_policy(FeaturePolicy { ttl_seconds: 60, ..Default::default() });
    store.create_table(spec, None).unwrap();
    store.set_now(1_000);
    store.push("t", &[1, 2, 3], &le(&[0.5; 6])).unwrap();
    let t = store.sparse("t").unwrap();
    t.demote(1.0).unwrap(); // every row now only on disk
    assert_eq!((t.hot_rows(), t.stats().tier.cold_rows), (0, 3));
    store.set_now(1_030);
    store.pull("t", &[3]).unwrap(); // key 3 back in DRAM (its disk copy stays, stale-able)
    store.set_now(1_061);
    store.push("t", &[3], &le(&[0.5; 2])).unwrap(); // key 3 updated now: fresh
    assert_eq!(store.evict().unwrap(), 2, "keys 1 and 2 expired on disk");
    assert_eq!(t.stats().evicted, 2);
    store.set_now(1_200);
    assert_eq!(store.evict().unwrap(), 1, "key 3 expired in DRAM");
    assert_eq!(t.stats().tier.cold_rows, 0, "its disk copy went with it");
    let looked = store.lookup("t", &[1, 2, 3]).unwrap();
    assert_eq!(looked.missing, vec![true, true, true], "nothing comes back from disk");
}
