//! Models over rows pulled from the ps-servers.
//!
//! A mini-batch is first indexed: its distinct feature ids become one key list (pulled once,
//! pushed once) and each example's features become positions into it. Models then read rows by
//! position and accumulate gradients per position, so duplicate ids within a batch sum their
//! gradients before they go on the wire.
//!
//! Gradients are of the summed (not averaged) logloss over the batch: per-coordinate optimizers
//! (FTRL, Adagrad) then see the same per-example gradient scale as online learners do.

pub mod deepfm;
pub mod fm;
mod mlp;

use ember_core::U64Map;

use crate::features::{bias_id, Example};

pub use deepfm::{DeepFm, DeepFmGrads};
pub use fm::{FmModel, Grads};
pub use mlp::Layer;

/// A mini-batch with its features mapped to positions in a deduplicated key list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IndexedBatch {
    /// Distinct feature ids; position 0 is the bias.
    pub keys: Vec<u64>,
    /// Labels, one per example.
    pub labels: Vec<f32>,
    /// Example `i`'s features are `features[offsets[i]..offsets[i + 1]]`.
    pub offsets: Vec<u32>,
    /// (position in `keys`, value, field).
    pub features: Vec<IndexedFeature>,
}

/// One feature of an indexed example.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IndexedFeature {
    /// Position of the feature id in the batch's key list.
    pub key: u32,
    /// Feature value.
    pub value: f32,
    /// Field number.
    pub field: u32,
}

impl IndexedBatch {
    /// Indexes `examples`.
    pub fn new(examples: &[Example]) -> Self {
        let occurrences: usize = examples.iter().map(|e| e.features.len()).sum();
        // Sized for every occurrence being distinct, so the map never rehashes mid-batch.
        let mut position: U64Map<u32> = U64Map::with_capacity_and_hasher(occurrences + 1, Default::default());
        let mut keys = Vec::with_capacity(occurrences + 1);
        keys.push(bias_id());
        position.insert(bias_id(), 0);
        let mut offsets = Vec::with_capacity(examples.len() + 1);
        let mut features = Vec::with_capacity(occurrences);
        offsets.push(0);
        for ex in examples {
            for f in &ex.features {
                let key = *position.entry(f.id).or_insert_with(|| {
                    keys.push(f.id);
                    (keys.len() - 1) as u32
                });
                features.push(IndexedFeature { key, value: f.value, field: f.field });
            }
            offsets.push(features.len() as u32);
        }
        Self { keys, labels: examples.iter().map(|e| e.label).collect(), offsets, features }
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when there are no examples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Features of example `i`.
    #[inline]
    pub fn example(&self, i: usize) -> &[IndexedFeature] {
        &self.features[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }
}

/// Support for the models' gradient checks.
#[cfg(test)]
pub(crate) mod gradcheck {
    /// Asserts that every `analytic[j]` is within `tol` of the central difference (step 1e-2) of
    /// `loss` at `params`. The models' logits are low-degree polynomials or piecewise-linear in
    /// each parameter, so truncation error is small and `tol` mostly covers f32 rounding.
    pub fn assert_gradient(name: &str, params: &[f32], analytic: &[f32], tol: f64, loss: impl Fn(&[f32]) -> f64) {
        assert_eq!(params.len(), analytic.len(), "{name}: one gradient per parameter");
        let eps = 1e-2f32;
        for j in 0..params.len() {
            let (mut hi, mut lo) = (params.to_vec(), params.to_vec());
            hi[j] += eps;
            lo[j] -= eps;
            let numeric = (loss(&hi) - loss(&lo)) / (2.0 * f64::from(eps));
            assert!(
                (numeric - f64::from(analytic[j])).abs() < tol,
                "{name}[{j}]: numeric {numeric} analytic {}",
                analytic[j]
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::Feature;

    #[test]
    fn duplicate_ids_share_one_position() {
        let f = |id| Feature { field: 0, id, value: 1.0 };
        let batch = IndexedBatch::new(&[
            Example { label: 1.0, features: vec![f(7), f(9)] },
            Example { label: 0.0, features: vec![f(9), f(7), f(11)] },
        ]);
        assert_eq!(batch.keys, vec![bias_id(), 7, 9, 11]);
        assert_eq!(batch.example(1).iter().map(|f| f.key).collect::<Vec<_>>(), vec![2, 1, 3]);
        assert_eq!(batch.len(), 2);
    }
}
