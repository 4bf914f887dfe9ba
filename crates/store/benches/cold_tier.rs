//! RocksDB cold-tier reads: `get_many` of 256-key batches over 2M records of 176 bytes (a
//! dim-16 Adagrad row), keys scattered as hashed feature ids are. The records are written in
//! demotion-sized batches, so the last ones still sit in the write buffer as they do in a
//! serving ps. `present` reads keys that have records (cold hits); `absent` reads keys that
//! never had one (a new feature's first pull). Criterion reports keys/s (elements).

#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ember_core::SplitMix64;
use ember_store::tier::{ColdTier, RocksCold};

const RECORDS: u64 = 2_000_000;
const RECORD_BYTES: usize = 176;
const BATCH: usize = 256;
const WRITE_BATCH: u64 = 50_000;

/// Scatters ids over the key space the way hashing does (a bijection, so ids stay distinct).
fn scattered(id: u64) -> u64 {
    id.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

fn cold_tier_benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let cold = RocksCold::open_empty(dir.path()).unwrap();
    cold.open_table("t").unwrap();
    for start in (0..RECORDS).step_by(WRITE_BATCH as usize) {
        let puts: Vec<(u64, Vec<u8>)> =
            (start..(start + WRITE_BATCH).min(RECORDS)).map(|id| (scattered(id), vec![7; RECORD_BYTES])).collect();
        cold.write("t", &puts, &[]).unwrap();
    }
    let mut group = c.benchmark_group("cold_tier");
    group.throughput(Throughput::Elements(BATCH as u64));
    let mut rng = SplitMix64::new(1);
    group.bench_function("get_many_present_256", |b| {
        b.iter_batched(
            || (0..BATCH).map(|_| scattered(rng.below(RECORDS))).collect::<Vec<u64>>(),
            |keys| cold.get_many("t", &keys).unwrap(),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("get_many_absent_256", |b| {
        b.iter_batched(
            || (0..BATCH).map(|_| scattered(RECORDS + rng.below(RECORDS))).collect::<Vec<u64>>(),
            |keys| cold.get_many("t", &keys).unwrap(),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, cold_tier_benches);
criterion_main!(benches);
