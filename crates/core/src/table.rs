//! Table specs: what a table is, independent of where it is stored.

use crate::{Initializer, Optimizer};

/// Longest table name accepted (names appear in metrics labels and file names).
pub const MAX_TABLE_NAME: usize = 128;
/// Widest sparse row / longest dense vector accepted.
pub const MAX_DIM: u32 = 1 << 24;

/// Sparse (key -> row) or dense (one named vector).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TableKind {
    /// Elastic key -> row table; rows created on first pull.
    Sparse,
    /// One f32 vector of length `dim`.
    Dense,
}

/// Most sightings admission can require (its counters saturate at 255).
pub const MAX_MIN_COUNT: u32 = 255;

/// Which rows leave DRAM first when a server is over its DRAM budget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DemotePolicy {
    /// Least recently updated (by table version).
    #[default]
    Lru,
    /// Least often updated.
    Lfu,
}

/// Feature admission and eviction of a sparse table; every field's zero turns its rule off.
/// In job files this is the `[features]` section.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct FeaturePolicy {
    /// A key gets a row only once it has been pulled this many times (counted approximately, in
    /// a count-min sketch, so a key may be admitted early but never late). 0 or 1: at once.
    pub min_count: u32,
    /// Delete rows not updated for this many table versions (pushes).
    pub ttl_steps: u64,
    /// Delete rows not updated for this many seconds.
    pub ttl_seconds: u64,
    /// Delete updated rows whose weights' L2 norm is below this.
    pub min_l2: f32,
    /// Which rows are demoted to the cold tier first (servers with a DRAM budget).
    pub demote: DemotePolicy,
}

impl FeaturePolicy {
    /// True when no rule is on.
    pub fn is_off(&self) -> bool {
        self.min_count <= 1
            && self.ttl_steps == 0
            && self.ttl_seconds == 0
            && self.min_l2 == 0.0
            && self.demote == DemotePolicy::Lru
    }

    /// True when admission filters keys.
    pub fn admission(&self) -> bool {
        self.min_count > 1
    }

    /// True when some eviction rule is on.
    pub fn eviction(&self) -> bool {
        self.ttl_steps > 0 || self.ttl_seconds > 0 || self.min_l2 > 0.0
    }

    /// Checks the ranges.
    pub fn validate(&self) -> Result<(), String> {
        if self.min_count > MAX_MIN_COUNT {
            return Err(format!("features.min_count must be at most {MAX_MIN_COUNT}, got {}", self.min_count));
        }
        if !(self.min_l2.is_finite() && self.min_l2 >= 0.0) {
            return Err(format!("features.min_l2 must be finite and >= 0, got {}", self.min_l2));
        }
        Ok(())
    }
}

/// Everything that defines a table. Two creates with equal specs are the same table.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TableSpec {
    /// Unique name: `[A-Za-z0-9_.-]`, 1..=128 bytes.
    pub name: String,
    /// Sparse or dense.
    pub kind: TableKind,
    /// Row width (sparse) or vector length (dense); >= 1.
    pub dim: u32,
    /// Applied server-side on every push.
    pub optimizer: Optimizer,
    /// Draws new rows (sparse) or the starting vector (dense).
    pub initializer: Initializer,
    /// Seeds the initializer.
    pub seed: u64,
    /// Admission and eviction (sparse tables only).
    #[serde(default)]
    pub policy: FeaturePolicy,
    /// How pushed gradients are applied (at once by default).
    #[serde(default)]
    pub sync: crate::sync::ApplyRule,
    /// Sparse tables: the leading values of every row, with their own optimizer and initializer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<RowHead>,
}

/// The first `dim` values of each row of a sparse table, trained by their own optimizer and drawn
/// by their own initializer; the rest of the row uses the table's. It lets one row hold a model's
/// linear weight (FTRL, zeros) next to its embedding (Adagrad, random), so a batch finds, copies and
/// updates one row per key instead of one in each of two tables.
///
/// Row layout: the head's weights, the tail's weights, the head's optimizer state, the tail's. Pulls
/// and pushes carry all `TableSpec::dim` weights, head first.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RowHead {
    /// Leading values per row; at least 1 and less than the table's dim.
    pub dim: u32,
    /// Applied to the head's values.
    pub optimizer: Optimizer,
    /// Draws the head's values of a new row (with the table's seed).
    pub initializer: Initializer,
}

/// Why a spec was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    /// The name is empty, too long or has characters outside `[A-Za-z0-9_.-]`.
    #[error("invalid table name {0:?}: use 1..=128 of [A-Za-z0-9_.-]")]
    Name(String),
    /// dim is zero or above the limit.
    #[error("table {name:?}: dim must be in 1..={MAX_DIM}, got {dim}")]
    Dim {
        /// Table name.
        name: String,
        /// Offending dim.
        dim: u32,
    },
    /// An optimizer or initializer parameter is out of range.
    #[error("table {name:?}: {reason}")]
    Parameter {
        /// Table name.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

impl TableSpec {
    /// A sparse spec with the given optimizer, zero initializer and seed 0.
    pub fn sparse(name: impl Into<String>, dim: u32, optimizer: Optimizer) -> Self {
        Self {
            name: name.into(),
            kind: TableKind::Sparse,
            dim,
            optimizer,
            initializer: Initializer::Zeros,
            seed: 0,
            policy: FeaturePolicy::default(),
            sync: crate::sync::ApplyRule::Async,
            head: None,
        }
    }

    /// A dense spec with the given optimizer, zero initializer and seed 0.
    pub fn dense(name: impl Into<String>, dim: u32, optimizer: Optimizer) -> Self {
        Self { kind: TableKind::Dense, ..Self::sparse(name, dim, optimizer) }
    }

    /// Builder-style initializer.
    pub fn with_initializer(mut self, initializer: Initializer, seed: u64) -> Self {
        self.initializer = initializer;
        self.seed = seed;
        self
    }

    /// Builder-style admission and eviction policy.
    pub fn with_policy(mut self, policy: FeaturePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Builder-style apply rule.
    pub fn with_sync(mut self, sync: crate::sync::ApplyRule) -> Self {
        self.sync = sync;
        self
    }

    /// Builder-style row head (sparse tables).
    pub fn with_head(mut self, head: RowHead) -> Self {
        self.head = Some(head);
        self
    }

    /// Values in the head (0 without one).
    fn head_dim(&self) -> usize {
        self.head.map_or(0, |h| h.dim as usize)
    }

    /// f32 of optimizer state per row (sparse) or for the vector (dense).
    pub fn state_len(&self) -> usize {
        let (h, dim) = (self.head_dim(), self.dim as usize);
        self.head.map_or(0, |head| head.optimizer.state_len(h)) + self.optimizer.state_len(dim - h)
    }

    /// Draws the starting weights of `key`'s row (all `dim` of them).
    pub fn fill_weights(&self, key: u64, weights: &mut [f32]) {
        let (head, tail) = weights.split_at_mut(self.head_dim());
        if let Some(h) = self.head {
            h.initializer.fill(self.seed, key, head);
        }
        self.initializer.fill(self.seed, key, tail);
    }

    /// Sets the optimizer state of a row whose weights were just drawn.
    pub fn init_state(&self, weights: &[f32], state: &mut [f32]) {
        let h = self.head_dim();
        match self.head {
            None => self.optimizer.init_state(weights, state),
            Some(head) => {
                let (hs, ts) = state.split_at_mut(head.optimizer.state_len(h));
                head.optimizer.init_state(&weights[..h], hs);
                self.optimizer.init_state(&weights[h..], ts);
            }
        }
    }

    /// Applies one finite gradient (all `dim` values) to a row; see [`Optimizer::apply_scaled`].
    /// Returns the coordinates that came out NaN or Inf: call [`Self::repair`] when not zero.
    pub fn apply_scaled(
        &self,
        weights: &mut [f32],
        state: &mut [f32],
        grad: &[f32],
        step: u64,
        lr_scale: f32,
    ) -> usize {
        let h = self.head_dim();
        match self.head {
            None => self.optimizer.apply_scaled(weights, state, grad, step, lr_scale),
            Some(head) => {
                let (hw, tw) = weights.split_at_mut(h);
                let (hs, ts) = state.split_at_mut(head.optimizer.state_len(h));
                head.optimizer.apply_scaled(hw, hs, &grad[..h], step, lr_scale)
                    + self.optimizer.apply_scaled(tw, ts, &grad[h..], step, lr_scale)
            }
        }
    }

    /// Resets every coordinate of row `key` whose weight or state is NaN or Inf to its initial
    /// value and state (the initializer is a function of the key, so this is the value a new row
    /// would have); returns how many were.
    pub fn repair(&self, key: u64, weights: &mut [f32], state: &mut [f32]) -> usize {
        let mut initial = vec![0f32; weights.len()];
        self.fill_weights(key, &mut initial);
        let mut initial_state = vec![0f32; state.len()];
        self.init_state(&initial, &mut initial_state);
        let h = self.head_dim();
        match self.head {
            None => self.optimizer.repair(weights, state, &initial, &initial_state),
            Some(head) => {
                let hs_len = head.optimizer.state_len(h);
                let (hw, tw) = weights.split_at_mut(h);
                let (hs, ts) = state.split_at_mut(hs_len);
                head.optimizer.repair(hw, hs, &initial[..h], &initial_state[..hs_len])
                    + self.optimizer.repair(tw, ts, &initial[h..], &initial_state[hs_len..])
            }
        }
    }

    /// Checks the name, dim, optimizer, initializer, policy and apply rule.
    pub fn validate(&self) -> Result<(), SpecError> {
        validate_name(&self.name)?;
        if self.dim == 0 || self.dim > MAX_DIM {
            return Err(SpecError::Dim { name: self.name.clone(), dim: self.dim });
        }
        let param = |reason| SpecError::Parameter { name: self.name.clone(), reason };
        self.optimizer.validate().map_err(param)?;
        self.initializer.validate().map_err(param)?;
        self.policy.validate().map_err(param)?;
        self.sync.validate().map_err(param)?;
        if self.kind == TableKind::Dense && !self.policy.is_off() {
            return Err(param("admission and eviction apply to sparse tables only".into()));
        }
        if let Some(head) = self.head {
            if self.kind == TableKind::Dense {
                return Err(param("a row head applies to sparse tables only".into()));
            }
            if head.dim == 0 || head.dim >= self.dim {
                return Err(param(format!("head dim must be in 1..{}, got {}", self.dim, head.dim)));
            }
            head.optimizer.validate().map_err(|e| param(format!("head: {e}")))?;
            head.initializer.validate().map_err(|e| param(format!("head: {e}")))?;
        }
        Ok(())
    }
}

/// Checks a table name on its own (used by requests that only name a table).
pub fn validate_name(name: &str) -> Result<(), SpecError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_TABLE_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(SpecError::Name(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_are_validated() {
        let sgd = Optimizer::Sgd { learning_rate: 0.1 };
        assert!(TableSpec::sparse("emb.user_id-1", 16, sgd).validate().is_ok());
        assert!(matches!(TableSpec::sparse("", 16, sgd).validate(), Err(SpecError::Name(_))));
        assert!(matches!(TableSpec::sparse("a/b", 16, sgd).validate(), Err(SpecError::Name(_))));
        assert!(matches!(TableSpec::dense("w", 0, sgd).validate(), Err(SpecError::Dim { .. })));
        let bad = TableSpec::sparse("t", 4, sgd).with_initializer(Initializer::Uniform { low: 1.0, high: -1.0 }, 0);
        assert!(matches!(bad.validate(), Err(SpecError::Parameter { .. })));
        let head = |dim| RowHead { dim, optimizer: sgd, initializer: Initializer::Zeros };
        assert!(TableSpec::sparse("t", 4, sgd).with_head(head(1)).validate().is_ok());
        for dim in [0, 4] {
            let bad = TableSpec::sparse("t", 4, sgd).with_head(head(dim));
            assert!(matches!(bad.validate(), Err(SpecError::Parameter { .. })), "head dim {dim}");
        }
        assert!(TableSpec::dense("t", 4, sgd).with_head(head(1)).validate().is_err());
    }

    #[test]
    fn a_head_trains_and_starts_as_a_table_of_its_own_would() {
        let ftrl = Optimizer::Ftrl { alpha: 0.1, beta: 1.0, l1: 0.5, l2: 0.1 };
        let adagrad = Optimizer::Adagrad { learning_rate: 0.05, initial_accumulator: 0.1, epsilon: 1e-8 };
        let normal = Initializer::Normal { mean: 0.0, stddev: 0.1 };
        let both = TableSpec::sparse("wv", 5, adagrad).with_initializer(normal, 9).with_head(RowHead {
            dim: 1,
            optimizer: ftrl,
            initializer: Initializer::Zeros,
        });
        let head = TableSpec::sparse("w", 1, ftrl).with_initializer(Initializer::Zeros, 9);
        let tail = TableSpec::sparse("v", 4, adagrad).with_initializer(normal, 9);
        assert_eq!(both.state_len(), 2 + 4);

        let mut row = vec![0f32; 5 + both.state_len()];
        let (w, s) = row.split_at_mut(5);
        both.fill_weights(42, w);
        both.init_state(w, s);
        let (mut hw, mut hs, mut tw, mut ts) = (vec![0f32; 1], vec![0f32; 2], vec![0f32; 4], vec![0f32; 4]);
        head.fill_weights(42, &mut hw);
        head.init_state(&hw, &mut hs);
        tail.fill_weights(42, &mut tw);
        tail.init_state(&tw, &mut ts);
        for step in 1..=3u64 {
            let grad = [0.9f32, -0.5, 0.25, 1.5, -2.0].map(|g| g * step as f32);
            let (w, s) = row.split_at_mut(5);
            both.apply_scaled(w, s, &grad, step, 0.5);
            head.apply_scaled(&mut hw, &mut hs, &grad[..1], step, 0.5);
            tail.apply_scaled(&mut tw, &mut ts, &grad[1..], step, 0.5);
        }
        let expected: Vec<f32> = [hw, tw, hs, ts].concat();
        assert_eq!(row, expected);
        assert_ne!(row[0], 0.0, "the FTRL head moved past L1");
    }
}
