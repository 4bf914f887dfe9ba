//! Synchronization of workers: the job's `[sync]` section, the rule a table applies gradients
//! by, and the staleness histogram reports carry.
//!
//! Staleness: every pull returns the version (clock) of the table it read, every push carries
//! it back, and the server measures tau = (version when the push arrives) - (version the gradient
//! was computed from). A table's version counts applied updates, so under `softsync` it moves
//! once per s gradients.
//!
//! The modes split between the two sides. The server applies by [`ApplyRule`] (`async`: as it
//! comes; `staleness`: learning rate times lambda0 / max(1, tau); `softsync`: one update from
//! s staleness-weighted gradients; `sync`: one update from one gradient per worker). Workers bound
//! their drift by clocks (`ssp`: at most `bound` steps ahead of the slowest; `sync`: bound 0).
//! Only `async` workers pull ahead (fetch the next batch's rows before the last push has landed).

use serde::{Deserialize, Serialize};

/// `sync.mode` in a job file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// Apply each gradient as it arrives.
    #[default]
    Async,
    /// Scale each step by lambda0 / max(1, tau).
    Staleness,
    /// The server applies every s gradients, staleness-weighted, as one update.
    Softsync,
    /// Stale synchronous parallel: a worker waits when it is more than `bound` steps ahead of the
    /// slowest; the server applies as gradients arrive.
    Ssp,
    /// Every worker each step: bound 0, and each step applies the sum of all workers' gradients,
    /// one step over all their examples (a worker's gradient is of its batch's summed loss).
    Sync,
}

/// The job's `[sync]` section.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyncSpec {
    /// The mode.
    pub mode: SyncMode,
    /// Base of the staleness weight lambda0 / max(1, tau) (`staleness` and `softsync`).
    pub lambda0: f32,
    /// Gradients per softsync update; 0 means one per worker.
    pub s: u32,
    /// `ssp`: how many steps a worker may run ahead of the slowest.
    pub bound: u32,
}

impl Default for SyncSpec {
    fn default() -> Self {
        Self { mode: SyncMode::Async, lambda0: 1.0, s: 0, bound: 3 }
    }
}

/// Largest `sync.s` accepted (the server buffers s gradients per table).
pub const MAX_SOFTSYNC: u32 = 1024;

impl SyncSpec {
    /// Checks the ranges.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.lambda0.is_finite() && self.lambda0 > 0.0) {
            return Err(format!("sync.lambda0 must be finite and > 0, got {}", self.lambda0));
        }
        if self.s > MAX_SOFTSYNC {
            return Err(format!("sync.s must be at most {MAX_SOFTSYNC}, got {}", self.s));
        }
        Ok(())
    }

    /// How the servers apply gradients of a job with `workers` workers.
    pub fn apply_rule(&self, workers: u32) -> ApplyRule {
        let s = if self.s == 0 { workers.max(1) } else { self.s };
        match self.mode {
            SyncMode::Async | SyncMode::Ssp => ApplyRule::Async,
            SyncMode::Staleness => ApplyRule::Staleness { lambda0: self.lambda0 },
            SyncMode::Softsync => ApplyRule::Softsync { s, lambda0: self.lambda0 },
            SyncMode::Sync => ApplyRule::Sync { s: workers.max(1) },
        }
    }

    /// True when the servers buffer gradients (softsync, sync), so training must end with a flush.
    pub fn buffers(&self) -> bool {
        matches!(self.mode, SyncMode::Softsync | SyncMode::Sync)
    }

    /// True when a worker may pull the next batch's rows before its last push has landed
    /// (`async` only). It hides a pull's latency but adds about one step of staleness per worker,
    /// which every other mode exists to reduce: on DeepFM with 4 workers, softsync scored 0.785
    /// with pull-ahead and 0.800 without, staleness-scaling 0.779 and 0.789
    /// (docs/experiments/sync-and-compression.md).
    pub fn pull_ahead(&self) -> bool {
        matches!(self.mode, SyncMode::Async)
    }

    /// The clock bound workers keep, if the mode has one.
    pub fn clock_bound(&self) -> Option<u32> {
        match self.mode {
            SyncMode::Ssp => Some(self.bound),
            SyncMode::Sync => Some(0),
            _ => None,
        }
    }
}

/// How a table applies the gradients pushed to it. Part of its spec.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase", tag = "rule")]
pub enum ApplyRule {
    /// Each gradient at once, at the full learning rate.
    #[default]
    Async,
    /// Each gradient at once, the learning rate scaled by [`staleness_weight`].
    Staleness {
        /// The weight's numerator.
        lambda0: f32,
    },
    /// Gradients are buffered; every `s`-th applies their sum, each gradient weighted by
    /// [`staleness_weight`]. Zhang et al. average s gradients of mini-batch *mean* losses; workers
    /// here push gradients of *summed* losses (as [`ApplyRule::Sync`] explains), for which that
    /// average is the sum: s fresh gradients make the same step as one worker at s times the
    /// batch, whatever the optimizer's L1/L2 terms.
    Softsync {
        /// Gradients per update.
        s: u32,
        /// The weight's numerator.
        lambda0: f32,
    },
    /// Gradients are buffered; every `s`-th applies their sum: workers in lockstep each push the
    /// gradient of their batch's summed loss, so the sum is the gradient of one step over all
    /// their examples, and `w` workers at batch `b` train as one worker at batch `w * b`.
    Sync {
        /// Gradients per update (the workers).
        s: u32,
    },
}

impl ApplyRule {
    /// Checks the ranges.
    pub fn validate(&self) -> Result<(), String> {
        let lambda = match *self {
            ApplyRule::Async => return Ok(()),
            ApplyRule::Staleness { lambda0 } => lambda0,
            ApplyRule::Softsync { s, lambda0 } => {
                check_s("softsync", s)?;
                lambda0
            }
            ApplyRule::Sync { s } => return check_s("sync", s),
        };
        if !(lambda.is_finite() && lambda > 0.0) {
            return Err(format!("lambda0 must be finite and > 0, got {lambda}"));
        }
        Ok(())
    }
}

/// `s` counts gradients per applied step; `rule` names the rule in the error.
fn check_s(rule: &str, s: u32) -> Result<(), String> {
    if s == 0 || s > MAX_SOFTSYNC {
        return Err(format!("{rule} s must be in 1..={MAX_SOFTSYNC}, got {s}"));
    }
    Ok(())
}

/// lambda0 / max(1, tau): the factor a gradient `tau` versions stale is weighted by.
pub fn staleness_weight(lambda0: f32, tau: u64) -> f32 {
    lambda0 / tau.max(1) as f32
}

/// Exact counts of staleness values below [`StalenessHistogram::EXACT`], one bucket above.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct StalenessHistogram {
    /// `counts[t]` pushes had staleness t; the last bucket counts every t >= EXACT.
    pub counts: Vec<u64>,
    /// Sum of all staleness values (for the mean; the overflow bucket keeps exact values here).
    pub sum: u64,
    /// The largest staleness seen.
    pub max: u64,
}

impl StalenessHistogram {
    /// Staleness values counted exactly.
    pub const EXACT: usize = 256;

    /// Counts one push.
    pub fn record(&mut self, tau: u64) {
        self.allocate();
        self.counts[(tau as usize).min(Self::EXACT)] += 1;
        self.sum += tau;
        self.max = self.max.max(tau);
    }

    /// Adds another histogram's counts.
    pub fn merge(&mut self, other: &StalenessHistogram) {
        self.allocate();
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.sum += other.sum;
        self.max = self.max.max(other.max);
    }

    /// The buckets are allocated on first use, so an unused histogram costs nothing.
    fn allocate(&mut self) {
        if self.counts.is_empty() {
            self.counts = vec![0; Self::EXACT + 1];
        }
    }

    /// Pushes counted.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Mean staleness (0 when empty).
    pub fn mean(&self) -> f64 {
        self.sum as f64 / self.total().max(1) as f64
    }

    /// The smallest t with at least `q` of the pushes at or below it (capped at EXACT).
    pub fn quantile(&self, q: f64) -> u64 {
        let total = self.total();
        if total == 0 {
            return 0;
        }
        let target = (q * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (t, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= target {
                return t as u64;
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_map_to_server_rules_and_worker_bounds() {
        let spec = |mode| SyncSpec { mode, ..SyncSpec::default() };
        assert_eq!(spec(SyncMode::Async).apply_rule(4), ApplyRule::Async);
        assert_eq!(spec(SyncMode::Ssp).apply_rule(4), ApplyRule::Async);
        assert_eq!(spec(SyncMode::Ssp).clock_bound(), Some(3));
        assert_eq!(spec(SyncMode::Softsync).apply_rule(4), ApplyRule::Softsync { s: 4, lambda0: 1.0 });
        let s2 = SyncSpec { s: 2, ..spec(SyncMode::Softsync) };
        assert_eq!(s2.apply_rule(4), ApplyRule::Softsync { s: 2, lambda0: 1.0 });
        assert_eq!(spec(SyncMode::Sync).apply_rule(3), ApplyRule::Sync { s: 3 });
        assert_eq!(spec(SyncMode::Sync).clock_bound(), Some(0));
        assert_eq!(spec(SyncMode::Staleness).clock_bound(), None);
        for mode in [SyncMode::Async, SyncMode::Staleness, SyncMode::Softsync, SyncMode::Ssp, SyncMode::Sync] {
            let buffered = matches!(spec(mode).apply_rule(4), ApplyRule::Softsync { .. } | ApplyRule::Sync { .. });
            assert_eq!(spec(mode).buffers(), buffered, "{mode:?}");
            assert_eq!(spec(mode).pull_ahead(), mode == SyncMode::Async, "{mode:?}");
        }
        assert!(SyncSpec { lambda0: 0.0, ..SyncSpec::default() }.validate().is_err());
        assert!(ApplyRule::Softsync { s: 0, lambda0: 1.0 }.validate().is_err());
        assert!(ApplyRule::Sync { s: 0 }.validate().is_err());
        assert!(ApplyRule::Sync { s: 4 }.validate().is_ok());
    }

    #[test]
    fn weights_follow_lambda0_over_tau() {
        assert_eq!(staleness_weight(2.0, 0), 2.0);
        assert_eq!(staleness_weight(2.0, 1), 2.0);
        assert_eq!(staleness_weight(2.0, 4), 0.5);
    }

    #[test]
    fn histogram_mean_quantiles_and_merge() {
        let mut h = StalenessHistogram::default();
        for t in [0, 1, 1, 2, 2, 2, 3, 10, 1000] {
            h.record(t);
        }
        assert_eq!(h.total(), 9);
        assert_eq!(h.max, 1000);
        assert!((h.mean() - 1021.0 / 9.0).abs() < 1e-9);
        assert_eq!(h.quantile(0.5), 2);
        assert_eq!(h.quantile(0.8), 10);
        assert_eq!(h.quantile(1.0), StalenessHistogram::EXACT as u64);
        let mut m = StalenessHistogram::default();
        m.merge(&h);
        m.merge(&h);
        assert_eq!(m.total(), 18);
        assert_eq!(m.quantile(0.5), 2);
    }
}
