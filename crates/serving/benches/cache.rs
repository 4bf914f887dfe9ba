//! The serving row cache against dashmap (issue 22, item 7: the card names dashmap, and serving's
//! cache is its natural home). One request's keys (64 samples x 39 fields) are looked up and then
//! inserted, as a serving node does on a miss; `TableCache` takes each of its 16 shard locks once
//! per request, a `DashMap` one shard lock per key. Run on 1 thread and on 2 threads at once
//! (this machine's cores), each thread with its own keys over one shared cache.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use dashmap::DashMap;
use ember_core::SplitMix64;
use ember_serving::cache::TableCache;

const DIM: usize = 9;
const KEYS: usize = 64 * 39;

struct Entry {
    values: Box<[f32]>,
    at: Instant,
}

fn dash_get(map: &DashMap<u64, Entry>, keys: &[u64], now: Instant, ttl: Duration, out: &mut [f32]) -> Vec<usize> {
    let mut misses = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        match map.get(k) {
            Some(e) if now.saturating_duration_since(e.at) < ttl => {
                out[i * DIM..(i + 1) * DIM].copy_from_slice(&e.values);
            }
            _ => misses.push(i),
        }
    }
    misses
}

fn dash_insert(map: &DashMap<u64, Entry>, keys: &[u64], values: &[f32], now: Instant) {
    for (i, k) in keys.iter().enumerate() {
        map.insert(*k, Entry { values: values[i * DIM..(i + 1) * DIM].into(), at: now });
    }
}

fn requests(seed: u64, n: usize) -> Vec<Vec<u64>> {
    let mut rng = SplitMix64::new(seed);
    // Keys from a space of 200k, so most requests hit after warm-up and some miss.
    (0..n).map(|_| (0..KEYS).map(|_| rng.next_u64() % 200_000).collect()).collect()
}

fn bench(c: &mut Criterion) {
    let ttl = Duration::from_secs(60);
    let values = vec![0.5f32; KEYS * DIM];
    let reqs = requests(1, 64);
    let mut group = c.benchmark_group("serving_cache_request");
    for threads in [1usize, 2] {
        let cache = Arc::new(TableCache::new(DIM, 1 << 20, ttl));
        let dash: Arc<DashMap<u64, Entry>> = Arc::new(DashMap::new());
        let per_thread: Vec<Arc<Vec<Vec<u64>>>> = (0..threads).map(|t| Arc::new(requests(t as u64 + 1, 64))).collect();
        group.bench_function(format!("table_cache/{threads}t"), |b| {
            b.iter_custom(|iters| {
                let started = Instant::now();
                std::thread::scope(|s| {
                    for reqs in &per_thread {
                        let (cache, reqs, values) = (Arc::clone(&cache), Arc::clone(reqs), &values);
                        s.spawn(move || {
                            let mut out = vec![0f32; KEYS * DIM];
                            for i in 0..iters as usize {
                                let keys = &reqs[i % reqs.len()];
                                let now = Instant::now();
                                let misses = cache.get(keys, now, &mut out);
                                if !misses.is_empty() {
                                    cache.insert(keys, values, now);
                                }
                            }
                        });
                    }
                });
                started.elapsed()
            })
        });
        group.bench_function(format!("dashmap/{threads}t"), |b| {
            b.iter_custom(|iters| {
                let started = Instant::now();
                std::thread::scope(|s| {
                    for reqs in &per_thread {
                        let (dash, reqs, values) = (Arc::clone(&dash), Arc::clone(reqs), &values);
                        s.spawn(move || {
                            let mut out = vec![0f32; KEYS * DIM];
                            for i in 0..iters as usize {
                                let keys = &reqs[i % reqs.len()];
                                let now = Instant::now();
                                let misses = dash_get(&dash, keys, now, ttl, &mut out);
                                if !misses.is_empty() {
                                    dash_insert(&dash, keys, values, now);
                                }
                            }
                        });
                    }
                });
                started.elapsed()
            })
        });
    }
    drop(reqs);
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
