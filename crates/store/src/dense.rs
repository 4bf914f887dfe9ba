//! Dense tables: one named f32 vector and its optimizer state behind one lock.
//!
//! Dense vectors are small (an MLP's weights), so a whole-vector lock is cheaper than anything
//! finer. The version counts applied pushes; the optimizer's step is the version. Pushes follow
//! the spec's apply rule as sparse tables do (a dense table is one row).

use ember_core::sync::{staleness_weight, ApplyRule};
use ember_core::TableSpec;
use parking_lot::Mutex;

use crate::softsync::Pending;
use crate::{PushOutcome, StoreError};

struct DenseState {
    values: Vec<f32>,
    state: Vec<f32>,
    version: u64,
    rejected_nonfinite: u64,
    /// Known-finite values and state (the initial ones, or the last restored) that a coordinate
    /// an update overflowed falls back to, as a sparse row falls back to its initializer.
    fallback: (Vec<f32>, Vec<f32>),
}

/// A dense table.
pub struct DenseTable {
    spec: TableSpec,
    inner: Mutex<DenseState>,
    /// Softsync gradients not yet applied.
    pending: Pending,
}

impl std::fmt::Debug for DenseTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DenseTable").field("spec", &self.spec).finish_non_exhaustive()
    }
}

impl DenseTable {
    /// A table starting from `initial` (which must have `dim` values) or, if `None`, from the
    /// initializer (as if the vector were row key 0 of a sparse table).
    pub fn new(spec: TableSpec, initial: Option<Vec<f32>>) -> Result<Self, StoreError> {
        let dim = spec.dim as usize;
        let values = match initial {
            Some(v) if v.len() != dim => {
                return Err(StoreError::BadLength {
                    table: spec.name.clone(),
                    what: "initial values",
                    got_bytes: v.len() * 4,
                    keys: 1,
                    dim,
                })
            }
            Some(v) => {
                if let Some(bad) = v.iter().find(|x| !x.is_finite()) {
                    return Err(StoreError::NonFinite { table: spec.name.clone(), key: 0, value: *bad });
                }
                v
            }
            None => {
                let mut v = vec![0.0; dim];
                spec.initializer.fill(spec.seed, 0, &mut v);
                v
            }
        };
        let mut state = vec![0.0; spec.optimizer.state_len(dim)];
        spec.optimizer.init_state(&values, &mut state);
        let fallback = (values.clone(), state.clone());
        let inner = Mutex::new(DenseState { values, state, version: 0, rejected_nonfinite: 0, fallback });
        Ok(Self { pending: Pending::default(), spec, inner })
    }

    /// The table's spec.
    pub fn spec(&self) -> &TableSpec {
        &self.spec
    }

    /// A copy of the vector and its version.
    pub fn pull(&self) -> (Vec<f32>, u64) {
        let inner = self.inner.lock();
        (inner.values.clone(), inner.version)
    }

    /// Checks a gradient's length and finiteness; a non-finite one is counted as rejected.
    pub fn validate(&self, grad: &[f32]) -> Result<(), StoreError> {
        let dim = self.spec.dim as usize;
        if grad.len() != dim {
            return Err(StoreError::BadLength {
                table: self.spec.name.clone(),
                what: "gradients",
                got_bytes: grad.len() * 4,
                keys: 1,
                dim,
            });
        }
        if let Some(i) = grad.iter().position(|g| !g.is_finite()) {
            self.inner.lock().rejected_nonfinite += 1;
            return Err(StoreError::NonFinite { table: self.spec.name.clone(), key: i as u64, value: grad[i] });
        }
        Ok(())
    }

    /// Applies one gradient with no gradient version (staleness 0); returns the new version.
    /// NaN/Inf or a wrong length changes nothing.
    pub fn push(&self, grad: &[f32]) -> Result<u64, StoreError> {
        self.push_at(grad, None).map(|out| out.version)
    }

    /// Applies one gradient computed from `gradient_version` by the table's apply rule.
    pub fn push_at(&self, grad: &[f32], gradient_version: Option<u64>) -> Result<PushOutcome, StoreError> {
        self.validate(grad)?;
        let staleness_at = |version: u64| gradient_version.map_or(0, |v| version.saturating_sub(v));
        let (s, lambda0) = match self.spec.sync {
            ApplyRule::Async => return Ok(self.apply(grad, staleness_at, |_| 1.0)),
            ApplyRule::Staleness { lambda0 } => {
                return Ok(self.apply(grad, staleness_at, |tau| staleness_weight(lambda0, tau)))
            }
            ApplyRule::Softsync { s, lambda0 } => (s, Some(lambda0)),
            ApplyRule::Sync { s } => (s, None),
        };
        let version = self.inner.lock().version;
        let staleness = staleness_at(version);
        let weight = lambda0.map_or(1.0, |l| staleness_weight(l, staleness));
        match self.pending.add(&[0], grad, grad.len(), weight, s) {
            Some(merged) => Ok(PushOutcome { staleness, ..self.apply(&merged.grads, |_| 0, |_| 1.0) }),
            None => Ok(PushOutcome { version, staleness, buffered: true, ..PushOutcome::default() }),
        }
    }

    /// Applies the softsync buffer, if any, as the sum of the (weighted) gradients received;
    /// returns whether there was one.
    pub fn flush_pending(&self) -> bool {
        match self.pending.flush() {
            Some(merged) => {
                self.apply(&merged.grads, |_| 0, |_| 1.0);
                true
            }
            None => false,
        }
    }

    /// Applies `grad` as the next version, under one lock: `staleness_at` turns the version it
    /// arrives at into its staleness, and `lr_scale` that staleness into the step's scale.
    fn apply(
        &self,
        grad: &[f32],
        staleness_at: impl FnOnce(u64) -> u64,
        lr_scale: impl FnOnce(u64) -> f32,
    ) -> PushOutcome {
        let mut inner = self.inner.lock();
        let staleness = staleness_at(inner.version);
        inner.version += 1;
        let DenseState { values, state, version, rejected_nonfinite, fallback } = &mut *inner;
        let mut refused = self.spec.optimizer.apply_scaled(values, state, grad, *version, lr_scale(staleness));
        if refused > 0 {
            refused = self.spec.optimizer.repair(values, state, &fallback.0, &fallback.1);
        }
        *rejected_nonfinite += u64::from(refused > 0);
        PushOutcome {
            rows_updated: 1,
            version: *version,
            staleness,
            rows_rejected: u64::from(refused > 0),
            ..PushOutcome::default()
        }
    }

    /// (values, optimizer state, version), copied under the lock (checkpoints).
    pub fn snapshot(&self) -> (Vec<f32>, Vec<f32>, u64) {
        let inner = self.inner.lock();
        (inner.values.clone(), inner.state.clone(), inner.version)
    }

    /// Replaces values, optimizer state and version with a checkpoint's; lengths must match the
    /// spec (checked by the checkpoint reader).
    pub fn restore(&self, values: Vec<f32>, state: Vec<f32>, version: u64) {
        let mut inner = self.inner.lock();
        inner.fallback = (values.clone(), state.clone());
        inner.values = values;
        inner.state = state;
        inner.version = version;
    }

    /// (version, rejected pushes, bytes).
    pub fn counters(&self) -> (u64, u64, u64) {
        let inner = self.inner.lock();
        (inner.version, inner.rejected_nonfinite, ((inner.values.len() + inner.state.len()) * 4) as u64)
    }
}
