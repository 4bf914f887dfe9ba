//! Model step cost on the real shapes: a batch of 512 Criteo-like examples (39 fields, k = 8),
//! forward + backward, for FM and DeepFM (MLP 312 -> 256 -> 128 -> 1). Criterion
//! reports examples/s (elements).

#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ember_core::SplitMix64;
use ember_worker::features::{Example, Feature};
use ember_worker::model::{DeepFm, FmModel, IndexedBatch};

fn batch(n: usize) -> IndexedBatch {
    let mut rng = SplitMix64::new(1);
    let examples: Vec<Example> = (0..n)
        .map(|_| Example {
            label: f32::from(rng.below(4) == 0),
            features: (0..39)
                .map(|field| Feature { field, id: rng.below(5_000) + u64::from(field) * 10_000, value: 1.0 })
                .collect(),
        })
        .collect();
    IndexedBatch::new(&examples)
}

fn model_benches(c: &mut Criterion) {
    let b = batch(512);
    let mut rng = SplitMix64::new(2);
    let w: Vec<f32> = (0..b.keys.len()).map(|_| rng.next_f32() * 0.01).collect();
    let v: Vec<f32> = (0..b.keys.len() * 8).map(|_| rng.next_f32() * 0.01).collect();
    let mut group = c.benchmark_group("model");
    group.throughput(Throughput::Elements(512));
    group.bench_function("index_batch_512", |bench| {
        let mut rng = SplitMix64::new(3);
        let examples: Vec<Example> = (0..512)
            .map(|_| Example {
                label: 0.0,
                features: (0..39).map(|field| Feature { field, id: rng.below(1 << 30), value: 1.0 }).collect(),
            })
            .collect();
        bench.iter(|| IndexedBatch::new(&examples))
    });
    let fm = FmModel { k: 8 };
    group.bench_function("fm_train_512", |bench| bench.iter(|| fm.train_batch(&b, &w, &v)));
    let deepfm = DeepFm { k: 8, fields: 39, hidden: vec![256, 128] };
    let dense = deepfm.init_dense(1);
    group.bench_function("deepfm_train_512", |bench| bench.iter(|| deepfm.train_batch(&b, &w, &v, &dense).unwrap()));
    group.finish();
}

criterion_group!(benches, model_benches);

/// Parsing and hashing Criteo lines (the reader thread's work per example).
fn parse_benches(c: &mut Criterion) {
    use ember_core::job::{DataFormat, DataSpec};
    use ember_worker::reader::LineParser;
    let mut data = Vec::new();
    ember_worker::synth::generate(
        ember_worker::synth::SynthConfig { rows: 4096, seed: 1, window: None },
        &mut data,
        None,
    )
    .unwrap();
    let text = String::from_utf8(data).unwrap();
    let spec = DataSpec { max_bad_ratio: 0.0, ..DataSpec::of(DataFormat::Criteo, None) };
    let parser = LineParser::new(&spec, &[]).unwrap();
    let mut group = c.benchmark_group("reader");
    group.throughput(Throughput::Elements(4096));
    group.bench_function("parse_criteo_4096", |b| {
        b.iter(|| text.lines().map(|l| parser.parse(l).unwrap().features.len()).sum::<usize>())
    });
    group.finish();
}

criterion_group!(parse, parse_benches);
criterion_main!(benches, parse);
