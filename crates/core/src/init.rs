//! Deterministic per-key initializers.
//!
//! Invariant: `fill(seed, key, out)` depends only on its arguments. A new key's first row is the
//! same on any server and after any restart, and a read-only lookup of a missing key returns the
//! row a training pull would have created.

use crate::hash::{mix64, SplitMix64};

/// How a new row's values are drawn.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Initializer {
    /// All zeros (the usual choice for LR weights and FTRL).
    Zeros,
    /// Uniform in [low, high).
    Uniform {
        /// Inclusive lower bound.
        low: f32,
        /// Exclusive upper bound.
        high: f32,
    },
    /// Gaussian with the given mean and standard deviation.
    Normal {
        /// Mean.
        mean: f32,
        /// Standard deviation (>= 0).
        stddev: f32,
    },
}

impl Initializer {
    /// Whether the parameters are usable (finite, ordered, non-negative spread).
    pub fn validate(&self) -> Result<(), String> {
        match *self {
            Initializer::Zeros => Ok(()),
            Initializer::Uniform { low, high } => {
                if low.is_finite() && high.is_finite() && low <= high {
                    Ok(())
                } else {
                    Err(format!("uniform initializer needs finite low <= high, got [{low}, {high})"))
                }
            }
            Initializer::Normal { mean, stddev } => {
                if mean.is_finite() && stddev.is_finite() && stddev >= 0.0 {
                    Ok(())
                } else {
                    Err(format!("normal initializer needs finite mean and stddev >= 0, got N({mean}, {stddev})"))
                }
            }
        }
    }

    /// Writes the initial row of `key` in a table seeded with `seed` into `out`.
    pub fn fill(&self, seed: u64, key: u64, out: &mut [f32]) {
        match *self {
            Initializer::Zeros => out.fill(0.0),
            Initializer::Uniform { low, high } => {
                let mut rng = row_rng(seed, key);
                let span = high - low;
                for v in out.iter_mut() {
                    *v = low + span * rng.next_f32();
                }
            }
            Initializer::Normal { mean, stddev } => {
                let mut rng = row_rng(seed, key);
                // Box-Muller, two values per pair of uniforms.
                for pair in out.chunks_mut(2) {
                    let u1 = 1.0 - rng.next_f64(); // (0, 1]: ln is finite
                    let u2 = rng.next_f64();
                    let r = (-2.0 * u1.ln()).sqrt();
                    let theta = std::f64::consts::TAU * u2;
                    pair[0] = mean + stddev * (r * theta.cos()) as f32;
                    if let Some(second) = pair.get_mut(1) {
                        *second = mean + stddev * (r * theta.sin()) as f32;
                    }
                }
            }
        }
    }
}

fn row_rng(seed: u64, key: u64) -> SplitMix64 {
    SplitMix64::new(mix64(seed ^ mix64(key.wrapping_add(0x5851_f42d_4c95_7f2d))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_and_key_give_the_same_row() {
        for init in [Initializer::Uniform { low: -0.1, high: 0.1 }, Initializer::Normal { mean: 0.0, stddev: 0.01 }] {
            let (mut a, mut b, mut c) = ([0f32; 7], [0f32; 7], [0f32; 7]);
            init.fill(42, 123_456, &mut a);
            init.fill(42, 123_456, &mut b);
            init.fill(43, 123_456, &mut c);
            assert_eq!(a, b);
            assert_ne!(a, c, "a different seed must give a different row");
            assert!(a.iter().any(|v| *v != 0.0));
        }
    }

    #[test]
    fn distributions_have_the_requested_moments() {
        let n = 20_000;
        let mut row = [0f32; 4];
        let (mut sum, mut sq, mut lo, mut hi) = (0f64, 0f64, f32::MAX, f32::MIN);
        let normal = Initializer::Normal { mean: 1.0, stddev: 0.5 };
        let uniform = Initializer::Uniform { low: -0.2, high: 0.3 };
        for key in 0..n {
            normal.fill(9, key, &mut row);
            for v in row {
                sum += f64::from(v);
                sq += f64::from(v) * f64::from(v);
            }
            uniform.fill(9, key, &mut row);
            lo = row.iter().fold(lo, |a, b| a.min(*b));
            hi = row.iter().fold(hi, |a, b| a.max(*b));
        }
        let count = (n * 4) as f64;
        let mean = sum / count;
        let std = (sq / count - mean * mean).sqrt();
        assert!((mean - 1.0).abs() < 0.01, "mean {mean}");
        assert!((std - 0.5).abs() < 0.01, "std {std}");
        assert!(lo >= -0.2 && hi < 0.3 && lo < -0.19 && hi > 0.29, "[{lo}, {hi}]");
    }

    #[test]
    fn zeros_and_validation() {
        let mut row = [1f32; 3];
        Initializer::Zeros.fill(1, 2, &mut row);
        assert_eq!(row, [0.0; 3]);
        assert!(Initializer::Uniform { low: 1.0, high: 0.0 }.validate().is_err());
        assert!(Initializer::Normal { mean: 0.0, stddev: f32::NAN }.validate().is_err());
    }
}
