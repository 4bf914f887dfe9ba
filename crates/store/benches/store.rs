//! In-process store throughput: pull and push of 4096-key batches (dim 16) over 1M preloaded
//! rows, uniform keys. Criterion reports rows/s (elements).

#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ember_core::{Initializer, Optimizer, SplitMix64, TableSpec};
use ember_store::{Store, StoreConfig};

const KEYS: u64 = 1_000_000;
const BATCH: usize = 4096;
const DIM: u32 = 16;

fn preloaded(optimizer: Optimizer) -> Store {
    let store = Store::new(StoreConfig::default());
    let spec =
        TableSpec::sparse("t", DIM, optimizer).with_initializer(Initializer::Uniform { low: -0.01, high: 0.01 }, 1);
    store.create_table(spec, None).unwrap();
    let keys: Vec<u64> = (0..KEYS).collect();
    for chunk in keys.chunks(65_536) {
        store.pull("t", chunk).unwrap();
    }
    store
}

fn batches(seed: u64) -> impl FnMut() -> Vec<u64> {
    let mut rng = SplitMix64::new(seed);
    move || (0..BATCH).map(|_| rng.below(KEYS)).collect()
}

fn store_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("store");
    group.throughput(Throughput::Elements(BATCH as u64));
    let store = preloaded(Optimizer::Adagrad { learning_rate: 0.05, initial_accumulator: 0.1, epsilon: 1e-7 });
    group.bench_function("pull_4096x16", |b| {
        b.iter_batched(batches(1), |keys| store.pull("t", &keys).unwrap(), BatchSize::SmallInput)
    });
    let grads: Vec<u8> = (0..BATCH * DIM as usize).flat_map(|i| ((i % 7) as f32 * 1e-3).to_le_bytes()).collect();
    group.bench_function("push_adagrad_4096x16", |b| {
        b.iter_batched(batches(2), |keys| store.push("t", &keys, &grads).unwrap(), BatchSize::SmallInput)
    });
    let ftrl = preloaded(Optimizer::Ftrl { alpha: 0.05, beta: 1.0, l1: 0.1, l2: 0.1 });
    group.bench_function("push_ftrl_4096x16", |b| {
        b.iter_batched(batches(3), |keys| ftrl.push("t", &keys, &grads).unwrap(), BatchSize::SmallInput)
    });
    group.finish();
}

criterion_group!(benches, store_benches);
criterion_main!(benches);
