//! Jobs that follow a stream of files: discovery, windows as work items, lag, per-window
//! progressive validation, and the end of a never-ending job.
//!
//! Invariants:
//! - A file is planned once: its path enters `seen` when its windows are queued, and leaves only
//!   when a later listing no longer shows it (the sink's retention removed it), so `seen` is
//!   bounded by the directory, not by the job's age. A file is never re-read (one that changes
//!   after it was renamed into place keeps the windows it was cut into).
//! - Listing and cutting new files happen off the lock ([`poll`]); the result is applied under
//!   it ([`State::apply_follow`]). One poll per job is in flight at a time.
//! - Items done at the head of the queue are dropped once there are [`PRUNE_AT`] of them (item
//!   ids keep counting: `items[i].id == item_base + i`), so the persisted state of a job that
//!   never ends stays bounded; its figures live in the stats, the windows and the counters.
//! - The job trains until it is stopped (`ember stop`) or idle for `follow.idle_seconds`; then
//!   it trains the windows already found, publishes its last version (with `[publish]`) and
//!   succeeds. It has no hold-out split: each window is evaluated before it is trained on.

use std::collections::{BTreeSet, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ember_core::eval::{auc, logloss};
use ember_core::job::FollowSpec;
use ember_core::JobSpec;
use serde::{Deserialize, Serialize};

use super::job::{Item, ItemStatus, Job};
use super::persist::unix_ms;
use super::{Due, SchedulerError, State};
use crate::plan::{self, Range};
use crate::report::{StreamReport, WindowRecord};

/// Windows kept in a job's time series (the oldest go first).
pub const MAX_WINDOWS: usize = 4096;

/// Done items at the head of the queue that make a prune.
pub const PRUNE_AT: usize = 256;

/// A follow job's source (persisted with the job).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StreamState {
    pub(crate) patterns: Vec<String>,
    pub(crate) header_lines: u64,
    pub(crate) follow: FollowSpec,
    /// Files planned that the last listing still showed.
    pub(crate) seen: BTreeSet<PathBuf>,
    /// Files and rows found so far.
    pub files_found: u64,
    /// See `files_found`.
    pub rows_found: u64,
    /// When the last new file was found (or the job submitted), Unix ms.
    pub(crate) last_found_ms: u64,
    /// `ember stop` was asked: no new file is taken.
    pub stopping: bool,
    /// File-name ranges (inclusive) a rollback skipped: their windows are never trained.
    #[serde(default)]
    pub skip: Vec<(String, String)>,
    /// Rows of windows skipped so far.
    #[serde(default)]
    pub skipped_rows: u64,
    /// Progressive validation per window, oldest first (at most [`MAX_WINDOWS`]).
    pub windows: VecDeque<WindowRecord>,
    /// When the next listing is due (memory only: a restarted scheduler lists at once).
    #[serde(skip)]
    pub(crate) next_poll: Option<Instant>,
    /// A listing is in flight (memory only).
    #[serde(skip)]
    pub(crate) polling: bool,
}

impl StreamState {
    /// The source of a follow job whose first listing found `files`.
    pub(crate) fn new(spec: &JobSpec, header_lines: u64, files: &[PathBuf], rows: u64, now_ms: u64) -> Self {
        Self {
            patterns: spec.data.paths.clone(),
            header_lines,
            follow: spec.data.follow,
            seen: files.iter().cloned().collect(),
            files_found: files.len() as u64,
            rows_found: rows,
            last_found_ms: now_ms,
            stopping: false,
            skip: Vec::new(),
            skipped_rows: 0,
            windows: VecDeque::new(),
            next_poll: None,
            polling: false,
        }
    }

    /// The job takes no more files: stopped, or idle past `follow.idle_seconds`.
    fn closed(&self, now_ms: u64) -> bool {
        let idle = self.follow.idle_seconds;
        self.stopping || (idle > 0.0 && now_ms.saturating_sub(self.last_found_ms) as f64 >= idle * 1000.0)
    }
}

/// Work items of `size` rows at most for a follow source: one window per `window_rows`, never
/// spanning two files.
pub(crate) fn window_size(follow: &FollowSpec) -> plan::ItemSize {
    plan::ItemSize { target_items: 1, min_rows: follow.window_rows, max_rows: follow.window_rows }
}

/// A listing to make off the lock.
#[derive(Debug, Clone)]
pub struct FollowPoll {
    /// The job.
    pub job_id: String,
    patterns: Vec<String>,
    seen: BTreeSet<PathBuf>,
    header_lines: u64,
    size: plan::ItemSize,
}

/// What a listing found.
#[derive(Debug, Default)]
pub struct Found {
    /// Every complete file the patterns match now.
    present: Vec<PathBuf>,
    /// New files' windows, in name order.
    ranges: Vec<Range>,
    /// New files and their rows.
    files: Vec<PathBuf>,
}

/// Lists a follow job's files and cuts the new ones into windows (reads files: call it off the
/// lock). A file that cannot be read now (removed between the listing and the read) is left
/// for the next poll; a file outside the data roots fails the listing.
pub fn poll(p: &FollowPoll, roots: &ember_model::DataRoots) -> Result<Found, plan::PlanError> {
    let present = plan::list_follow(&p.patterns, roots)?;
    let mut found = Found::default();
    for file in present.iter().filter(|f| !p.seen.contains(*f)) {
        match plan::plan(std::slice::from_ref(file), p.header_lines, 0.0, p.size) {
            Ok(ranges) => {
                found.ranges.extend(ranges);
                found.files.push(file.clone());
            }
            Err(e) => {
                tracing::warn!(job = %p.job_id, file = %file.display(), error = %e, "a new file is not readable yet")
            }
        }
    }
    found.present = present;
    Ok(found)
}

impl Job {
    /// A follow job's part of its report.
    pub(crate) fn stream_report(&self, now_ms: u64) -> Option<StreamReport> {
        let stream = self.stream.as_ref()?;
        let (lag_rows, lag_seconds) = self.lag(now_ms);
        Some(StreamReport {
            files_found: stream.files_found,
            rows_found: stream.rows_found,
            lag_rows,
            lag_seconds,
            stopping: stream.stopping,
            windows: stream.windows.iter().cloned().collect(),
        })
    }

    /// Rows found and not trained yet, and how long the oldest of them has waited (seconds).
    pub fn lag(&self, now_ms: u64) -> (u64, f64) {
        let open = self.items.iter().filter(|i| i.status != ItemStatus::Done);
        let (rows, oldest) =
            open.fold((0, u64::MAX), |(rows, oldest), i| (rows + i.range.rows, oldest.min(i.found_ms)));
        let seconds = if oldest == u64::MAX { 0.0 } else { now_ms.saturating_sub(oldest) as f64 / 1000.0 };
        (rows, seconds)
    }

    /// Appends windows found at `now_ms` to the queue (those of a skipped file as done).
    fn queue_windows(&mut self, ranges: Vec<Range>, now_ms: u64) {
        for range in ranges {
            let id = self.item_base + self.items.len() as u64;
            let status = if self.skipped(&range.path) {
                if let Some(stream) = self.stream.as_mut() {
                    stream.skipped_rows += range.rows;
                }
                ItemStatus::Done
            } else {
                self.split_rows.0 += range.rows;
                self.rows_to_train += range.rows;
                self.open_items.0 += 1;
                ItemStatus::Pending
            };
            self.items.push(Item { id, range, status, holder: None, found_ms: now_ms, assigned_ms: 0 });
        }
    }

    /// Drops done items at the head of a follow job's queue (see the module's invariants), but
    /// none a kept checkpoint would hand out again.
    pub(crate) fn prune(&mut self) {
        let bound = self.prune_bound();
        let done = self.items.iter().take_while(|i| i.status == ItemStatus::Done && i.id < bound).count();
        if self.stream.is_some() && done >= PRUNE_AT {
            self.items.drain(..done);
            self.item_base += done as u64;
            self.cursor = self.cursor.saturating_sub(done);
        }
    }

    /// Records a follow job's window: `rows` of `range` trained, with their progressive
    /// predictions and labels (empty if the worker sent none), handed out at `assigned_ms`.
    pub(crate) fn record_window(
        &mut self,
        id: u64,
        range: &Range,
        rows: u64,
        scored: (&[f32], &[f32]),
        assigned_ms: u64,
    ) {
        let (probs, labels) = scored;
        let now = unix_ms();
        let (lag_rows, lag_seconds) = self.lag(now);
        let Some(stream) = self.stream.as_mut() else { return };
        let finite = |v: f64| v.is_finite().then_some(v);
        let positives = labels.iter().filter(|y| **y > 0.5).count();
        let record = WindowRecord {
            item: id,
            file: range.path.display().to_string(),
            first_line: range.first_line,
            rows,
            auc: finite(auc(probs, labels)),
            logloss: finite(logloss(probs, labels)),
            positive_rate: (!labels.is_empty()).then(|| positives as f64 / labels.len() as f64),
            examples_per_sec: rows as f64 * 1000.0 / now.saturating_sub(assigned_ms).max(1) as f64,
            lag_rows,
            lag_seconds,
            end_unix_ms: now,
        };
        let job = self.id.clone();
        metrics::gauge!("ember_job_window_auc", "job" => job.clone()).set(record.auc.unwrap_or(f64::NAN));
        metrics::gauge!("ember_job_window_logloss", "job" => job.clone()).set(record.logloss.unwrap_or(f64::NAN));
        metrics::gauge!("ember_job_window_positive_rate", "job" => job.clone())
            .set(record.positive_rate.unwrap_or(f64::NAN));
        metrics::gauge!("ember_job_window_examples_per_second", "job" => job.clone()).set(record.examples_per_sec);
        metrics::counter!("ember_job_rows_trained_total", "job" => job.clone()).increment(rows);
        set_lag(&job, lag_rows, lag_seconds);
        if stream.windows.len() >= MAX_WINDOWS {
            stream.windows.pop_front();
        }
        stream.windows.push_back(record);
    }
}

fn set_lag(job: &str, rows: u64, seconds: f64) {
    metrics::gauge!("ember_job_lag_rows", "job" => job.to_string()).set(rows as f64);
    metrics::gauge!("ember_job_lag_seconds", "job" => job.to_string()).set(seconds);
}

impl State {
    /// Follow jobs whose next listing is due at `now` (each marked in flight until applied).
    pub fn follow_polls(&mut self, now: Instant) -> Vec<FollowPoll> {
        let mut due = Vec::new();
        for job in self.persisted.jobs.values_mut() {
            let training = job.state == super::JobState::Training;
            let Some(stream) = job.stream.as_mut() else { continue };
            if !training || stream.stopping || stream.polling || stream.next_poll.is_some_and(|t| t > now) {
                continue;
            }
            stream.polling = true;
            stream.next_poll = Some(now + Duration::from_millis(stream.follow.poll_ms));
            due.push(FollowPoll {
                job_id: job.id.clone(),
                patterns: stream.patterns.clone(),
                seen: stream.seen.clone(),
                header_lines: stream.header_lines,
                size: window_size(&stream.follow),
            });
        }
        due
    }

    /// Applies a listing of `job_id`'s source: queues new files' windows, forgets files that
    /// are gone, fails the job if the listing failed, and ends training once the job is closed
    /// (stopped or idle) and every window is trained. Returns the version due then, if any.
    pub fn apply_follow(&mut self, job_id: &str, found: Result<Found, plan::PlanError>) -> Result<Due, SchedulerError> {
        let job = self.persisted.jobs.get_mut(job_id).ok_or_else(|| SchedulerError::UnknownJob(job_id.into()))?;
        let now_ms = unix_ms();
        let Some(stream) = job.stream.as_mut() else { return Ok(Due::default()) };
        stream.polling = false;
        if job.state != super::JobState::Training {
            return Ok(Due::default());
        }
        match found {
            Err(e) => {
                let reason = format!("following {:?}: {e}", stream.patterns);
                job.fail(reason);
            }
            Ok(found) if !stream.stopping => {
                stream.seen.retain(|p| found.present.binary_search(p).is_ok());
                if !found.files.is_empty() {
                    stream.last_found_ms = now_ms;
                    stream.files_found += found.files.len() as u64;
                    stream.rows_found += found.ranges.iter().map(|r| r.rows).sum::<u64>();
                    metrics::counter!("ember_job_files_found_total", "job" => job_id.to_string())
                        .increment(found.files.len() as u64);
                }
                stream.seen.extend(found.files);
                job.queue_windows(found.ranges, now_ms);
            }
            Ok(_) => {}
        }
        let (rows, seconds) = job.lag(now_ms);
        set_lag(job_id, rows, seconds);
        self.dirty = true;
        Ok(self.end_if_closed(job_id))
    }

    /// `ember stop`: a follow job takes no new file, trains the windows it found, publishes its
    /// last version and succeeds. Refused for a job that reads a fixed set of files.
    pub fn stop_job(&mut self, job_id: &str) -> Result<Due, SchedulerError> {
        let job = self.persisted.jobs.get_mut(job_id).ok_or_else(|| SchedulerError::UnknownJob(job_id.into()))?;
        let Some(stream) = job.stream.as_mut() else {
            return Err(SchedulerError::NotStream(job_id.into()));
        };
        stream.stopping = true;
        self.dirty = true;
        Ok(self.end_if_closed(job_id))
    }

    /// Ends a closed follow job's training once every window found is trained.
    pub(crate) fn end_if_closed(&mut self, job_id: &str) -> Due {
        let Some(job) = self.persisted.jobs.get_mut(job_id) else { return Due::default() };
        let closed = job.stream.as_ref().is_some_and(|s| s.closed(unix_ms()));
        if !closed || job.state != super::JobState::Training || !job.trained() {
            return Due::default();
        }
        job.end_training();
        let publish = if job.final_publish_pending { job.version_due(job.rows_trained, true, unix_ms()) } else { None };
        Due { checkpoint: None, position: None, publish }
    }
}
