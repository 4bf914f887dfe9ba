//! Apply rules on the server: staleness scaling and softsync aggregation, with the gradient
//! versions (the clocks) set by the test.

use ember_core::sync::ApplyRule;
use ember_core::{Optimizer, TableSpec};

use crate::{DensePush, Store};
use ember_core::codec::Compression;

const SGD: Optimizer = Optimizer::Sgd { learning_rate: 1.0 };

fn le(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn store_with(rule: ApplyRule) -> Store {
    let store = Store::default();
    store.create_table(TableSpec::sparse("s", 2, SGD).with_sync(rule), None).unwrap();
    store.create_table(TableSpec::dense("d", 2, SGD).with_sync(rule), None).unwrap();
    store
}

fn push(store: &Store, key: u64, grad: [f32; 2], version: u64) -> crate::PushOutcome {
    store.push_versioned("s", &[key], Compression::None, &le(&grad), Some(version)).unwrap()
}

fn row(store: &Store, key: u64) -> Vec<f32> {
    store.lookup("s", &[key]).unwrap().values
}

#[test]
fn staleness_scales_each_step_by_lambda0_over_tau() {
    let store = store_with(ApplyRule::Staleness { lambda0: 2.0 });
    // Fresh gradient (tau 0): weight lambda0 / max(1, 0) = 2.
    let out = push(&store, 1, [1.0, -1.0], 0);
    assert_eq!((out.staleness, out.version, out.buffered), (0, 1, false));
    assert_eq!(row(&store, 1), vec![-2.0, 2.0]);
    // Move the table to version 5 with another key.
    for _ in 0..4 {
        push(&store, 9, [0.0, 0.0], 5);
    }
    // Key 1 was updated (at version 1) after this gradient's pull at version 0: tau 5, weight 0.4.
    let out = push(&store, 1, [1.0, 1.0], 0);
    assert_eq!(out.staleness, 5);
    assert_eq!(row(&store, 1), vec![-2.4, 1.6]);
    // Key 2 has not moved since the pull at version 1, however far the table has: full step.
    let out = push(&store, 2, [1.0, 1.0], 1);
    assert_eq!(out.staleness, 5);
    assert_eq!(row(&store, 2), vec![-2.0, -2.0]);
    // The dense table is one row: a stale gradient is always scaled (tau 0 here, then 1).
    let dense = |version| {
        let bytes = le(&[1.0, 1.0]);
        let pushes = [DensePush { name: "d", encoding: Compression::None, bytes: &bytes, version: Some(version) }];
        store.push_dense_versioned(&pushes).unwrap()[0]
    };
    dense(0);
    assert_eq!(dense(0).staleness, 1);
    assert_eq!(store.pull_dense("d").unwrap().0, vec![-4.0, -4.0], "2 + 2 / max(1, 1)");
    // A gradient version ahead of the table (a restarted server) counts as fresh, not negative.
    assert_eq!(push(&store, 1, [0.0, 0.0], 1000).staleness, 0);
}

#[test]
fn softsync_applies_the_weighted_sum_of_every_s_pushes() {
    let store = store_with(ApplyRule::Softsync { s: 3, lambda0: 1.0 });
    let first = push(&store, 1, [3.0, 0.0], 0);
    assert!(first.buffered);
    assert_eq!((first.version, first.rows_updated), (0, 0));
    assert_eq!(row(&store, 1), vec![0.0, 0.0], "nothing applied before the s-th push");
    push(&store, 2, [0.0, 6.0], 0);
    // Third push: tau 0 still (the version has not moved); completes the update.
    let third = push(&store, 1, [1.0, 3.0], 0);
    assert_eq!((third.buffered, third.version, third.rows_updated), (false, 1, 2));
    assert_eq!(row(&store, 1), vec![-4.0, -3.0], "key 1 in two pushes: 3 + 1, 0 + 3");
    assert_eq!(row(&store, 2), vec![0.0, -6.0], "key 2 in one push: as sent");
    // Next round: a gradient two versions stale is weighted 1/2 in the sum.
    for _ in 0..3 {
        push(&store, 1, [0.0, 0.0], 1); // version 1 -> fresh
    }
    assert_eq!(row(&store, 1), vec![-4.0, -3.0]);
    push(&store, 1, [6.0, 6.0], 0); // tau 2 -> weight 1/2
    push(&store, 1, [0.0, 0.0], 2);
    let out = push(&store, 1, [0.0, 0.0], 2);
    assert_eq!(out.version, 3);
    assert_eq!(row(&store, 1), vec![-7.0, -6.0], "6 * 1/2 = 3");
}

#[test]
fn softsync_of_fresh_pushes_is_one_step_over_all_their_examples() {
    // FTRL with L1 and L2 is far from linear in its gradient: s fresh pushes must land exactly
    // where one push of their summed gradient does (one worker at batch s * b), not at a step
    // s-fold smaller, which the regularization terms would then outweigh.
    let ftrl = Optimizer::Ftrl { alpha: 0.05, beta: 1.0, l1: 1.0, l2: 1.0 };
    let table = |rule| {
        let store = Store::default();
        store.create_table(TableSpec::sparse("s", 2, ftrl).with_sync(rule), None).unwrap();
        store
    };
    let buffered = table(ApplyRule::Softsync { s: 4, lambda0: 1.0 });
    let at_once = table(ApplyRule::Async);
    let grads = [[0.75f32, -2.5], [1.5, -0.25], [0.5, -1.0], [1.25, 0.5]];
    for round in 0..3u64 {
        let mut sum = [0f32; 2];
        for g in grads {
            buffered.push_versioned("s", &[7], Compression::None, &le(&g), Some(round)).unwrap();
            sum = [sum[0] + g[0], sum[1] + g[1]];
        }
        at_once.push_versioned("s", &[7], Compression::None, &le(&sum), Some(round)).unwrap();
        let (b, a) = (buffered.lookup("s", &[7]).unwrap().values, at_once.lookup("s", &[7]).unwrap().values);
        assert_eq!(b, a, "round {round}");
        assert!(a.iter().all(|w| *w != 0.0), "the sums clear L1, so the test compares real steps: {a:?}");
    }
}

#[test]
fn softsync_dense_tables_and_flush() {
    let store = store_with(ApplyRule::Softsync { s: 2, lambda0: 1.0 });
    let dense = |grad: [f32; 2], version| {
        let bytes = le(&grad);
        let pushes = [DensePush { name: "d", encoding: Compression::None, bytes: &bytes, version: Some(version) }];
        store.push_dense_versioned(&pushes).unwrap()[0]
    };
    assert!(dense([2.0, 2.0], 0).buffered);
    assert_eq!(store.pull_dense("d").unwrap(), (vec![0.0, 0.0], 0));
    let out = dense([4.0, 0.0], 0);
    assert_eq!((out.buffered, out.version), (false, 1));
    assert_eq!(store.pull_dense("d").unwrap(), (vec![-6.0, -2.0], 1));
    // One gradient left over when training ends: flush applies it.
    dense([1.0, 1.0], 1);
    push(&store, 5, [2.0, 2.0], 0);
    assert_eq!(store.flush_pending().unwrap(), 2);
    assert_eq!(store.pull_dense("d").unwrap(), (vec![-7.0, -3.0], 2));
    assert_eq!(row(&store, 5), vec![-2.0, -2.0]);
    assert_eq!(store.flush_pending().unwrap(), 0, "nothing left");
}

#[test]
fn a_rejected_gradient_is_not_buffered() {
    let store = store_with(ApplyRule::Softsync { s: 2, lambda0: 1.0 });
    let nan = le(&[f32::NAN, 0.0]);
    assert!(store.push_versioned("s", &[1], Compression::None, &nan, Some(0)).is_err());
    push(&store, 1, [2.0, 2.0], 0);
    assert_eq!(row(&store, 1), vec![0.0, 0.0], "the NaN push did not count towards s");
    push(&store, 1, [2.0, 2.0], 0);
    assert_eq!(row(&store, 1), vec![-4.0, -4.0], "the two finite pushes, summed");
}

#[test]
fn sync_applies_the_sum_of_every_s_pushes_to_sparse_and_dense_tables() {
    // Workers in lockstep push the gradients of their batches' summed loss: the update is their
    // sum, the gradient of one batch holding all their examples.
    let store = store_with(ApplyRule::Sync { s: 2 });
    assert!(push(&store, 1, [3.0, 0.0], 0).buffered);
    let second = push(&store, 1, [1.0, 2.0], 0);
    assert_eq!((second.buffered, second.version), (false, 1));
    assert_eq!(row(&store, 1), vec![-4.0, -2.0], "3 + 1, 0 + 2 (SGD, rate 1)");
    let dense = |grad: [f32; 2]| {
        let bytes = le(&grad);
        let pushes = [DensePush { name: "d", encoding: Compression::None, bytes: &bytes, version: Some(0) }];
        store.push_dense_versioned(&pushes).unwrap()[0]
    };
    dense([2.0, 2.0]);
    assert_eq!(dense([4.0, 0.0]).version, 1);
    assert_eq!(store.pull_dense("d").unwrap().0, vec![-6.0, -2.0]);
}
