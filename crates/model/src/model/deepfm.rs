//! DeepFM (Guo et al. 2017): an FM over the sparse rows plus an MLP over the concatenated field
//! embeddings, sharing the embeddings. The MLP's passes are in [`super::mlp`].
//!
//! logit = FM(x) + MLP([e_1, ..., e_F]), e_f = sum over field f's features of v_i x_i.
//!
//! The MLP's backward pass differentiates sum_b(out_b * dlogit_b), whose gradient is exactly
//! d loss / d params by the chain rule, so the loss itself stays in plain Rust and is shared with
//! LR/FM. Features whose field is >= `fields` take part in the FM but not the MLP.

use ember_core::eval::sigmoid;
use ember_core::SplitMix64;

use super::mlp::{Layer, MlpPass};
use super::{FmModel, Grads, IndexedBatch};

/// A DeepFM model's shape.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeepFm {
    /// Embedding width (shared with the FM part).
    pub k: usize,
    /// Fields feeding the MLP.
    pub fields: usize,
    /// Hidden layer widths; a final layer to 1 output is added.
    pub hidden: Vec<usize>,
}

/// Gradients of a batch: sparse (FM + MLP input) and one per dense layer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeepFmGrads {
    /// Linear weights and embeddings per batch key.
    pub sparse: Grads,
    /// Per layer, same shapes as the parameters.
    pub dense: Vec<Layer>,
}

impl DeepFm {
    fn fm(&self) -> FmModel {
        FmModel { k: self.k }
    }

    /// (inputs, outputs) of every layer, the final 1-output layer included.
    pub fn layer_shapes(&self) -> Vec<(usize, usize)> {
        let mut shapes = Vec::new();
        let mut inputs = self.fields * self.k;
        for &h in &self.hidden {
            shapes.push((inputs, h));
            inputs = h;
        }
        shapes.push((inputs, 1));
        shapes
    }

    /// He-uniform weights for the ReLU layers, a small uniform range for the output layer, zero
    /// biases; a pure function of `seed`, so every worker proposes the same start.
    pub fn init_dense(&self, seed: u64) -> Vec<Layer> {
        let mut rng = SplitMix64::new(seed ^ 0xdee9_f00d);
        let shapes = self.layer_shapes();
        shapes
            .iter()
            .enumerate()
            .map(|(i, (inputs, outputs))| {
                let limit = if i + 1 == shapes.len() { 0.01 } else { (6.0 / *inputs as f32).sqrt() };
                let w = (0..inputs * outputs).map(|_| (rng.next_f32() * 2.0 - 1.0) * limit).collect();
                Layer { w, b: vec![0.0; *outputs] }
            })
            .collect()
    }

    /// The MLP input: per example, the field embeddings side by side (`len x fields*k`).
    fn field_inputs(&self, batch: &IndexedBatch, v: &[f32]) -> Vec<f32> {
        let (k, width) = (self.k, self.fields * self.k);
        let mut x = vec![0f32; batch.len() * width];
        for i in 0..batch.len() {
            let row = &mut x[i * width..(i + 1) * width];
            for f in batch.example(i).iter().filter(|f| (f.field as usize) < self.fields) {
                let dst = &mut row[f.field as usize * k..(f.field as usize + 1) * k];
                let src = &v[f.key as usize * k..(f.key as usize + 1) * k];
                for (d, s) in dst.iter_mut().zip(src) {
                    *d += s * f.value;
                }
            }
        }
        x
    }

    /// Runs the MLP forward, keeping its activations for a backward pass.
    fn mlp_forward(&self, batch: &IndexedBatch, v: &[f32], dense: &[Layer]) -> Result<MlpPass, String> {
        let shapes = self.layer_shapes();
        let fits = dense.len() == shapes.len()
            && shapes.iter().zip(dense).all(|((i, o), l)| l.w.len() == i * o && l.b.len() == *o);
        if !fits {
            return Err(format!("dense layers do not match the model's shapes {shapes:?}"));
        }
        Ok(MlpPass::forward(&shapes, dense, batch.len(), self.field_inputs(batch, v)))
    }

    /// Forward and backward: probabilities and the gradient of the summed logloss.
    pub fn train_batch(
        &self,
        batch: &IndexedBatch,
        w: &[f32],
        v: &[f32],
        dense: &[Layer],
    ) -> Result<(Vec<f32>, DeepFmGrads), String> {
        let fm = self.fm();
        let mut sums = vec![0f32; self.k * batch.len()];
        let fm_logits: Vec<f32> =
            (0..batch.len()).map(|i| fm.logit(batch, i, w, v, &mut sums[i * self.k..(i + 1) * self.k])).collect();
        let pass = self.mlp_forward(batch, v, dense)?;
        let probs: Vec<f32> = fm_logits.iter().zip(pass.logits()).map(|(a, b)| sigmoid(a + b)).collect();
        let dlogit: Vec<f32> = probs.iter().zip(&batch.labels).map(|(p, y)| p - y).collect();
        let (dx, dense_grads) = pass.backward(&self.layer_shapes(), dense, &dlogit);
        let mut sparse = Grads { w: vec![0.0; batch.keys.len()], v: vec![0.0; batch.keys.len() * self.k] };
        let (k, width) = (self.k, self.fields * self.k);
        for i in 0..batch.len() {
            fm.accumulate(batch, i, v, &sums[i * k..(i + 1) * k], dlogit[i], &mut sparse);
            let dxi = &dx[i * width..(i + 1) * width];
            for f in batch.example(i).iter().filter(|f| (f.field as usize) < self.fields) {
                let g = &mut sparse.v[f.key as usize * k..(f.key as usize + 1) * k];
                for (g, d) in g.iter_mut().zip(&dxi[f.field as usize * k..(f.field as usize + 1) * k]) {
                    *g += d * f.value;
                }
            }
        }
        Ok((probs, DeepFmGrads { sparse, dense: dense_grads }))
    }

    /// Probabilities only.
    pub fn predict(&self, batch: &IndexedBatch, w: &[f32], v: &[f32], dense: &[Layer]) -> Result<Vec<f32>, String> {
        let fm = self.fm();
        let mut sums = vec![0f32; self.k];
        let pass = self.mlp_forward(batch, v, dense)?;
        let mlp_logits = pass.logits();
        Ok((0..batch.len()).map(|i| sigmoid(fm.logit(batch, i, w, v, &mut sums) + mlp_logits[i])).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::{Example, Feature};
    use crate::model::gradcheck::assert_gradient;

    fn batch() -> IndexedBatch {
        let f = |field, id, value| Feature { field, id, value };
        IndexedBatch::new(&[
            Example { label: 1.0, features: vec![f(0, 1, 1.0), f(1, 2, 0.5), f(2, 3, 2.0)] },
            Example { label: 0.0, features: vec![f(0, 1, 1.0), f(1, 4, 1.5), f(1, 3, -1.0)] },
            Example { label: 1.0, features: vec![f(0, 5, 0.3), f(2, 2, 1.0), f(3, 6, 1.0)] },
        ])
    }

    /// The summed logloss the gradients are of.
    fn loss(m: &DeepFm, b: &IndexedBatch, w: &[f32], v: &[f32], dense: &[Layer]) -> f64 {
        ember_core::eval::logloss(&m.predict(b, w, v, dense).unwrap(), &b.labels) * b.len() as f64
    }

    #[test]
    fn deepfm_gradient_matches_finite_differences() {
        let m = DeepFm { k: 2, fields: 3, hidden: vec![4, 3] };
        let b = batch();
        let mut rng = SplitMix64::new(9);
        let w: Vec<f32> = (0..b.keys.len()).map(|_| rng.next_f32() - 0.5).collect();
        let v: Vec<f32> = (0..b.keys.len() * 2).map(|_| rng.next_f32() - 0.5).collect();
        // Larger output weights than the real init, so the MLP's share of the gradient is visible.
        let mut dense = m.init_dense(3);
        for l in &mut dense {
            l.w.iter_mut().for_each(|x| *x *= 3.0);
            l.b.iter_mut().for_each(|x| *x = rng.next_f32() * 0.2);
        }
        let (_, g) = m.train_batch(&b, &w, &v, &dense).unwrap();
        let tol = 3e-3;
        assert_gradient("v", &v, &g.sparse.v, tol, |p| loss(&m, &b, &w, p, &dense));
        assert_gradient("w", &w, &g.sparse.w, tol, |p| loss(&m, &b, p, &v, &dense));
        for (l, layer) in dense.iter().enumerate() {
            let with = |set: &dyn Fn(&mut Layer)| {
                let mut d = dense.clone();
                set(&mut d[l]);
                loss(&m, &b, &w, &v, &d)
            };
            assert_gradient(&format!("layer {l} w"), &layer.w, &g.dense[l].w, tol, |p| with(&|x| x.w = p.to_vec()));
            assert_gradient(&format!("layer {l} b"), &layer.b, &g.dense[l].b, tol, |p| with(&|x| x.b = p.to_vec()));
        }
        assert!(g.dense[0].w.iter().any(|x| *x != 0.0), "the MLP receives gradient");
    }
}
