//! Replica segments (memory-mapped, sorted keys) against the store's DRAM pull on the same 1M
//! rows of dim 16: reading 4096 uniform random rows through the segment's sampled index, through
//! a plain binary search over its keys (the lookup before the index), and from the store; and
//! opening a segment (map + checksum + index).
//! The page cache holds the file, as it does on a replica whose segments fit in memory.

#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ember_core::{Initializer, Optimizer, SplitMix64, TableSpec};
use ember_store::{Segment, SegmentWriter, Store, StoreConfig};

const KEYS: u64 = 1_000_000;
const BATCH: usize = 4096;
const DIM: usize = 16;

fn segment_benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.seg");
    let mut writer = SegmentWriter::create(&path, DIM).unwrap();
    let row: Vec<f32> = (0..DIM).map(|j| j as f32 * 0.01).collect();
    for key in 0..KEYS {
        writer.push(key * 7 + 3, &row).unwrap();
    }
    writer.finish().unwrap();
    let segment = Segment::open(&path).unwrap();

    let store = Store::new(StoreConfig::default());
    let spec = TableSpec::sparse("t", DIM as u32, Optimizer::Sgd { learning_rate: 0.1 })
        .with_initializer(Initializer::Uniform { low: -0.01, high: 0.01 }, 1);
    store.create_table(spec, None).unwrap();
    let keys: Vec<u64> = (0..KEYS).map(|k| k * 7 + 3).collect();
    for chunk in keys.chunks(65_536) {
        store.pull("t", chunk).unwrap();
    }

    let mut group = c.benchmark_group("segment");
    group.throughput(Throughput::Elements(BATCH as u64));
    let batch = |seed: u64| {
        let mut rng = SplitMix64::new(seed);
        move || (0..BATCH).map(|_| rng.below(KEYS) * 7 + 3).collect::<Vec<u64>>()
    };
    group.bench_function("segment_get_4096x16", |b| {
        b.iter_batched(
            batch(1),
            |keys| {
                let mut out = Vec::with_capacity(BATCH * DIM);
                for key in keys {
                    out.extend_from_slice(segment.get(key).unwrap());
                }
                out
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("segment_binary_search_4096x16", |b| {
        b.iter_batched(
            batch(1),
            |keys| {
                let mut out = Vec::with_capacity(BATCH * DIM);
                for key in keys {
                    let i = segment.keys().binary_search(&key).unwrap();
                    out.extend_from_slice(segment.row(i).1);
                }
                out
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("store_lookup_4096x16", |b| {
        b.iter_batched(batch(1), |keys| store.lookup("t", &keys).unwrap(), BatchSize::SmallInput)
    });
    group.finish();

    let mut open = c.benchmark_group("segment_open");
    open.sample_size(10);
    open.throughput(Throughput::Elements(KEYS));
    open.bench_function("open_1m_rows_x16", |b| b.iter(|| Segment::open(&path).unwrap().len()));
    open.finish();
}

criterion_group!(benches, segment_benches);
criterion_main!(benches);
