//! The publish gate: whether a model version may be made current, judged on the rows trained
//! since the previous version, each predicted before it was trained on.
//!
//! A version fails when its rows' logloss is not finite, when it does not beat always predicting
//! their positive rate (`beat_baseline`), or when their AUC falls more than `max_auc_drop` below
//! that of the last version made current. A version with no rows since the previous one (the
//! end of a job that had just published) is the same model and gets the same verdict. The rows are summed in fixed space (a
//! score histogram), so the gate costs the same for any window.

use ember_core::eval::ScoreHistogram;
use ember_core::job::GateSpec;
use serde::{Deserialize, Serialize};

use super::job::{Job, JobState};
use super::Publish;

/// The rows trained since the last version, summed (persisted with the job).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GateWindow {
    scores: ScoreHistogram,
    loss_sum: f64,
    rows: u64,
}

/// What a window of rows shows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quality {
    /// Rows judged.
    pub rows: u64,
    /// Their AUC (None with one class, or without predictions).
    pub auc: Option<f64>,
    /// Their mean logloss.
    pub logloss: f64,
    /// Logloss of predicting their positive rate (None without labels).
    pub baseline: Option<f64>,
}

impl GateWindow {
    /// Adds a train item: `rows` with summed progressive logloss `loss_sum`, and their
    /// predictions and labels (empty if the worker sent none).
    pub fn add(&mut self, rows: u64, loss_sum: f64, probs: &[f32], labels: &[f32]) {
        self.rows += rows;
        self.loss_sum += loss_sum;
        self.scores.add(probs, labels);
    }

    /// Rows since the last version.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// What the window shows; the window starts over.
    pub fn take(&mut self) -> Quality {
        let w = std::mem::take(self);
        let labelled = w.scores.count();
        let rate = w.scores.positive_count() as f64 / labelled.max(1) as f64;
        let entropy = |p: f64| if p <= 0.0 || p >= 1.0 { 0.0 } else { -(p * p.ln() + (1.0 - p) * (1.0 - p).ln()) };
        Quality {
            rows: w.rows,
            auc: Some(w.scores.auc()).filter(|a| a.is_finite()),
            logloss: w.loss_sum / w.rows.max(1) as f64,
            baseline: (labelled > 0).then(|| entropy(rate)),
        }
    }
}

/// Why `gate` holds a version of quality `q`, the last version made current having had AUC
/// `last_auc`; `None` lets it through.
pub fn verdict(gate: &GateSpec, q: &Quality, last_auc: Option<f64>) -> Option<String> {
    if q.rows == 0 {
        return None;
    }
    if !q.logloss.is_finite() {
        return Some(format!("logloss over {} rows is not finite", q.rows));
    }
    if let (true, Some(baseline)) = (gate.beat_baseline, q.baseline) {
        if q.logloss >= baseline {
            return Some(format!(
                "logloss {:.4} over {} rows does not beat the positive-rate baseline {baseline:.4}",
                q.logloss, q.rows
            ));
        }
    }
    if let (Some(auc), Some(last)) = (q.auc, last_auc) {
        if auc < last - gate.max_auc_drop {
            return Some(format!(
                "AUC {auc:.4} over {} rows fell more than {} below the current version's {last:.4}",
                q.rows, gate.max_auc_drop
            ));
        }
    }
    None
}

impl Job {
    /// The version due now, if any, judged by the gate: at the end of training (`last`), each
    /// time `publish.every` more rows are trained (from `rows_before`), and `every_seconds`
    /// after the previous one once there are rows to judge (`gate.min_rows`, or one).
    pub(crate) fn version_due(&mut self, rows_before: u64, last: bool, now_ms: u64) -> Option<Publish> {
        let spec = &self.publish_spec;
        if spec.model_dir.is_empty() {
            return None;
        }
        let training = self.state == JobState::Training;
        let crossed = spec.every > 0 && training && self.rows_trained / spec.every > rows_before / spec.every;
        let since = self.last_publish_ms.max(self.stats.train_started_ms.unwrap_or(now_ms));
        let min_rows = spec.gate.map_or(1, |g| g.min_rows.max(1));
        let timed = spec.every_seconds > 0.0
            && training
            && now_ms.saturating_sub(since) as f64 >= spec.every_seconds * 1000.0
            && self.gate_window.rows() >= min_rows;
        if !(last || crossed || timed) {
            return None;
        }
        let gate = spec.gate;
        self.last_publish_ms = now_ms;
        let quality = self.gate_window.take();
        // No rows since the previous version: the same model, so the same verdict.
        let held = match quality.rows {
            0 => self.last_verdict.clone(),
            _ => gate.and_then(|g| verdict(&g, &quality, self.published_auc)),
        };
        self.last_verdict = held.clone();
        Some(Publish { rows: self.rows_trained, last, held, auc: quality.auc })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quality(rows: u64, auc: Option<f64>, logloss: f64, baseline: Option<f64>) -> Quality {
        Quality { rows, auc, logloss, baseline }
    }

    #[test]
    fn each_rule_holds_a_version_and_says_why() {
        let gate = GateSpec { max_auc_drop: 0.02, beat_baseline: true, min_rows: 0 };
        let good = quality(100, Some(0.75), 0.45, Some(0.5));
        assert_eq!(verdict(&gate, &good, Some(0.76)), None, "0.75 >= 0.76 - 0.02");
        assert_eq!(verdict(&gate, &good, None), None, "the first version has nothing to fall from");
        let dropped = verdict(&gate, &quality(100, Some(0.73), 0.45, Some(0.5)), Some(0.76)).unwrap();
        assert!(dropped.contains("AUC 0.7300") && dropped.contains("0.7600"), "{dropped}");
        let worse = verdict(&gate, &quality(100, Some(0.8), 0.52, Some(0.5)), None).unwrap();
        assert!(worse.contains("baseline 0.5000"), "{worse}");
        let lenient = GateSpec { beat_baseline: false, ..gate };
        assert_eq!(verdict(&lenient, &quality(100, Some(0.8), 0.52, Some(0.5)), None), None);
        assert!(verdict(&gate, &quality(100, None, f64::INFINITY, None), None).unwrap().contains("not finite"));
        assert_eq!(verdict(&gate, &quality(0, None, f64::NAN, None), Some(0.9)), None, "no rows: not judged");
    }

    /// Flipped labels: the model's predictions rank backwards, so the window's AUC is 1 - AUC
    /// and its logloss far above the baseline; the window starts over after each version.
    #[test]
    fn a_window_of_flipped_labels_is_held() {
        let probs: Vec<f32> = (0..200).map(|i| if i % 4 == 0 { 0.8 } else { 0.1 }).collect();
        let labels: Vec<f32> = probs.iter().map(|p| f32::from(*p > 0.5)).collect();
        let loss = |labels: &[f32]| ember_core::eval::logloss(&probs, labels) * probs.len() as f64;
        let mut w = GateWindow::default();
        w.add(200, loss(&labels), &probs, &labels);
        let clean = w.take();
        assert_eq!((clean.rows, clean.auc), (200, Some(1.0)));
        let rate: f64 = 0.25;
        let entropy = -(rate * rate.ln() + (1.0 - rate) * (1.0 - rate).ln());
        assert!((clean.baseline.unwrap() - entropy).abs() < 1e-9);
        let gate = GateSpec::default();
        assert_eq!(verdict(&gate, &clean, None), None);
        assert_eq!(w.rows(), 0, "taken: the window starts over");
        let flipped: Vec<f32> = labels.iter().map(|y| 1.0 - y).collect();
        w.add(200, loss(&flipped), &probs, &flipped);
        let poisoned = w.take();
        assert_eq!(poisoned.auc, Some(0.0));
        let reason = verdict(&gate, &poisoned, clean.auc).unwrap();
        assert!(reason.contains("baseline"), "{reason}");
        let auc_only = GateSpec { beat_baseline: false, ..gate };
        assert!(verdict(&auc_only, &poisoned, clean.auc).unwrap().contains("AUC 0.0000"));
    }
}
