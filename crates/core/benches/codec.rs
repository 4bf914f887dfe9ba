//! Gradient codec cost on a DeepFM dense push (113,409 values: the MLP 312 -> 256 -> 128 -> 1
//! plus biases), per encoding: the worker's encode (with its residual) and the server's decode.
//! Criterion reports values/s (elements); compare each encoding with `none` from the same run.

#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ember_core::codec::{decode, encode_with_residual, Compression};
use ember_core::SplitMix64;

const VALUES: usize = 312 * 256 + 256 + 256 * 128 + 128 + 128 + 1;

fn codec_benches(c: &mut Criterion) {
    let mut rng = SplitMix64::new(1);
    let gradient: Vec<f32> = (0..VALUES).map(|_| (rng.next_f32() - 0.5) * 1e-3).collect();
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(VALUES as u64));
    for (name, encoding) in [("none", Compression::None), ("fp16", Compression::Fp16), ("onebit", Compression::Onebit)]
    {
        let mut residual = vec![0f32; VALUES];
        group.bench_function(format!("encode_{name}"), |b| {
            b.iter(|| encode_with_residual(encoding, &gradient, &mut residual))
        });
        let bytes = encode_with_residual(encoding, &gradient, &mut residual);
        group.bench_function(format!("decode_{name}"), |b| b.iter(|| decode(encoding, &bytes, VALUES).unwrap()));
    }
    group.finish();
}

criterion_group!(benches, codec_benches);
criterion_main!(benches);
