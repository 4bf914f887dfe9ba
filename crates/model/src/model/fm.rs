//! Logistic regression and 2-way factorization machines (Rendle 2010) over pulled rows.
//!
//! logit(x) = w_bias + sum_i w_i x_i + 1/2 sum_f [(sum_i v_if x_i)^2 - sum_i v_if^2 x_i^2]
//!
//! With `k = 0` the pairwise term vanishes and this is logistic regression. Gradients are
//! closed-form: d logit / d w_i = x_i, d logit / d v_if = x_i (sum_j v_jf x_j) - v_if x_i^2.

use ember_core::eval::sigmoid;

use super::IndexedBatch;

/// Gradients per batch key: `w` one per key, `v` `k` per key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Grads {
    /// Linear weights (position 0: bias).
    pub w: Vec<f32>,
    /// Embeddings.
    pub v: Vec<f32>,
}

/// LR (`k = 0`) or FM (`k > 0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FmModel {
    /// Embedding width; 0 for LR.
    pub k: usize,
}

impl FmModel {
    /// The logit of example `i`, with `w` one weight per batch key and `v` `k` per batch key.
    /// `sums` (length k) receives sum_j v_jf x_j for the backward pass.
    pub fn logit(&self, batch: &IndexedBatch, i: usize, w: &[f32], v: &[f32], sums: &mut [f32]) -> f32 {
        let feats = batch.example(i);
        let mut logit = w[0];
        for f in feats {
            logit += w[f.key as usize] * f.value;
        }
        if self.k > 0 {
            let k = self.k;
            sums.fill(0.0);
            let mut sq = 0.0f32;
            for f in feats {
                let row = &v[f.key as usize * k..(f.key as usize + 1) * k];
                for (s, vf) in sums.iter_mut().zip(row) {
                    let t = vf * f.value;
                    *s += t;
                    sq += t * t;
                }
            }
            logit += 0.5 * (sums.iter().map(|s| s * s).sum::<f32>() - sq);
        }
        logit
    }

    /// Adds d loss / d params of example `i` to `grads`, where `dlogit` = d loss / d logit and
    /// `sums` is what [`Self::logit`] left for that example.
    pub fn accumulate(&self, batch: &IndexedBatch, i: usize, v: &[f32], sums: &[f32], dlogit: f32, grads: &mut Grads) {
        grads.w[0] += dlogit;
        let k = self.k;
        for f in batch.example(i) {
            let p = f.key as usize;
            grads.w[p] += dlogit * f.value;
            if k > 0 {
                let row = &v[p * k..(p + 1) * k];
                let grow = &mut grads.v[p * k..(p + 1) * k];
                let x = f.value;
                for ((g, vf), s) in grow.iter_mut().zip(row).zip(sums) {
                    *g += dlogit * (x * s - vf * x * x);
                }
            }
        }
    }

    /// Forward and backward over a batch: returns each example's probability and the gradient of
    /// the summed logloss per batch key.
    pub fn train_batch(&self, batch: &IndexedBatch, w: &[f32], v: &[f32]) -> (Vec<f32>, Grads) {
        let mut grads = Grads { w: vec![0.0; batch.keys.len()], v: vec![0.0; batch.keys.len() * self.k] };
        let mut sums = vec![0f32; self.k];
        let probs = (0..batch.len())
            .map(|i| {
                let p = sigmoid(self.logit(batch, i, w, v, &mut sums));
                self.accumulate(batch, i, v, &sums, p - batch.labels[i], &mut grads);
                p
            })
            .collect();
        (probs, grads)
    }

    /// Probabilities only.
    pub fn predict(&self, batch: &IndexedBatch, w: &[f32], v: &[f32]) -> Vec<f32> {
        let mut sums = vec![0f32; self.k];
        (0..batch.len()).map(|i| sigmoid(self.logit(batch, i, w, v, &mut sums))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::{Example, Feature};
    use crate::model::gradcheck::assert_gradient;
    use ember_core::SplitMix64;

    fn batch() -> IndexedBatch {
        let f = |field, id, value| Feature { field, id, value };
        IndexedBatch::new(&[
            Example { label: 1.0, features: vec![f(0, 1, 1.0), f(1, 2, 0.5), f(2, 3, 2.0)] },
            Example { label: 0.0, features: vec![f(0, 1, 1.0), f(1, 4, 1.5), f(2, 3, -1.0)] },
            Example { label: 1.0, features: vec![f(0, 5, 0.3), f(1, 2, 1.0)] },
        ])
    }

    /// The summed logloss the gradients are of.
    fn loss(model: &FmModel, b: &IndexedBatch, w: &[f32], v: &[f32]) -> f64 {
        ember_core::eval::logloss(&model.predict(b, w, v), &b.labels) * b.len() as f64
    }

    fn check(model: FmModel) {
        let b = batch();
        let mut rng = SplitMix64::new(5);
        let w: Vec<f32> = (0..b.keys.len()).map(|_| rng.next_f32() - 0.5).collect();
        let v: Vec<f32> = (0..b.keys.len() * model.k).map(|_| rng.next_f32() - 0.5).collect();
        let (_, Grads { w: gw, v: gv }) = model.train_batch(&b, &w, &v);
        assert_gradient("w", &w, &gw, 2e-3, |p| loss(&model, &b, p, &v));
        assert_gradient("v", &v, &gv, 2e-3, |p| loss(&model, &b, &w, p));
    }

    #[test]
    fn lr_gradient_matches_finite_differences() {
        check(FmModel { k: 0 });
    }

    #[test]
    fn fm_gradient_matches_finite_differences() {
        check(FmModel { k: 4 });
    }
}
