//! A job's report: what workers measured, aggregated by the scheduler, as one JSON document.
//!
//! Workers send, with each train item, its figures ([`ItemStats`]: bytes, staleness, clock
//! waits, progressive windows) and its progressive predictions; [`JobStats`] adds them up in
//! fixed space (a [`ScoreHistogram`] for the progressive AUC, a curve of at most
//! [`MAX_CURVE_POINTS`] points), so a never-ending job's report does not grow with its rows.
//! [`JobReport`] is the document `ember train --report` and `ember status --report` write: the
//! same struct on an embedded cluster and on processes, so the same keys with the same meanings.

use std::collections::{BTreeMap, BTreeSet};

use ember_core::eval::ScoreHistogram;
use ember_core::sync::StalenessHistogram;
use serde::{Deserialize, Serialize};

/// The curve keeps at most this many points; past it, neighbours are merged pairwise.
pub const MAX_CURVE_POINTS: usize = 4096;

/// A window of progressive validation, as a worker cut it.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// Rows in the window.
    pub rows: u64,
    /// Their summed logloss.
    pub loss_sum: f64,
    /// Their AUC (NaN with one class).
    pub auc: f64,
    /// When its last batch was trained, Unix ms (the worker's clock).
    pub end_unix_ms: u64,
}

/// What a worker measured while training one item.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ItemStats {
    /// Key and value bytes pulled.
    pub bytes_pulled: u64,
    /// Key and gradient bytes pushed.
    pub bytes_pushed: u64,
    /// Sparse gradient bytes as encoded.
    pub sparse_bytes_pushed: u64,
    /// Dense gradient bytes as encoded.
    pub dense_bytes_pushed: u64,
    /// Gradient bytes as encoded, per table.
    pub bytes_pushed_by_table: BTreeMap<String, u64>,
    /// Staleness of the item's pushes.
    pub staleness: StalenessHistogram,
    /// Seconds waiting on the SSP clock.
    pub clock_wait_seconds: f64,
    /// Progressive validation windows, in training order.
    pub windows: Vec<Window>,
}

/// What a worker reports for an item.
#[derive(Debug, Clone, Default)]
pub struct ItemReport {
    /// Rows parsed.
    pub rows: u64,
    /// Malformed lines.
    pub bad_lines: u64,
    /// The first few.
    pub bad_line_samples: Vec<String>,
    /// Train: summed progressive logloss.
    pub loss_sum: f64,
    /// Test: predictions.
    pub probs: Vec<f32>,
    /// Test: labels.
    pub labels: Vec<f32>,
    /// Set if the item failed.
    pub error: Option<String>,
    /// Train: what the report needs besides rows.
    pub stats: ItemStats,
}

/// One point of the training curves: a window of progressive validation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    /// Examples trained so far (over all workers).
    pub examples: u64,
    /// Seconds since training started.
    pub seconds: f64,
    /// Rows in the window.
    pub window_rows: u64,
    /// AUC of the window's examples, each predicted before it was trained on.
    pub window_auc: f64,
    /// Their logloss.
    pub window_logloss: f64,
    /// Examples per second over the last few windows.
    pub examples_per_sec: f64,
}

/// A job's figures, added up report by report (persisted with the job).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct JobStats {
    /// Key and value bytes pulled.
    pub bytes_pulled: u64,
    /// Key and gradient bytes pushed.
    pub bytes_pushed: u64,
    /// Sparse gradient bytes as encoded.
    pub sparse_bytes_pushed: u64,
    /// Dense gradient bytes as encoded.
    pub dense_bytes_pushed: u64,
    /// Gradient bytes as encoded, per table.
    pub bytes_pushed_by_table: BTreeMap<String, u64>,
    /// Staleness of every push.
    pub staleness: StalenessHistogram,
    /// Seconds workers waited on SSP clocks, summed.
    pub clock_wait_seconds: f64,
    /// Progressive predictions, sketched.
    pub progressive: ScoreHistogram,
    /// The curve.
    pub curve: Vec<CurvePoint>,
    /// Members that trained items of the job.
    pub workers: BTreeSet<String>,
    /// When the first train item was handed out and the last one done (Unix ms).
    pub train_started_ms: Option<u64>,
    /// See `train_started_ms`.
    pub train_ended_ms: Option<u64>,
    /// Rows placed on the curve.
    curve_rows: u64,
}

impl JobStats {
    /// Adds a train item's figures and progressive predictions, reported by `member`.
    pub fn add(&mut self, member: &str, stats: ItemStats, probs: &[f32], labels: &[f32]) {
        self.bytes_pulled += stats.bytes_pulled;
        self.bytes_pushed += stats.bytes_pushed;
        self.sparse_bytes_pushed += stats.sparse_bytes_pushed;
        self.dense_bytes_pushed += stats.dense_bytes_pushed;
        for (table, bytes) in stats.bytes_pushed_by_table {
            *self.bytes_pushed_by_table.entry(table).or_default() += bytes;
        }
        self.staleness.merge(&stats.staleness);
        self.clock_wait_seconds += stats.clock_wait_seconds;
        self.progressive.add(probs, labels);
        if !self.workers.contains(member) {
            self.workers.insert(member.to_string());
        }
        let start = self.train_started_ms.unwrap_or(0);
        for w in stats.windows.into_iter().filter(|w| w.rows > 0) {
            self.curve_rows += w.rows;
            let seconds = w.end_unix_ms.saturating_sub(start) as f64 / 1000.0;
            self.curve.push(CurvePoint {
                examples: self.curve_rows,
                seconds,
                window_rows: w.rows,
                window_auc: w.auc,
                window_logloss: w.loss_sum / w.rows as f64,
                examples_per_sec: 0.0,
            });
            let i = self.curve.len() - 1;
            self.curve[i].examples_per_sec = rate(&self.curve, i);
        }
        if self.curve.len() > MAX_CURVE_POINTS {
            self.curve = halve(&self.curve);
        }
    }

    /// Seconds of training: first train item handed out to the last one done (or `now_ms`).
    pub fn train_seconds(&self, now_ms: u64) -> f64 {
        match self.train_started_ms {
            Some(start) => self.train_ended_ms.unwrap_or(now_ms).saturating_sub(start) as f64 / 1000.0,
            None => 0.0,
        }
    }
}

/// Examples per second at point `i`, over up to four windows before it.
fn rate(curve: &[CurvePoint], i: usize) -> f64 {
    let back = i.saturating_sub(4);
    let (a, b) = (&curve[back], &curve[i]);
    if back == i {
        return b.examples as f64 / b.seconds.max(1e-3);
    }
    (b.examples - a.examples) as f64 / (b.seconds - a.seconds).max(1e-3)
}

/// Merges neighbouring points pairwise (rows-weighted), keeping the later position.
fn halve(curve: &[CurvePoint]) -> Vec<CurvePoint> {
    curve
        .chunks(2)
        .map(|pair| {
            let last = &pair[pair.len() - 1];
            let rows: u64 = pair.iter().map(|p| p.window_rows).sum();
            let weighted = |f: fn(&CurvePoint) -> f64| {
                pair.iter().map(|p| f(p) * p.window_rows as f64).sum::<f64>() / rows.max(1) as f64
            };
            CurvePoint {
                examples: last.examples,
                seconds: last.seconds,
                window_rows: rows,
                window_auc: weighted(|p| p.window_auc),
                window_logloss: weighted(|p| p.window_logloss),
                examples_per_sec: last.examples_per_sec,
            }
        })
        .collect()
}

/// One sparse table's figures when the report was written, summed over ps-servers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TableReport {
    /// Table name.
    pub name: String,
    /// Rows stored.
    pub rows: u64,
    /// Approximate bytes of rows, optimizer state and index.
    pub bytes: u64,
    /// Rows created by admission (`features.min_count`).
    pub admitted: u64,
    /// Pulled keys not yet admitted (answered with the initializer's value).
    pub filtered: u64,
    /// Pushed rows dropped because their key was not admitted.
    pub dropped: u64,
    /// Rows deleted by eviction rules.
    pub evicted: u64,
}

/// Staleness figures of a run: versions a table moved on between a gradient's pull and its
/// arrival, over every push (each server's part of a sparse push, each dense table).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StalenessReport {
    /// Pushes counted.
    pub pushes: u64,
    /// Mean staleness.
    pub mean: f64,
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// Largest.
    pub max: u64,
    /// `histogram[t]` pushes had staleness t, up to the largest seen (the last bucket of a
    /// histogram cut at 256 counts everything above).
    pub histogram: Vec<u64>,
}

impl From<&StalenessHistogram> for StalenessReport {
    fn from(h: &StalenessHistogram) -> Self {
        let last = h.counts.iter().rposition(|c| *c > 0).map_or(0, |i| i + 1);
        Self {
            pushes: h.total(),
            mean: h.mean(),
            p50: h.quantile(0.5),
            p99: h.quantile(0.99),
            max: h.max,
            histogram: h.counts[..last].to_vec(),
        }
    }
}

/// The JSON report of a job (NaN figures, such as a test AUC before evaluation, are `null`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobReport {
    /// Job id.
    pub job_id: String,
    /// Job name.
    pub job: String,
    /// `training`, `evaluating`, `succeeded` or `failed`.
    pub state: String,
    /// Why the job failed.
    pub error: Option<String>,
    /// Model kind.
    pub model: String,
    /// Data files read.
    pub data: Vec<String>,
    /// ps-servers in the shard map, and workers that trained items of the job.
    pub cluster: (u32, u32),
    /// Data rows (train + test), bad lines included.
    pub rows_total: u64,
    /// Rows in the training split.
    pub train_rows: u64,
    /// Rows evaluated in the test split.
    pub test_rows: u64,
    /// Examples trained on, over all epochs.
    pub rows_trained: u64,
    /// Exact AUC on the test split.
    pub test_auc: Option<f64>,
    /// Logloss on the test split.
    pub test_logloss: Option<f64>,
    /// AUC of the data's true probabilities on the test split (synthetic data with an oracle
    /// file; set by `ember train --oracle`).
    pub oracle_test_auc: Option<f64>,
    /// Logloss of always predicting the training positive rate (the floor to beat).
    pub baseline_test_logloss: Option<f64>,
    /// AUC of each training example predicted before it was trained on (sketched: within
    /// about 1e-3 of the exact figure).
    pub progressive_auc: Option<f64>,
    /// Logloss of the same (exact).
    pub progressive_logloss: Option<f64>,
    /// Training examples per second (reading, parsing, pulls, compute and pushes).
    pub examples_per_sec: f64,
    /// Seconds from the first train item handed out to the last one done.
    pub train_seconds: f64,
    /// Seconds from submission to the end (or now).
    pub wall_seconds: f64,
    /// Malformed lines skipped.
    pub bad_lines: u64,
    /// The first few, as `file:line: reason`.
    pub bad_line_samples: Vec<String>,
    /// Key and gradient bytes pushed.
    pub bytes_pushed: u64,
    /// Key and value bytes pulled.
    pub bytes_pulled: u64,
    /// Sparse gradient bytes pushed, as encoded (`[compression] sparse`).
    pub sparse_bytes_pushed: u64,
    /// Dense gradient bytes pushed, as encoded (`[compression] dense`).
    pub dense_bytes_pushed: u64,
    /// Gradient bytes pushed per table, as encoded.
    pub bytes_pushed_by_table: BTreeMap<String, u64>,
    /// Windows of progressive validation.
    pub curve: Vec<CurvePoint>,
    /// The sparse tables when the report was written, summed over ps-servers.
    pub tables: Vec<TableReport>,
    /// Model versions published during and at the end of the run.
    pub published: Vec<u64>,
    /// Cluster checkpoints taken for the job: their labels (rows trained), failed ones left out.
    pub checkpoints: Vec<u64>,
    /// `sync.mode`.
    pub sync: String,
    /// Staleness of the pushes, as the servers measured it.
    pub staleness: StalenessReport,
    /// Seconds workers spent waiting on their SSP clocks, summed over workers.
    pub clock_wait_seconds: f64,
    /// A follow source's figures and its windows (absent for a job on a fixed set of files).
    #[serde(default)]
    pub stream: Option<StreamReport>,
    /// Versions the publish gate held, oldest first.
    #[serde(default)]
    pub held: Vec<HeldVersion>,
}

/// A version the publish gate held: written to the model directory, never made current.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldVersion {
    /// Its number.
    pub version: u64,
    /// The job's rows trained when it was taken.
    pub rows_trained: u64,
    /// Why it was held.
    pub reason: String,
    /// When, Unix ms.
    pub unix_ms: u64,
}

/// A follow job's source and its windows, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamReport {
    /// Files found so far.
    pub files_found: u64,
    /// Rows in them.
    pub rows_found: u64,
    /// Rows found and not trained yet.
    pub lag_rows: u64,
    /// How long the oldest of them has waited since its file was found.
    pub lag_seconds: f64,
    /// `ember stop` was asked.
    pub stopping: bool,
    /// The newest windows (at most `state::stream::MAX_WINDOWS`), oldest first.
    pub windows: Vec<WindowRecord>,
}

/// One window, evaluated before it was trained on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowRecord {
    /// The item's id.
    pub item: u64,
    /// Its file and first line (1-based).
    pub file: String,
    /// See `file`.
    pub first_line: u64,
    /// Rows trained.
    pub rows: u64,
    /// AUC of the window's progressive predictions (None with one class).
    pub auc: Option<f64>,
    /// Their logloss.
    pub logloss: Option<f64>,
    /// Share of positive labels.
    pub positive_rate: Option<f64>,
    /// Rows per second from hand-out to report.
    pub examples_per_sec: f64,
    /// Rows found and not trained yet, when the window was done.
    pub lag_rows: u64,
    /// How long the oldest window not trained yet had waited since its file was found.
    pub lag_seconds: f64,
    /// When the window was done, Unix ms.
    pub end_unix_ms: u64,
}

/// A finite figure, or `None` (NaN and infinities are not JSON).
pub fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

impl JobReport {
    /// One line of the headline figures.
    pub fn summary(&self) -> String {
        let f = |x: Option<f64>| x.map_or("n/a".to_string(), |v| format!("{v:.4}"));
        let oracle = self.oracle_test_auc.map(|a| format!(" (oracle {a:.4})")).unwrap_or_default();
        format!(
            "{}: test AUC {}{oracle}, logloss {} (positive-rate baseline {}); progressive AUC {}; {:.0} examples/s",
            self.model,
            f(self.test_auc),
            f(self.test_logloss),
            f(self.baseline_test_logloss),
            f(self.progressive_auc),
            self.examples_per_sec
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(rows: u64, end_unix_ms: u64) -> Window {
        Window { rows, loss_sum: 0.5 * rows as f64, auc: 0.7, end_unix_ms }
    }

    #[test]
    fn items_add_up_and_the_curve_stays_bounded() {
        let mut s = JobStats { train_started_ms: Some(1_000), ..Default::default() };
        let mut staleness = StalenessHistogram::default();
        staleness.record(2);
        let item = ItemStats {
            bytes_pushed: 10,
            bytes_pushed_by_table: [("w".to_string(), 4)].into(),
            staleness,
            windows: vec![window(100, 2_000), window(50, 3_000)],
            ..Default::default()
        };
        s.add("worker-1", item.clone(), &[0.9, 0.1], &[1.0, 0.0]);
        s.add("worker-2", item, &[0.8], &[1.0]);
        assert_eq!((s.bytes_pushed, s.bytes_pushed_by_table["w"], s.staleness.total()), (20, 8, 2));
        assert_eq!(s.workers.len(), 2);
        assert_eq!(s.progressive.count(), 3);
        assert_eq!(s.curve.iter().map(|p| p.examples).collect::<Vec<_>>(), vec![100, 150, 250, 300]);
        assert_eq!((s.curve[0].seconds, s.curve[0].window_logloss), (1.0, 0.5));
        for i in 0..MAX_CURVE_POINTS as u64 {
            let item = ItemStats { windows: vec![window(10, 4_000 + i)], ..Default::default() };
            s.add("worker-1", item, &[], &[]);
        }
        assert!(s.curve.len() <= MAX_CURVE_POINTS && s.curve.len() > MAX_CURVE_POINTS / 2, "{}", s.curve.len());
        assert_eq!(s.curve.iter().map(|p| p.window_rows).sum::<u64>(), 300 + 10 * MAX_CURVE_POINTS as u64);
        assert_eq!(s.curve.last().map(|p| p.examples), Some(300 + 10 * MAX_CURVE_POINTS as u64));
    }
}
