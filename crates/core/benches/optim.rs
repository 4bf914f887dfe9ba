//! The server's optimizer step on rows of dim 16 (a `bench ps` push of 4096 keys), per
//! optimizer: `apply` (which also counts coordinates that overflowed to NaN or Inf) against
//! `unguarded`, the plain in-place update it replaced, in the same run. Criterion reports rows/s.

#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ember_core::{Optimizer, SplitMix64};

const DIM: usize = 16;
const ROWS: usize = 4096;

/// The update without the finiteness guard (the code before issue 21), for the comparison.
/// Not inlined: like `Optimizer::apply`, the store calls it across crates, once per row, with
/// the row's length known only at run time.
#[inline(never)]
fn unguarded(opt: Optimizer, w: &mut [f32], s: &mut [f32], g: &[f32], step: u64) {
    match opt {
        Optimizer::Sgd { learning_rate } => {
            for (w, g) in w.iter_mut().zip(g) {
                *w -= learning_rate * g;
            }
        }
        Optimizer::Adagrad { learning_rate, epsilon, .. } => {
            for ((w, acc), g) in w.iter_mut().zip(s.iter_mut()).zip(g) {
                *acc += g * g;
                *w -= learning_rate * g / (acc.sqrt() + epsilon);
            }
        }
        Optimizer::Ftrl { alpha, beta, l1, l2 } => {
            let (z, n) = s.split_at_mut(w.len());
            let inv_alpha = 1.0 / alpha;
            for (((w, z), n), &g) in w.iter_mut().zip(z).zip(n).zip(g) {
                let n_new = *n + g * g;
                let sigma = (n_new.sqrt() - n.sqrt()) * inv_alpha;
                *z += g - sigma * *w;
                *n = n_new;
                *w = if z.abs() <= l1 {
                    0.0
                } else {
                    -(*z - l1.copysign(*z)) / ((beta + n_new.sqrt()) * inv_alpha + l2)
                };
            }
        }
        Optimizer::Adam { learning_rate, beta1, beta2, epsilon } => {
            let t = i32::try_from(step.max(1)).unwrap_or(i32::MAX);
            let c1 = 1.0 - f64::from(beta1).powi(t);
            let c2 = 1.0 - f64::from(beta2).powi(t);
            let step_size = (f64::from(learning_rate) * c2.sqrt() / c1) as f32;
            let eps = (f64::from(epsilon) * c2.sqrt()) as f32;
            let (m, v) = s.split_at_mut(w.len());
            for (((w, m), v), &g) in w.iter_mut().zip(m).zip(v).zip(g) {
                *m = beta1 * *m + (1.0 - beta1) * g;
                *v = beta2 * *v + (1.0 - beta2) * g * g;
                *w -= step_size * *m / (v.sqrt() + eps);
            }
        }
    }
}

fn optim_benches(c: &mut Criterion) {
    let mut rng = SplitMix64::new(1);
    let grads: Vec<f32> = (0..ROWS * DIM).map(|_| (rng.next_f32() - 0.5) * 1e-2).collect();
    let mut group = c.benchmark_group("optim");
    group.throughput(Throughput::Elements(ROWS as u64));
    let opts = [
        Optimizer::Sgd { learning_rate: 0.1 },
        Optimizer::Adagrad { learning_rate: 0.1, initial_accumulator: 0.1, epsilon: 1e-7 },
        Optimizer::Ftrl { alpha: 0.1, beta: 1.0, l1: 0.1, l2: 0.1 },
        Optimizer::Adam { learning_rate: 0.01, beta1: 0.9, beta2: 0.999, epsilon: 1e-8 },
    ];
    for opt in opts {
        let state_len = opt.state_len(DIM);
        let mut weights = vec![0.01f32; ROWS * DIM];
        let mut state = vec![0.1f32; ROWS * state_len];
        group.bench_function(format!("{}_guarded", opt.name()), |b| {
            b.iter(|| {
                for r in 0..ROWS {
                    let (w, s) = (&mut weights[r * DIM..(r + 1) * DIM], &mut state[r * state_len..(r + 1) * state_len]);
                    std::hint::black_box(opt).apply(w, s, &grads[r * DIM..(r + 1) * DIM], 3);
                }
            })
        });
        group.bench_function(format!("{}_unguarded", opt.name()), |b| {
            b.iter(|| {
                for r in 0..ROWS {
                    let (w, s) = (&mut weights[r * DIM..(r + 1) * DIM], &mut state[r * state_len..(r + 1) * state_len]);
                    unguarded(std::hint::black_box(opt), w, s, &grads[r * DIM..(r + 1) * DIM], 3);
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, optim_benches);
criterion_main!(benches);
