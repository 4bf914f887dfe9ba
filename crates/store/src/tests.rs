//! Store behaviour: concurrency, duplicates, refusals that change nothing, lookup vs pull.

use std::sync::Arc;

use ember_core::{Initializer, Optimizer, TableSpec};

use crate::{Store, StoreConfig, StoreError};

fn le_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn store_with(spec: TableSpec) -> Store {
    let store = Store::new(StoreConfig { shard_bits: 3, max_batch_keys: 1000, ..StoreConfig::default() });
    assert!(store.create_table(spec, None).unwrap());
    store
}

#[test]
fn concurrent_sgd_pushes_equal_the_sequential_result() {
    // Gradients are small multiples of 1/4 and lr is 1/2, so every sum is exact in f32 and the
    // result cannot depend on the order the threads' pushes interleave.
    let dim = 4;
    let store = Arc::new(store_with(TableSpec::sparse("t", dim, Optimizer::Sgd { learning_rate: 0.5 })));
    let (threads, pushes, keys_per_push) = (8u64, 200u64, 64u64);
    let grad_of = |t: u64, p: u64, k: u64| ((t + p + k) % 7) as f32 * 0.25 - 0.5;
    let key_of = |t: u64, p: u64, i: u64| (t * 31 + p * 17 + i * 7) % 300; // heavy overlap
    std::thread::scope(|s| {
        for t in 0..threads {
            let store = Arc::clone(&store);
            s.spawn(move || {
                for p in 0..pushes {
                    let keys: Vec<u64> = (0..keys_per_push).map(|i| key_of(t, p, i)).collect();
                    let grads: Vec<f32> = keys.iter().flat_map(|k| vec![grad_of(t, p, *k); dim as usize]).collect();
                    store.push("t", &keys, &le_bytes(&grads)).unwrap();
                }
            });
        }
    });
    // Sequential reference: the sum of every gradient per key, and how many pushes touched it.
    let mut expected = vec![0f32; 300];
    let mut touches = vec![0u64; 300];
    for t in 0..threads {
        for p in 0..pushes {
            let mut seen = std::collections::HashSet::new();
            for i in 0..keys_per_push {
                let k = key_of(t, p, i);
                expected[k as usize] -= 0.5 * grad_of(t, p, k);
                if seen.insert(k) {
                    touches[k as usize] += 1;
                }
            }
        }
    }
    let table = store.sparse("t").unwrap();
    let mut total_updates = 0;
    for k in 0..300u64 {
        match table.get(k) {
            Some((row, meta)) => {
                assert_eq!(row, vec![expected[k as usize]; dim as usize], "key {k}");
                assert_eq!(meta.updates, touches[k as usize], "key {k}");
                total_updates += meta.updates;
            }
            None => assert_eq!(touches[k as usize], 0),
        }
    }
    let stats = table.stats();
    assert_eq!(stats.version, threads * pushes);
    assert_eq!(stats.row_updates, total_updates);
}

#[test]
fn duplicate_keys_in_one_push_are_summed_and_applied_once() {
    let adagrad = Optimizer::Adagrad { learning_rate: 0.1, initial_accumulator: 0.1, epsilon: 1e-7 };
    let spec = TableSpec::sparse("t", 2, adagrad).with_initializer(Initializer::Uniform { low: -1.0, high: 1.0 }, 3);
    let a = store_with(spec.clone());
    let b = store_with(spec);
    let out = a.push("t", &[5, 9, 5], &le_bytes(&[1.0, 2.0, 0.5, 0.5, -3.0, 1.0])).unwrap();
    assert_eq!(out.rows_updated, 2);
    b.push("t", &[9, 5], &le_bytes(&[0.5, 0.5, -2.0, 3.0])).unwrap();
    for key in [5, 9] {
        let (ra, ma) = a.sparse("t").unwrap().get(key).unwrap();
        let (rb, mb) = b.sparse("t").unwrap().get(key).unwrap();
        assert_eq!(ra, rb);
        assert_eq!((ma.updates, mb.updates), (1, 1));
    }
}

#[test]
fn refused_pushes_change_nothing() {
    let store = store_with(TableSpec::sparse("t", 2, Optimizer::Sgd { learning_rate: 1.0 }));
    store.push("t", &[1, 2], &le_bytes(&[1.0, 1.0, 1.0, 1.0])).unwrap();
    let before = store.pull("t", &[1, 2]).unwrap();
    let nan = store.push("t", &[1, 2], &le_bytes(&[1.0, 1.0, f32::NAN, 1.0]));
    assert!(matches!(nan, Err(StoreError::NonFinite { key: 2, .. })), "{nan:?}");
    let inf = store.push("t", &[1], &le_bytes(&[f32::INFINITY, 0.0]));
    assert!(matches!(inf, Err(StoreError::NonFinite { key: 1, .. })));
    let short = store.push("t", &[1, 2], &le_bytes(&[1.0, 1.0, 1.0]));
    let msg = short.unwrap_err().to_string();
    assert!(msg.contains("expected 16"), "{msg}");
    let odd = store.push("t", &[1], &[0u8; 7]);
    assert!(matches!(odd, Err(StoreError::BadLength { .. })));
    let big = store.push("t", &[7; 1001], &le_bytes(&[0.0; 2002]));
    assert!(matches!(big, Err(StoreError::BatchTooLarge { got: 1001, limit: 1000 })));
    assert!(matches!(store.pull("t", &[0; 1001]), Err(StoreError::BatchTooLarge { .. })));
    let after = store.pull("t", &[1, 2]).unwrap();
    assert_eq!(before, after, "values and version unchanged");
    let stats = store.sparse("t").unwrap().stats();
    assert_eq!((stats.rows, stats.rejected_nonfinite), (2, 2));
}

#[test]
fn lookup_never_creates_and_matches_what_pull_creates() {
    let spec = TableSpec::sparse("t", 8, Optimizer::Sgd { learning_rate: 0.1 })
        .with_initializer(Initializer::Normal { mean: 0.0, stddev: 0.1 }, 11);
    let store = store_with(spec);
    store.pull("t", &[1]).unwrap();
    let looked = store.lookup("t", &[1, 2, 3]).unwrap();
    assert_eq!(looked.missing, vec![false, true, true]);
    assert_eq!(store.sparse("t").unwrap().stats().rows, 1);
    let pulled = store.pull("t", &[1, 2, 3]).unwrap();
    assert_eq!(looked.values, pulled.values);
    assert!(pulled.missing.is_empty());
    assert_eq!(store.sparse("t").unwrap().stats().rows, 3);
}

#[test]
fn delete_removes_rows_and_a_later_pull_reinitializes() {
    let spec = TableSpec::sparse("t", 2, Optimizer::Sgd { learning_rate: 1.0 })
        .with_initializer(Initializer::Uniform { low: 0.0, high: 1.0 }, 1);
    let store = store_with(spec);
    let fresh = store.pull("t", &[1, 2, 3]).unwrap();
    store.push("t", &[2], &le_bytes(&[5.0, 5.0])).unwrap();
    assert_eq!(store.delete_keys("t", &[2, 3, 99]).unwrap(), 2);
    assert_eq!(store.sparse("t").unwrap().stats().rows, 1);
    assert_eq!(store.lookup("t", &[2]).unwrap().missing, vec![true]);
    assert_eq!(store.pull("t", &[1, 2, 3]).unwrap().values, fresh.values);
}

#[test]
fn tables_are_created_idempotently_and_kinds_are_enforced() {
    let sgd = Optimizer::Sgd { learning_rate: 0.1 };
    let store = store_with(TableSpec::sparse("t", 2, sgd));
    assert!(!store.create_table(TableSpec::sparse("t", 2, sgd), None).unwrap());
    assert!(matches!(store.create_table(TableSpec::sparse("t", 3, sgd), None), Err(StoreError::SpecConflict { .. })));
    assert!(store.create_table(TableSpec::dense("w", 3, sgd), Some(&le_bytes(&[1.0, 2.0, 3.0]))).unwrap());
    assert!(matches!(store.pull("w", &[1]), Err(StoreError::WrongKind { .. })));
    assert!(matches!(store.pull_dense("t"), Err(StoreError::WrongKind { .. })));
    assert!(matches!(store.pull("nope", &[1]), Err(StoreError::TableNotFound(_))));
    assert_eq!(store.list_tables().len(), 2);
    store.drop_table("t").unwrap();
    assert!(matches!(store.drop_table("t"), Err(StoreError::TableNotFound(_))));
}

#[test]
fn dense_tables_apply_their_optimizer_and_refuse_bad_gradients() {
    let adam = Optimizer::Adam { learning_rate: 0.1, beta1: 0.9, beta2: 0.999, epsilon: 1e-8 };
    let store = Store::default();
    store.create_table(TableSpec::dense("w", 2, adam), Some(&le_bytes(&[1.0, 1.0]))).unwrap();
    assert_eq!(store.push_dense("w", &le_bytes(&[0.5, -0.5])).unwrap(), 1);
    let (v, version) = store.pull_dense("w").unwrap();
    assert_eq!(version, 1);
    // First Adam step moves each weight by lr against the gradient's sign.
    assert!((v[0] - 0.9).abs() < 1e-6 && (v[1] - 1.1).abs() < 1e-6, "{v:?}");
    assert!(matches!(store.push_dense("w", &le_bytes(&[f32::NAN, 0.0])), Err(StoreError::NonFinite { .. })));
    assert!(matches!(store.push_dense("w", &le_bytes(&[1.0])), Err(StoreError::BadLength { .. })));
    assert_eq!(store.pull_dense("w").unwrap(), (v, 1));
    let bad_init = store.create_table(TableSpec::dense("x", 2, adam), Some(&le_bytes(&[1.0])));
    assert!(matches!(bad_init, Err(StoreError::BadLength { .. })));
}

#[test]
fn multi_table_dense_push_is_all_or_nothing() {
    let sgd = Optimizer::Sgd { learning_rate: 1.0 };
    let store = Store::default();
    store.create_table(TableSpec::dense("a", 1, sgd), None).unwrap();
    store.create_table(TableSpec::dense("b", 2, sgd), None).unwrap();
    let (one, nan) = (le_bytes(&[1.0]), le_bytes(&[0.0, f32::NAN]));
    assert!(store.push_dense_many(&[("a", &one), ("b", &nan)]).is_err());
    assert!(store.push_dense_many(&[("a", &one), ("missing", &one)]).is_err());
    assert_eq!(store.pull_dense("a").unwrap(), (vec![0.0], 0), "a must be untouched");
    let ok = store.push_dense_many(&[("a", &one), ("b", &le_bytes(&[1.0, 2.0]))]).unwrap();
    assert_eq!(ok, vec![1, 1]);
    assert_eq!(store.pull_dense("b").unwrap(), (vec![-1.0, -2.0], 1));
}

#[test]
fn compressed_gradients_are_decoded_before_the_optimizer_and_malformed_ones_refused() {
    use ember_core::codec::{encode_with_residual, Compression};
    let sgd = Optimizer::Sgd { learning_rate: 1.0 };
    let store = Store::default();
    store.create_table(TableSpec::sparse("s", 2, sgd).with_initializer(Initializer::Zeros, 0), None).unwrap();
    store.create_table(TableSpec::dense("d", 3, sgd), None).unwrap();
    let mut residual = vec![0f32; 4];
    let bytes = encode_with_residual(Compression::Onebit, &[3.0, -1.0, 1.0, -3.0], &mut residual);
    store.push_versioned("s", &[7, 8], Compression::Onebit, &bytes, None).unwrap();
    // SGD with rate 1 subtracts the decoded gradient: +2 for signs >= 0, -2 for negatives.
    assert_eq!(store.pull("s", &[7, 8]).unwrap().values, vec![-2.0, 2.0, -2.0, 2.0]);
    let mut r = vec![0f32; 3];
    let half = encode_with_residual(Compression::Fp16, &[0.5, -0.25, 1.0], &mut r);
    let dense = |encoding, bytes| [crate::DensePush { name: "d", encoding, bytes, version: None }];
    store.push_dense_versioned(&dense(Compression::Fp16, &half)).unwrap();
    assert_eq!(store.pull_dense("d").unwrap().0, vec![-0.5, 0.25, -1.0]);
    let short = &bytes[..bytes.len() - 1];
    assert!(matches!(
        store.push_versioned("s", &[7, 8], Compression::Onebit, short, None),
        Err(StoreError::BadEncoding { .. })
    ));
    assert!(matches!(
        store.push_dense_versioned(&dense(Compression::Onebit, &half)),
        Err(StoreError::BadEncoding { .. })
    ));
    assert_eq!(store.pull("s", &[7]).unwrap().values, vec![-2.0, 2.0], "a refused push changes nothing");
}

#[test]
fn pulls_return_each_keys_own_row_at_every_width() {
    // The widths the models use (1: linear weights, 8 and 16: embeddings) and an odd one.
    for dim in [1u32, 3, 8, 16] {
        let spec = TableSpec::sparse("t", dim, Optimizer::Sgd { learning_rate: 1.0 })
            .with_initializer(Initializer::Normal { mean: 0.0, stddev: 0.1 }, 7);
        let store = store_with(spec);
        let keys: Vec<u64> = (0..50).map(|k| k * 7919).collect();
        let created = store.pull("t", &keys).unwrap().values;
        // Give every row a value that names its key and lane.
        let grads: Vec<f32> =
            keys.iter().flat_map(|k| (0..dim).map(move |j| -((k / 7919) as f32 * 100.0 + j as f32))).collect();
        store.push("t", &keys, &le_bytes(&grads)).unwrap();
        // Pulled in another order, with a duplicate: each slot holds its own key's row.
        let order: Vec<u64> = keys.iter().rev().copied().chain([keys[3]]).collect();
        let pulled = store.pull("t", &order).unwrap().values;
        for (slot, key) in order.iter().enumerate() {
            let i = keys.iter().position(|k| k == key).unwrap();
            for j in 0..dim as usize {
                let expected = created[i * dim as usize + j] + (i as f32 * 100.0 + j as f32);
                assert_eq!(pulled[slot * dim as usize + j], expected, "dim {dim}, key {key}, lane {j}");
            }
        }
    }
}

#[test]
fn a_headed_table_pulls_and_trains_as_two_tables_would() {
    // One row per key holding an FTRL head (zeros) and an Adagrad tail (random): every pull and
    // push must give what a head-only and a tail-only table give, and the spec must survive the
    // JSON a checkpoint stores it as.
    let ftrl = Optimizer::Ftrl { alpha: 0.1, beta: 1.0, l1: 0.2, l2: 0.1 };
    let adagrad = Optimizer::Adagrad { learning_rate: 0.05, initial_accumulator: 0.1, epsilon: 1e-8 };
    let normal = Initializer::Normal { mean: 0.0, stddev: 0.1 };
    let head = ember_core::RowHead { dim: 1, optimizer: ftrl, initializer: Initializer::Zeros };
    let spec = TableSpec::sparse("wv", 3, adagrad).with_initializer(normal, 5).with_head(head);
    let json = serde_json::to_string(&spec).unwrap();
    assert_eq!(serde_json::from_str::<TableSpec>(&json).unwrap(), spec);
    let store = store_with(spec);
    store.create_table(TableSpec::sparse("w", 1, ftrl).with_initializer(Initializer::Zeros, 5), None).unwrap();
    store.create_table(TableSpec::sparse("v", 2, adagrad).with_initializer(normal, 5), None).unwrap();
    let keys = [3u64, 99, 3, 7];
    for round in 0..4 {
        let (wv, w, v) =
            (store.pull("wv", &keys).unwrap(), store.pull("w", &keys).unwrap(), store.pull("v", &keys).unwrap());
        let split: Vec<f32> = w.values.iter().zip(v.values.chunks(2)).flat_map(|(w, v)| [*w, v[0], v[1]]).collect();
        assert_eq!(wv.values, split, "round {round}");
        let grads: Vec<f32> = (0..keys.len() * 3).map(|i| (i as f32 - 4.0) * 0.5 + round as f32).collect();
        let (gw, gv): (Vec<f32>, Vec<f32>) =
            (grads.chunks(3).map(|g| g[0]).collect(), grads.chunks(3).flat_map(|g| [g[1], g[2]]).collect());
        store.push("wv", &keys, &le_bytes(&grads)).unwrap();
        store.push("w", &keys, &le_bytes(&gw)).unwrap();
        store.push("v", &keys, &le_bytes(&gv)).unwrap();
    }
    assert!(store.lookup("wv", &[3]).unwrap().values[0] != 0.0, "the head trained");
}

#[test]
fn finite_gradients_that_overflow_never_store_nan_or_inf() {
    // The probe that found it: SGD with a large learning rate and pushes of +-3e38 stored Inf,
    // then NaN (Inf - Inf), and pulls, lookups and exports returned them.
    let sgd = Optimizer::Sgd { learning_rate: 10.0 };
    let store = Store::default();
    store.create_table(TableSpec::sparse("s", 2, sgd).with_initializer(Initializer::Zeros, 0), None).unwrap();
    store.create_table(TableSpec::dense("d", 2, sgd), None).unwrap();
    let mut rejected = 0;
    for sign in [1.0f32, -1.0, 1.0] {
        let out = store.push("s", &[1, 2, 1], &le_bytes(&[sign * 3e38, 0.5, 0.25, 0.25, sign * 3e38, 0.5])).unwrap();
        rejected += out.rows_rejected;
        store.push_dense("d", &le_bytes(&[sign * 3e38, 0.5])).unwrap();
    }
    assert!(rejected >= 1, "no row reported a refused coordinate");
    let all_finite = |v: &[f32]| v.iter().all(|x| x.is_finite());
    let pulled = store.pull("s", &[1, 2]).unwrap().values;
    assert!(all_finite(&pulled), "pull: {pulled:?}");
    let looked_up = store.lookup("s", &[1, 2]).unwrap().values;
    assert!(all_finite(&looked_up), "lookup: {looked_up:?}");
    let mut scanned = Vec::new();
    store.sparse("s").unwrap().scan(|_, v, _| scanned.extend_from_slice(v));
    assert!(all_finite(&scanned), "rows and optimizer state: {scanned:?}");
    // Coordinates that did not overflow learned as usual: key 1 is pushed twice per push (its
    // gradients summed: 2 x 3e38 is Inf, refused; 2 x 0.5 = 1), so its second weight is 3 x -10.
    assert_eq!(pulled[1], -30.0);
    let (dense, _) = store.pull_dense("d").unwrap();
    assert!(all_finite(&dense), "dense: {dense:?}");
    assert_eq!(dense[1], -15.0);
    assert!(store.stats().iter().all(|t| t.counters.rejected_nonfinite > 0));
}
