//! Server-side optimizers, applied in place to one row (or one dense vector) at a time.
//!
//! A row is `dim` weights plus `state_len(dim)` f32 of optimizer state, laid out by the store.
//! Invariants: `apply` only sees finite gradients (the store rejects NaN/Inf before any row is
//! touched) and counts the coordinates its update overflowed, which the caller repairs before
//! anyone reads the row; `step` is the number of updates the row has received including this one (>= 1), which
//! is what Adam's bias correction needs for rows that are updated sparsely.
//!
//! FTRL keeps (z, n) as state and derives the weight from them (McMahan et al. 2013, Algorithm 1,
//! per-coordinate). So that a table may start from a non-zero initializer, a new row's z is set to
//! the value for which the closed form reproduces the initial weight while n = 0.

/// An optimizer and its hyper-parameters. In job files it is a table with a `kind` key
/// (`sgd`, `adagrad`, `ftrl`, `adam`) and the parameters; omitted ones take the defaults below.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Optimizer {
    /// w -= lr * g.
    Sgd {
        /// Learning rate.
        learning_rate: f32,
    },
    /// acc += g^2; w -= lr * g / (sqrt(acc) + epsilon).
    Adagrad {
        /// Learning rate.
        learning_rate: f32,
        /// Starting value of the accumulator (default 0.1).
        #[serde(default = "defaults::initial_accumulator")]
        initial_accumulator: f32,
        /// Added to the denominator (default 1e-7).
        #[serde(default = "defaults::epsilon")]
        epsilon: f32,
    },
    /// FTRL-Proximal with per-coordinate learning rates.
    Ftrl {
        /// Learning-rate scale.
        alpha: f32,
        /// Learning-rate smoothing (default 1).
        #[serde(default = "defaults::one")]
        beta: f32,
        /// L1 regularization, drives weights to exact zero (default 0).
        #[serde(default)]
        l1: f32,
        /// L2 regularization (default 0).
        #[serde(default)]
        l2: f32,
    },
    /// Adam with bias correction; sparse rows use their own step count.
    Adam {
        /// Learning rate.
        learning_rate: f32,
        /// First-moment decay (default 0.9).
        #[serde(default = "defaults::beta1")]
        beta1: f32,
        /// Second-moment decay (default 0.999).
        #[serde(default = "defaults::beta2")]
        beta2: f32,
        /// Added to the denominator (default 1e-8).
        #[serde(default = "defaults::adam_epsilon")]
        epsilon: f32,
    },
}

mod defaults {
    pub fn initial_accumulator() -> f32 {
        0.1
    }
    pub fn epsilon() -> f32 {
        1e-7
    }
    pub fn one() -> f32 {
        1.0
    }
    pub fn beta1() -> f32 {
        0.9
    }
    pub fn beta2() -> f32 {
        0.999
    }
    pub fn adam_epsilon() -> f32 {
        1e-8
    }
}

impl Optimizer {
    /// Short lowercase name, for logs and metrics labels.
    pub fn name(&self) -> &'static str {
        match self {
            Optimizer::Sgd { .. } => "sgd",
            Optimizer::Adagrad { .. } => "adagrad",
            Optimizer::Ftrl { .. } => "ftrl",
            Optimizer::Adam { .. } => "adam",
        }
    }

    /// Largest learning rate (and FTRL alpha) accepted: far above any useful one, so a typo
    /// like 1e30 is refused instead of training rows to their overflow guard.
    pub const MAX_LEARNING_RATE: f32 = 100.0;
    /// Largest regularization, accumulator start or epsilon accepted.
    pub const MAX_PARAMETER: f32 = 1e6;

    /// Checks that every hyper-parameter is finite and in range.
    pub fn validate(&self) -> Result<(), String> {
        let finite_nonneg = |name: &str, v: f32| {
            let max = if name == "learning_rate" { Self::MAX_LEARNING_RATE } else { Self::MAX_PARAMETER };
            if v.is_finite() && v >= 0.0 && v <= max {
                Ok(())
            } else {
                Err(format!("{} {name} must be in [0, {max}], got {v}", self.name()))
            }
        };
        match *self {
            Optimizer::Sgd { learning_rate } => finite_nonneg("learning_rate", learning_rate),
            Optimizer::Adagrad { learning_rate, initial_accumulator, epsilon } => {
                finite_nonneg("learning_rate", learning_rate)?;
                finite_nonneg("initial_accumulator", initial_accumulator)?;
                finite_nonneg("epsilon", epsilon)?;
                if initial_accumulator + epsilon <= 0.0 {
                    return Err("adagrad needs initial_accumulator > 0 or epsilon > 0".into());
                }
                Ok(())
            }
            Optimizer::Ftrl { alpha, beta, l1, l2 } => {
                finite_nonneg("beta", beta)?;
                finite_nonneg("l1", l1)?;
                finite_nonneg("l2", l2)?;
                if !(alpha.is_finite() && alpha > 0.0 && alpha <= Self::MAX_LEARNING_RATE) {
                    return Err(format!("ftrl alpha must be in (0, {}], got {alpha}", Self::MAX_LEARNING_RATE));
                }
                if beta / alpha + l2 <= 0.0 {
                    return Err("ftrl needs beta > 0 or l2 > 0".into());
                }
                Ok(())
            }
            Optimizer::Adam { learning_rate, beta1, beta2, epsilon } => {
                finite_nonneg("learning_rate", learning_rate)?;
                finite_nonneg("epsilon", epsilon)?;
                for (name, b) in [("beta1", beta1), ("beta2", beta2)] {
                    if !(0.0..1.0).contains(&b) {
                        return Err(format!("adam {name} must be in [0, 1), got {b}"));
                    }
                }
                if epsilon <= 0.0 {
                    return Err("adam epsilon must be > 0".into());
                }
                Ok(())
            }
        }
    }

    /// f32 of optimizer state per row of `dim` weights.
    pub fn state_len(&self, dim: usize) -> usize {
        match self {
            Optimizer::Sgd { .. } => 0,
            Optimizer::Adagrad { .. } => dim,
            Optimizer::Ftrl { .. } | Optimizer::Adam { .. } => 2 * dim,
        }
    }

    /// Sets the state of a new row whose weights were just initialized.
    pub fn init_state(&self, weights: &[f32], state: &mut [f32]) {
        match *self {
            Optimizer::Sgd { .. } => {}
            Optimizer::Adagrad { initial_accumulator, .. } => state.fill(initial_accumulator),
            Optimizer::Ftrl { alpha, beta, l1, l2 } => {
                let (z, n) = state.split_at_mut(weights.len());
                n.fill(0.0);
                let denom = beta / alpha + l2;
                for (z, &w) in z.iter_mut().zip(weights) {
                    *z = if w == 0.0 { 0.0 } else { -(w * denom + l1.copysign(w)) };
                }
            }
            Optimizer::Adam { .. } => state.fill(0.0),
        }
    }

    /// Applies one (finite) gradient to a row. `step` counts this row's updates including this
    /// one. Returns the coordinates that came out NaN or Inf (see [`Self::apply_scaled`]).
    pub fn apply(&self, weights: &mut [f32], state: &mut [f32], grad: &[f32], step: u64) -> usize {
        self.apply_scaled(weights, state, grad, step, 1.0)
    }

    /// [`Self::apply`] with the step scaled by `lr_scale` (staleness-aware updates). SGD, Adagrad
    /// and Adam scale their learning rate; FTRL, whose per-coordinate rates come from the
    /// gradients themselves, scales the gradient.
    ///
    /// Finite gradients can still overflow (a large learning rate times 3e38 is Inf, and Inf
    /// minus Inf later NaN). The update counts, in the same pass, the coordinates whose new
    /// weight or state is not finite and returns that count; when it is not zero the caller must
    /// [`Self::repair`] the row before anyone reads it. Counting costs little; keeping each
    /// coordinate's old values aside for an undo cost up to 3x the update itself
    /// (`cargo bench -p ember-core --bench optim`), and the update is a fifth of a ps-server's
    /// CPU under pushes.
    pub fn apply_scaled(
        &self,
        weights: &mut [f32],
        state: &mut [f32],
        grad: &[f32],
        step: u64,
        lr_scale: f32,
    ) -> usize {
        debug_assert_eq!(weights.len(), grad.len());
        debug_assert_eq!(state.len(), self.state_len(weights.len()));
        let mut bad = 0u32;
        match *self {
            Optimizer::Sgd { learning_rate } => {
                let lr = learning_rate * lr_scale;
                for (w, g) in weights.iter_mut().zip(grad) {
                    *w -= lr * g;
                    bad += not_finite(*w);
                }
            }
            Optimizer::Adagrad { learning_rate, epsilon, .. } => {
                let lr = learning_rate * lr_scale;
                for ((w, acc), g) in weights.iter_mut().zip(state.iter_mut()).zip(grad) {
                    *acc += g * g;
                    *w -= lr * g / (acc.sqrt() + epsilon);
                    bad += not_finite(*w) | not_finite(*acc);
                }
            }
            Optimizer::Ftrl { alpha, beta, l1, l2 } => {
                let (z, n) = state.split_at_mut(weights.len());
                let inv_alpha = 1.0 / alpha;
                for (((w, z), n), &g) in weights.iter_mut().zip(z).zip(n).zip(grad) {
                    let g = g * lr_scale;
                    let n_new = *n + g * g;
                    let sigma = (n_new.sqrt() - n.sqrt()) * inv_alpha;
                    *z += g - sigma * *w;
                    *n = n_new;
                    *w = if z.abs() <= l1 {
                        0.0
                    } else {
                        -(*z - l1.copysign(*z)) / ((beta + n_new.sqrt()) * inv_alpha + l2)
                    };
                    bad += not_finite(*w) | not_finite(*z) | not_finite(*n);
                }
            }
            Optimizer::Adam { learning_rate, beta1, beta2, epsilon } => {
                let t = i32::try_from(step.max(1)).unwrap_or(i32::MAX);
                let c1 = 1.0 - f64::from(beta1).powi(t);
                let c2 = 1.0 - f64::from(beta2).powi(t);
                // Fold both corrections into the step size: lr * sqrt(c2) / c1, and scale eps so
                // the update equals lr * m_hat / (sqrt(v_hat) + eps) exactly.
                let step_size = (f64::from(learning_rate) * f64::from(lr_scale) * c2.sqrt() / c1) as f32;
                let eps = (f64::from(epsilon) * c2.sqrt()) as f32;
                let (m, v) = state.split_at_mut(weights.len());
                for (((w, m), v), &g) in weights.iter_mut().zip(m).zip(v).zip(grad) {
                    *m = beta1 * *m + (1.0 - beta1) * g;
                    *v = beta2 * *v + (1.0 - beta2) * g * g;
                    *w -= step_size * *m / (v.sqrt() + eps);
                    bad += not_finite(*w) | not_finite(*m) | not_finite(*v);
                }
            }
        }
        bad as usize
    }

    /// Puts `fallback` (weights) and `fallback_state` (state, laid out as `state`) in place of
    /// every coordinate whose weight or state is NaN or Inf; returns how many there were. A
    /// ps-server's sparse row falls back to its initial value (the initializer is a function
    /// of the key), a dense table to its values before the update.
    pub fn repair(&self, weights: &mut [f32], state: &mut [f32], fallback: &[f32], fallback_state: &[f32]) -> usize {
        let dim = weights.len();
        let parts = self.state_len(1);
        let mut repaired = 0;
        for i in 0..dim {
            let state_finite = (0..parts).all(|p| state[p * dim + i].is_finite());
            if !(weights[i].is_finite() && state_finite) {
                weights[i] = fallback[i];
                for p in 0..parts {
                    state[p * dim + i] = fallback_state[p * dim + i];
                }
                repaired += 1;
            }
        }
        repaired
    }
}

/// 1 if `x` is NaN or Inf, else 0, without a branch (so the update loops still vectorize).
#[inline(always)]
fn not_finite(x: f32) -> u32 {
    u32::from(!x.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `grads` through a one-coordinate row starting at `w0`, returning the weight after
    /// each step.
    fn trajectory(opt: Optimizer, w0: f32, grads: &[f32]) -> Vec<f32> {
        let mut w = [w0];
        let mut state = vec![0.0; opt.state_len(1)];
        opt.init_state(&w, &mut state);
        grads
            .iter()
            .enumerate()
            .map(|(i, g)| {
                opt.apply(&mut w, &mut state, &[*g], i as u64 + 1);
                w[0]
            })
            .collect()
    }

    fn assert_close(got: &[f32], want: &[f64]) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!((f64::from(*g) - w).abs() < 2e-6, "got {got:?}, want {want:?}");
        }
    }

    // Reference values below were computed by hand in f64 from the update rules in the papers
    // (and cross-checked with a ten-line Python transcription).

    #[test]
    fn ftrl_matches_reference_sequence() {
        let opt = Optimizer::Ftrl { alpha: 0.5, beta: 1.0, l1: 0.1, l2: 0.2 };
        let got = trajectory(opt, 0.0, &[1.0, -0.5, 0.25, 2.0]);
        assert_close(
            &got,
            &[
                -0.214_285_714_285_714_27,
                -0.101_573_284_598_871_48,
                -0.157_236_606_231_749_54,
                -0.450_932_185_591_462_3,
            ],
        );
    }

    #[test]
    fn ftrl_starts_from_the_initial_weight_and_l1_gives_exact_zeros() {
        let opt = Optimizer::Ftrl { alpha: 0.5, beta: 1.0, l1: 0.1, l2: 0.2 };
        assert_close(&trajectory(opt, 0.3, &[0.5, -1.0]), &[0.143_75, 0.369_174_859_373_685_55]);
        // With a strong L1 a small gradient leaves the weight at exactly zero.
        let sparse = Optimizer::Ftrl { alpha: 0.1, beta: 1.0, l1: 5.0, l2: 0.0 };
        assert_eq!(trajectory(sparse, 0.0, &[1.0, 2.0, -0.5]), vec![0.0, 0.0, 0.0]);
    }

    #[test]
    fn adam_matches_reference_sequence() {
        let opt = Optimizer::Adam { learning_rate: 0.1, beta1: 0.9, beta2: 0.999, epsilon: 1e-8 };
        let got = trajectory(opt, 1.0, &[0.5, -0.2, 0.3]);
        assert_close(&got, &[0.900_000_002, 0.865_439_418_116_510_8, 0.810_995_383_681_155_4]);
    }

    #[test]
    fn adagrad_and_sgd_match_reference_sequences() {
        let adagrad = Optimizer::Adagrad { learning_rate: 0.1, initial_accumulator: 0.1, epsilon: 1e-7 };
        assert_close(
            &trajectory(adagrad, 0.5, &[1.0, -2.0, 0.5]),
            &[0.404_653_750_166_348_97, 0.493_215_234_798_790_04, 0.471_598_350_675_013_6],
        );
        let sgd = Optimizer::Sgd { learning_rate: 0.5 };
        assert_close(&trajectory(sgd, 1.0, &[1.0, -3.0]), &[0.5, 2.0]);
    }

    #[test]
    fn adam_bias_correction_uses_the_row_step() {
        // A row updated for the first time at global step 1000 must take the same first step
        // as one updated at step 1: the correction is per row.
        let opt = Optimizer::Adam { learning_rate: 0.01, beta1: 0.9, beta2: 0.999, epsilon: 1e-8 };
        let mut w = [0.0f32];
        let mut s = [0.0f32; 2];
        opt.apply(&mut w, &mut s, &[3.0], 1);
        assert!((w[0] + 0.01).abs() < 1e-6, "first Adam step is -lr * sign(g), got {}", w[0]);
    }

    #[test]
    fn scaled_steps_scale_the_learning_rate() {
        let sgd = Optimizer::Sgd { learning_rate: 0.5 };
        let (mut w, mut s) = ([1.0f32], [0f32; 0]);
        sgd.apply_scaled(&mut w, &mut s, &[1.0], 1, 0.25);
        assert_eq!(w[0], 1.0 - 0.125);
        let adam = Optimizer::Adam { learning_rate: 0.01, beta1: 0.9, beta2: 0.999, epsilon: 1e-8 };
        let (mut w, mut s) = ([0.0f32], [0f32; 2]);
        adam.apply_scaled(&mut w, &mut s, &[3.0], 1, 0.5);
        assert!((w[0] + 0.005).abs() < 1e-6, "half of Adam's first step, got {}", w[0]);
        // Scale 1 is exactly the unscaled update.
        let adagrad = Optimizer::Adagrad { learning_rate: 0.1, initial_accumulator: 0.1, epsilon: 1e-7 };
        let (mut a, mut b) = ([0.5f32], [0.5f32]);
        let (mut sa, mut sb) = ([0.1f32], [0.1f32]);
        adagrad.apply(&mut a, &mut sa, &[1.0], 1);
        adagrad.apply_scaled(&mut b, &mut sb, &[1.0], 1, 1.0);
        assert_eq!((a, sa), (b, sb));
    }

    #[test]
    fn overflowing_coordinates_are_counted_and_repaired_to_the_fallback() {
        // Finite gradients, finite hyper-parameters, and still an overflow: 10 * 3e38 is Inf.
        let opts = [
            Optimizer::Sgd { learning_rate: 10.0 },
            Optimizer::Adagrad { learning_rate: 10.0, initial_accumulator: 0.1, epsilon: 1e-7 },
            Optimizer::Ftrl { alpha: 10.0, beta: 1.0, l1: 0.0, l2: 0.0 },
            Optimizer::Adam { learning_rate: 10.0, beta1: 0.9, beta2: 0.999, epsilon: 1e-8 },
        ];
        for opt in opts {
            let mut w = [0.5f32, 0.5];
            let mut state = vec![0.0; opt.state_len(2)];
            opt.init_state(&w, &mut state);
            let (initial, initial_state) = (w, state.clone());
            let mut overflowed = 0;
            for step in 1..=4 {
                let sign = if step % 2 == 0 { 1.0 } else { -1.0 };
                let counted = opt.apply(&mut w, &mut state, &[sign * 3e38, 0.25], step);
                let repaired = opt.repair(&mut w, &mut state, &initial, &initial_state);
                assert_eq!(counted, repaired, "{}: the count names what needs repair", opt.name());
                overflowed += counted;
                assert!(w.iter().chain(&state).all(|x| x.is_finite()), "{}: {w:?} {state:?}", opt.name());
            }
            assert!(overflowed >= 1, "{}: 3e38 overflowed nothing", opt.name());
            // The ordinary coordinate kept learning.
            assert!(w[1] < 0.5, "{}: {w:?}", opt.name());
        }
        let sgd = Optimizer::Sgd { learning_rate: 10.0 };
        let mut w = [1.0f32, 1.0];
        assert_eq!(sgd.apply(&mut w, &mut [], &[3e38, 0.1], 1), 1);
        assert_eq!(sgd.repair(&mut w, &mut [], &[7.0, 7.0], &[]), 1);
        assert_eq!(w, [7.0, 0.0], "only the overflowed coordinate fell back");
    }

    #[test]
    fn validation_rejects_bad_hyper_parameters() {
        assert!(Optimizer::Sgd { learning_rate: f32::NAN }.validate().is_err());
        assert!(Optimizer::Ftrl { alpha: 0.0, beta: 1.0, l1: 0.0, l2: 0.0 }.validate().is_err());
        assert!(Optimizer::Ftrl { alpha: 0.1, beta: 0.0, l1: 0.0, l2: 0.0 }.validate().is_err());
        assert!(Optimizer::Adam { learning_rate: 0.1, beta1: 1.0, beta2: 0.9, epsilon: 1e-8 }.validate().is_err());
        assert!(Optimizer::Adagrad { learning_rate: 0.1, initial_accumulator: 0.0, epsilon: 0.0 }.validate().is_err());
        assert!(Optimizer::Adam { learning_rate: 0.1, beta1: 0.9, beta2: 0.99, epsilon: 1e-8 }.validate().is_ok());
        assert!(Optimizer::Sgd { learning_rate: 1e30 }.validate().is_err());
        assert!(Optimizer::Ftrl { alpha: 1e9, beta: 1.0, l1: 0.0, l2: 0.0 }.validate().is_err());
        assert!(Optimizer::Ftrl { alpha: 0.1, beta: 1.0, l1: 1e30, l2: 0.0 }.validate().is_err());
    }
}
