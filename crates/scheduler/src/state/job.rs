//! A job as the scheduler keeps it: its items, progress, figures and outcome (persisted), and
//! what it says of itself (its report, its hold-out predictions).

use std::collections::BTreeMap;
use std::time::Instant;

use ember_core::eval::{auc, logloss};
use ember_core::JobSpec;
use serde::{Deserialize, Serialize};

use crate::plan::{Phase, Range};
pub use crate::report::HeldVersion;
use crate::report::{finite, JobReport, JobStats, StalenessReport};

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobState {
    /// Train items outstanding.
    Training,
    /// Test items outstanding.
    Evaluating,
    /// Done; metrics set.
    Succeeded,
    /// Stopped; `error` says why.
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum ItemStatus {
    Pending,
    Assigned,
    Done,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Item {
    pub(crate) id: u64,
    pub(crate) range: Range,
    pub(crate) status: ItemStatus,
    #[serde(skip)]
    pub(crate) holder: Option<String>,
    /// When its file was found (follow jobs), Unix ms.
    #[serde(default)]
    pub(crate) found_ms: u64,
    /// When it was last handed out, Unix ms (memory only).
    #[serde(skip)]
    pub(crate) assigned_ms: u64,
}

/// A job and its progress (what is persisted).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    /// Id.
    pub id: String,
    /// Submission order: work is handed out first come, first served.
    pub(crate) seq: u64,
    /// The job file text.
    pub toml: String,
    /// Name from the job file.
    pub name: String,
    /// State.
    pub state: JobState,
    pub(crate) items: Vec<Item>,
    /// The id of `items[0]` (items done at the head of a follow job's queue are dropped).
    #[serde(default)]
    pub(crate) item_base: u64,
    /// A follow job's source, files found and windows.
    #[serde(default)]
    pub stream: Option<super::stream::StreamState>,
    pub(crate) max_bad_ratio: f64,
    /// Rows trained.
    pub rows_trained: u64,
    /// Rows read (trained, tested or bad).
    pub(crate) rows_seen: u64,
    /// Malformed lines.
    pub bad_lines: u64,
    /// The first few.
    pub bad_line_samples: Vec<String>,
    pub(crate) loss_sum: f64,
    /// Hold-out predictions and labels by item id (memory only).
    #[serde(skip)]
    pub(crate) test_results: BTreeMap<u64, (Vec<f32>, Vec<f32>)>,
    /// Hold-out rows evaluated.
    #[serde(default)]
    pub(crate) test_rows_done: u64,
    /// Malformed lines in the hold-out split.
    #[serde(default)]
    pub(crate) test_bad_lines: u64,
    /// Data files, as planned.
    #[serde(default)]
    pub(crate) files: Vec<String>,
    /// Data rows in the training and test splits, as planned.
    #[serde(default)]
    pub(crate) split_rows: (u64, u64),
    /// Rows to train over all epochs.
    #[serde(default)]
    pub rows_to_train: u64,
    /// Figures from the workers' reports.
    #[serde(default)]
    pub stats: JobStats,
    /// No item before this index is pending (memory only; lowered when an item is requeued), so
    /// handing out the next item does not scan the done ones.
    #[serde(skip)]
    pub(crate) cursor: usize,
    /// Items not done yet: (train, test) (memory only; counted when the job is added or loaded).
    #[serde(skip)]
    pub(crate) open_items: (usize, usize),
    /// The version due at the end of training is not recorded yet.
    #[serde(default)]
    pub(crate) final_publish_pending: bool,
    /// Test AUC once evaluated.
    pub test_auc: Option<f64>,
    /// Test logloss once evaluated.
    pub test_logloss: Option<f64>,
    /// Why the job failed.
    pub error: Option<String>,
    /// A rollback is under way: nothing is handed out.
    #[serde(default)]
    pub(crate) paused: bool,
    /// Rollbacks done, oldest first.
    #[serde(default)]
    pub rollbacks: Vec<super::rollback::RollbackRecord>,
    /// Cluster checkpoints taken during the job.
    #[serde(default)]
    pub checkpoints: Vec<CheckpointRecord>,
    /// The job's checkpoint schedule.
    #[serde(default)]
    pub(crate) checkpoint_spec: ember_core::job::CheckpointSpec,
    /// Where and how often the job publishes model versions.
    #[serde(default)]
    pub(crate) publish_spec: ember_core::job::PublishSpec,
    /// Model versions published for the job and made current (version, rows trained), oldest
    /// first.
    #[serde(default)]
    pub published: Vec<(u64, u64)>,
    /// Versions the publish gate held, oldest first.
    #[serde(default)]
    pub held: Vec<HeldVersion>,
    /// The rows trained since the last version, for the gate.
    #[serde(default)]
    pub(crate) gate_window: super::gate::GateWindow,
    /// When the last version was due, Unix ms (0: none yet).
    #[serde(default)]
    pub(crate) last_publish_ms: u64,
    /// AUC the gate judged the last version made current by.
    #[serde(default)]
    pub(crate) published_auc: Option<f64>,
    /// Why the gate held the last version due (None: it passed).
    #[serde(default)]
    pub(crate) last_verdict: Option<String>,
    /// Seconds from submission to the end (or now).
    pub elapsed_seconds: f64,
    #[serde(skip)]
    pub(crate) started: Option<Instant>,
}

impl Job {
    /// (items done, items total).
    pub fn items_progress(&self) -> (u64, u64) {
        let open = self.open_items.0 + self.open_items.1;
        ((self.items.len() - open) as u64, self.items.len() as u64)
    }

    /// Mean progressive logloss so far.
    pub fn progressive_logloss(&self) -> f64 {
        self.loss_sum / self.rows_trained.max(1) as f64
    }

    /// Test rows evaluated.
    pub fn test_rows(&self) -> u64 {
        self.test_rows_done
    }

    /// Rows per progressive-validation window: about 100 windows over the training split.
    pub(crate) fn window_rows(&self) -> u64 {
        (self.split_rows.0 / 100).clamp(256, 1 << 16)
    }

    /// Counts the items not done and rewinds the cursor (after loading).
    pub(crate) fn count_open(&mut self) {
        let open = |p: Phase| self.items.iter().filter(|i| i.range.phase == p && i.status != ItemStatus::Done).count();
        self.open_items = (open(Phase::Train), open(Phase::Test));
        self.cursor = 0;
    }

    /// Puts item `index` back in the queue.
    pub(crate) fn requeue(&mut self, index: usize) {
        if let Some(item) = self.items.get_mut(index) {
            item.status = ItemStatus::Pending;
            item.holder = None;
            self.cursor = self.cursor.min(index);
        }
    }

    /// Marks item `index` done.
    pub(crate) fn mark_done(&mut self, index: usize) {
        let Some(item) = self.items.get_mut(index) else { return };
        if item.status != ItemStatus::Done {
            item.status = ItemStatus::Done;
            item.holder = None;
            match item.range.phase {
                Phase::Train => self.open_items.0 = self.open_items.0.saturating_sub(1),
                Phase::Test => self.open_items.1 = self.open_items.1.saturating_sub(1),
            }
        }
    }

    /// The index of the next pending item from the cursor (moving the cursor to it), if it is of
    /// `phase`.
    pub(crate) fn next_pending(&mut self, phase: Phase) -> Option<usize> {
        let from = self.cursor.min(self.items.len());
        match self.items[from..].iter().position(|i| i.status == ItemStatus::Pending) {
            Some(offset) => {
                self.cursor = from + offset;
                (self.items[self.cursor].range.phase == phase).then_some(self.cursor)
            }
            None => {
                self.cursor = self.items.len();
                None
            }
        }
    }

    /// Every train item is done.
    pub(crate) fn trained(&self) -> bool {
        self.open_items.0 == 0
    }

    /// Every train item is done: evaluation starts, and the last version is due if the job
    /// publishes.
    pub(crate) fn end_training(&mut self) {
        self.state = JobState::Evaluating;
        // A follow job's training ended with its last window, not when it was stopped or went
        // idle: waiting for data that never came is not training time.
        let last_window = self.stream.as_ref().and_then(|s| s.windows.back()).map(|w| w.end_unix_ms);
        self.stats.train_ended_ms = Some(last_window.unwrap_or_else(super::persist::unix_ms));
        self.final_publish_pending = !self.publish_spec.model_dir.is_empty();
        self.complete_if_done();
    }

    /// Succeeds once every test item is in and the final version is recorded.
    pub(crate) fn complete_if_done(&mut self) {
        let tested = self.open_items.1 == 0;
        if self.state != JobState::Evaluating || !tested || self.final_publish_pending {
            return;
        }
        let (probs, labels): (Vec<f32>, Vec<f32>) =
            self.test_results.values().fold((Vec::new(), Vec::new()), |(mut p, mut l), (probs, labels)| {
                p.extend_from_slice(probs);
                l.extend_from_slice(labels);
                (p, l)
            });
        // A follow job has no hold-out split: no test figures rather than NaN ones.
        if !labels.is_empty() {
            self.test_auc = Some(auc(&probs, &labels));
            self.test_logloss = Some(logloss(&probs, &labels));
        }
        self.state = JobState::Succeeded;
    }

    /// Hold-out predictions and labels in data order (empty once the scheduler restarted).
    pub fn test_predictions(&self) -> (Vec<f32>, Vec<f32>) {
        let mut out = (Vec::new(), Vec::new());
        for (probs, labels) in self.test_results.values() {
            out.0.extend_from_slice(probs);
            out.1.extend_from_slice(labels);
        }
        out
    }

    /// The job's report, but for what only the ps-servers know (`tables`, left empty) and the
    /// ps count; `now_ms` is the current Unix time.
    pub fn report(&self, ps: u32, now_ms: u64) -> JobReport {
        let spec = JobSpec::from_toml(&self.toml).ok();
        let (_, labels) = self.test_predictions();
        let s = &self.stats;
        let trained = s.progressive.count();
        let rate = s.progressive.positive_count() as f32 / trained.max(1) as f32;
        let baseline = (trained > 0 && !labels.is_empty()).then(|| logloss(&vec![rate; labels.len()], &labels));
        let train_seconds = s.train_seconds(now_ms);
        JobReport {
            job_id: self.id.clone(),
            job: self.name.clone(),
            state: format!("{:?}", self.state).to_lowercase(),
            error: self.error.clone(),
            model: spec.as_ref().map(|s| format!("{:?}", s.model.kind).to_lowercase()).unwrap_or_default(),
            data: self.files.clone(),
            cluster: (ps, s.workers.len() as u32),
            rows_total: self.split_rows.0 + self.split_rows.1,
            train_rows: self.split_rows.0,
            test_rows: self.test_rows_done,
            rows_trained: self.rows_trained,
            test_auc: self.test_auc.and_then(finite),
            test_logloss: self.test_logloss.and_then(finite),
            oracle_test_auc: None,
            baseline_test_logloss: baseline.and_then(finite),
            progressive_auc: finite(s.progressive.auc()),
            progressive_logloss: (self.rows_trained > 0).then(|| self.progressive_logloss()).and_then(finite),
            examples_per_sec: if train_seconds > 0.0 { self.rows_trained as f64 / train_seconds } else { 0.0 },
            train_seconds,
            wall_seconds: self.elapsed_seconds,
            bad_lines: self.bad_lines,
            bad_line_samples: self.bad_line_samples.clone(),
            bytes_pushed: s.bytes_pushed,
            bytes_pulled: s.bytes_pulled,
            sparse_bytes_pushed: s.sparse_bytes_pushed,
            dense_bytes_pushed: s.dense_bytes_pushed,
            bytes_pushed_by_table: s.bytes_pushed_by_table.clone(),
            curve: s.curve.clone(),
            tables: Vec::new(),
            published: self.published.iter().map(|(v, _)| *v).collect(),
            checkpoints: self.checkpoints.iter().filter(|c| c.error.is_none()).map(|c| c.label).collect(),
            sync: spec.map(|s| format!("{:?}", s.sync.mode).to_lowercase()).unwrap_or_default(),
            staleness: StalenessReport::from(&s.staleness),
            clock_wait_seconds: s.clock_wait_seconds,
            stream: self.stream_report(now_ms),
            held: self.held.clone(),
        }
    }

    /// Records a version written for `due`: made current, or held by the gate.
    pub(crate) fn record_version(&mut self, version: u64, due: &super::Publish) {
        let job = self.id.clone();
        match &due.held {
            None => {
                self.published.push((version, due.rows));
                self.published_auc = due.auc.or(self.published_auc);
                metrics::counter!("ember_job_versions_published_total", "job" => job).increment(1);
            }
            Some(reason) => {
                let reason = reason.clone();
                self.held.push(HeldVersion {
                    version,
                    rows_trained: due.rows,
                    reason,
                    unix_ms: super::persist::unix_ms(),
                });
                metrics::counter!("ember_job_versions_held_total", "job" => job).increment(1);
            }
        }
    }

    pub(crate) fn fail(&mut self, reason: String) {
        self.state = JobState::Failed;
        self.error = Some(reason);
    }
}

/// One checkpoint of every ps-server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointRecord {
    /// The job's rows trained when it was taken.
    pub label: u64,
    /// Full or incremental.
    pub full: bool,
    /// Each server's checkpoint id, in shard-map order (empty if it failed).
    pub ids: Vec<u64>,
    /// When.
    pub unix_ms: u64,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// A follow job's source when the checkpoint was decided (what a rollback rewinds to).
    #[serde(default)]
    pub position: Option<super::rollback::StreamPosition>,
}
