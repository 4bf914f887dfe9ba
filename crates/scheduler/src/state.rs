//! The scheduler's state and every decision it makes, as plain Rust with the clock passed in.
//!
//! Invariants:
//! - ps-servers keep their place in the shard map across lease expiry and restarts (matched by
//!   address); the map only grows, as rows are never migrated.
//! - Members hold leases; a member whose lease expired is forgotten, and the items it held go
//!   back to the queue (a worker that dies loses no data, only time).
//! - The shard map spreads `num_slots` slots round-robin over the live ps-servers in registration
//!   order; its version changes whenever that list does. (Rows do not move with slots yet.)
//! - A job trains every train item (per epoch), then hands out test items; it is evaluated only
//!   once every train item is done. It fails, with the reason, when bad lines pass its
//!   `max_bad_ratio` or a worker reports an error.
//! - A follow job (`source = "follow"`, see `stream`) has no test items: its windows are queued
//!   as its files are found, and it ends when stopped or idle, once every window found is trained.
//!   It can be rolled back to one of its checkpoints (`rollback`).
//! - Jobs are persisted (temporary file, fsync, rename); members are not (they re-register after
//!   a scheduler restart). No change writes under the lock: a change marks the state dirty, and
//!   [`State::snapshot`] copies it for a persister to write off the lock at a bounded rate (a
//!   crash loses at most that interval of reports, whose items are then trained again: at least
//!   once, as for a worker that dies). A submission is answered only after a snapshot holding it
//!   is written ([`State::force_snapshot`]). Items assigned when the scheduler stopped are
//!   pending again after it restarts.
//! - Per-row hold-out predictions are kept in memory only; a scheduler that restarts during
//!   evaluation evaluates again.
//! - A job with `[publish]` succeeds only once the version published at the end of training is
//!   recorded (so whoever waits for the job finds it); if that publish fails, the job fails.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::plan::{self, Phase, Range};
pub use crate::report::ItemReport;

/// Work item sizes: about 32 items per job so fast workers take more, at least 256 rows so a
/// batch pipeline fills, at most 65,536 so a lost item is cheap to redo (a few seconds of one
/// worker's work at most). Each item costs a worker a pipeline drain and refill, two scheduler
/// round trips and a reader start: at 8,192 rows a 1M-row LR job had 110 of them.
pub const ITEM_SIZE: plan::ItemSize = plan::ItemSize { target_items: 32, min_rows: 256, max_rows: 65536 };

/// A member's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A ps-server.
    Ps,
    /// A worker.
    Worker,
}

struct Member {
    role: Role,
    address: String,
    expires: Instant,
}

/// A work item handed to a worker.
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    /// Job id.
    pub job_id: String,
    /// Item id.
    pub item_id: u64,
    /// The job file.
    pub job_toml: String,
    /// The range.
    pub range: Range,
    /// Rows per progressive-validation window.
    pub window_rows: u64,
}

/// What a report makes due.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Due {
    /// A cluster checkpoint: (full, label = rows trained).
    pub checkpoint: Option<(bool, u64)>,
    /// A follow job's source position when that checkpoint was decided.
    pub position: Option<rollback::StreamPosition>,
    /// A model version: each time `publish.every` more rows or `publish.every_seconds` are
    /// trained, and when training ends (before evaluation, so the version is the evaluated model).
    pub publish: Option<Publish>,
}

/// A model version due.
#[derive(Debug, Clone, PartialEq)]
pub struct Publish {
    /// Rows trained.
    pub rows: u64,
    /// The version at the end of training (the job waits for it).
    pub last: bool,
    /// Why the publish gate holds it (written, never made current), if it does.
    pub held: Option<String>,
    /// AUC of the rows trained since the previous version (progressive), if known.
    pub auc: Option<f64>,
}

/// The scheduler's state.
pub struct State {
    lease: Duration,
    num_slots: u32,
    state_file: PathBuf,
    members: BTreeMap<String, Member>,
    /// ps-server addresses in shard-map order. A server keeps its place when its lease expires
    /// (its rows, checkpointed under its data dir, come back when it restarts at the same
    /// address); rows are not migrated, so the map only grows.
    ps_order: Vec<String>,
    map_version: u64,
    next_member: u64,
    persisted: Persisted,
    /// Where job data may be read from (planning reads every file).
    data_roots: ember_model::DataRoots,
    /// Changed since the last snapshot.
    dirty: bool,
    /// Snapshots taken.
    snapshots: u64,
    /// The newest snapshot written (see [`Snapshot`]).
    written: std::sync::Arc<parking_lot::Mutex<u64>>,
}

impl State {
    /// Reads job data only under `roots` (default: unrestricted).
    pub fn with_data_roots(mut self, roots: ember_model::DataRoots) -> Self {
        self.data_roots = roots;
        self
    }

    /// Where job data may be read from.
    pub fn data_roots(&self) -> &ember_model::DataRoots {
        &self.data_roots
    }

    /// Loads the jobs persisted under `state_dir` (if any).
    pub fn open(state_dir: &Path, lease: Duration, num_slots: u32) -> Result<Self, SchedulerError> {
        let state_file = state_dir.join("scheduler-state.json");
        let err = |reason: String| SchedulerError::State { path: state_file.clone(), reason };
        std::fs::create_dir_all(state_dir).map_err(|e| err(e.to_string()))?;
        let mut persisted: Persisted = match std::fs::read(&state_file) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| err(format!("corrupt: {e}")))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Persisted::default(),
            Err(e) => return Err(err(e.to_string())),
        };
        for job in persisted.jobs.values_mut() {
            // Hold-out predictions were not persisted: an evaluation in progress starts over.
            let evaluating = job.state == JobState::Evaluating;
            for item in &mut job.items {
                let lost = evaluating && item.range.phase == Phase::Test;
                if item.status == ItemStatus::Assigned || (lost && item.status == ItemStatus::Done) {
                    item.status = ItemStatus::Pending;
                }
            }
            if evaluating {
                job.test_rows_done = 0;
                // A publish in flight when the scheduler stopped is lost; evaluation goes on.
                job.final_publish_pending = false;
            }
            job.count_open();
        }
        Ok(Self {
            lease,
            num_slots,
            state_file,
            members: BTreeMap::new(),
            ps_order: Vec::new(),
            map_version: 1,
            next_member: 1,
            persisted,
            data_roots: ember_model::DataRoots::unrestricted(),
            dirty: false,
            snapshots: 0,
            written: Default::default(),
        })
    }

    /// Has the next snapshot written (after a failed write).
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// What to persist, if anything changed since the last snapshot or save: a copy taken under
    /// the lock (cheap) to serialize and write without it.
    pub fn snapshot(&mut self) -> Option<Snapshot> {
        self.dirty.then(|| self.force_snapshot())
    }

    /// A snapshot whether or not anything changed: whoever writes it knows the state it saw is
    /// on disk (a submission is answered only then).
    pub fn force_snapshot(&mut self) -> Snapshot {
        self.dirty = false;
        self.snapshots += 1;
        Snapshot {
            path: self.state_file.clone(),
            persisted: self.persisted.clone(),
            seq: self.snapshots,
            written: std::sync::Arc::clone(&self.written),
        }
    }

    /// The lease length members must renew within.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// The next item for `member`, if any job has one ready.
    pub fn next_work(&mut self, member: &str, now: Instant) -> Result<Option<Assignment>, SchedulerError> {
        self.heartbeat(member, now)?;
        if self.ps_order.is_empty() {
            return Ok(None);
        }
        let mut jobs: Vec<&mut Job> = self.persisted.jobs.values_mut().collect();
        jobs.sort_by_key(|j| j.seq);
        for job in jobs {
            let phase = match job.state {
                JobState::Training if job.paused => continue,
                JobState::Training => Phase::Train,
                JobState::Evaluating => Phase::Test,
                _ => continue,
            };
            if let Some(index) = job.next_pending(phase) {
                let item = &mut job.items[index];
                item.status = ItemStatus::Assigned;
                item.holder = Some(member.to_string());
                item.assigned_ms = persist::unix_ms();
                let (item_id, range) = (item.id, item.range.clone());
                if phase == Phase::Train && job.stats.train_started_ms.is_none() {
                    job.stats.train_started_ms = Some(persist::unix_ms());
                }
                return Ok(Some(Assignment {
                    job_id: job.id.clone(),
                    item_id,
                    job_toml: job.toml.clone(),
                    range,
                    window_rows: job.window_rows(),
                }));
            }
        }
        Ok(None)
    }

    /// Records a finished item and moves its job on. Returns what the job's schedules want done
    /// now: a cluster checkpoint, a model version.
    pub fn report(
        &mut self,
        member: &str,
        job_id: &str,
        item_id: u64,
        report: ItemReport,
        now: Instant,
    ) -> Result<Due, SchedulerError> {
        self.heartbeat(member, now)?;
        let job = self.persisted.jobs.get_mut(job_id).ok_or_else(|| SchedulerError::UnknownJob(job_id.into()))?;
        let rows_before = job.rows_trained;
        // Item ids are their indexes past the pruned ones; a pruned item is done.
        if item_id < job.item_base {
            return Ok(Due::default());
        }
        let index = usize::try_from(item_id - job.item_base)
            .ok()
            .filter(|i| job.items.get(*i).is_some_and(|it| it.id == item_id));
        let Some(index) = index else {
            return Err(SchedulerError::UnknownJob(format!("{job_id} item {item_id}")));
        };
        let item = &mut job.items[index];
        // A late report for an item that was requeued and done by someone else changes nothing.
        if item.status == ItemStatus::Done || matches!(job.state, JobState::Failed | JobState::Succeeded) {
            return Ok(Due::default());
        }
        let mut report = report;
        report_check::check(item, member, &mut report).map_err(SchedulerError::BadReport)?;
        let was_training = job.state == JobState::Training;
        let (phase, assigned_ms) = (item.range.phase, item.assigned_ms);
        let range = job.stream.is_some().then(|| item.range.clone());
        job.mark_done(index);
        job.bad_lines += report.bad_lines;
        job.rows_seen += report.rows + report.bad_lines;
        for s in report.bad_line_samples {
            if job.bad_line_samples.len() < 5 {
                job.bad_line_samples.push(s);
            }
        }
        match phase {
            Phase::Train => {
                job.rows_trained += report.rows;
                job.loss_sum += report.loss_sum;
                job.gate_window.add(report.rows, report.loss_sum, &report.probs, &report.labels);
                job.stats.add(member, report.stats, &report.probs, &report.labels);
                if let Some(range) = range {
                    job.record_window(item_id, &range, report.rows, (&report.probs, &report.labels), assigned_ms);
                    job.prune();
                }
            }
            Phase::Test => {
                job.test_bad_lines += report.bad_lines;
                job.test_rows_done += report.labels.len() as u64;
                job.test_results.insert(item_id, (report.probs, report.labels));
            }
        }
        if let Some(error) = report.error {
            job.fail(format!("worker {member}: {error}"));
        } else if job.bad_lines as f64 > job.max_bad_ratio * job.rows_seen.max(1) as f64 {
            job.fail(format!(
                "{} of {} lines malformed (max_bad_ratio {}; {} in the hold-out split); first: {}",
                job.bad_lines,
                job.rows_seen,
                job.max_bad_ratio,
                job.test_bad_lines,
                job.bad_line_samples.join("; ")
            ));
        } else {
            // A follow job's end is decided by its source (`end_if_closed` below).
            if job.state == JobState::Training && job.trained() && job.stream.is_none() {
                job.end_training();
            }
            job.complete_if_done();
        }
        if let Some(started) = job.started {
            job.elapsed_seconds = now.duration_since(started).as_secs_f64();
        }
        let checkpoint = job.checkpoint_spec.due(rows_before, job.rows_trained).map(|full| (full, job.rows_trained));
        let position = checkpoint.and(job.stream.as_ref()).map(|_| job.position());
        let training_ended = was_training && matches!(job.state, JobState::Evaluating | JobState::Succeeded);
        let publish = job.version_due(rows_before, training_ended, persist::unix_ms());
        self.dirty = true;
        let publish = publish.or(self.end_if_closed(job_id).publish);
        Ok(Due { checkpoint, position, publish })
    }

    /// Records how publishing a version for a job went: the version, or why it failed. A
    /// failed periodic version changes nothing (the previous ones keep serving, the next
    /// schedule point tries again); a failed last version fails the job.
    pub fn record_published(
        &mut self,
        job_id: &str,
        due: Publish,
        outcome: Result<u64, String>,
    ) -> Result<(), SchedulerError> {
        let job = self.persisted.jobs.get_mut(job_id).ok_or_else(|| SchedulerError::UnknownJob(job_id.into()))?;
        match outcome {
            Ok(version) => job.record_version(version, &due),
            Err(e) if due.last && job.state != JobState::Failed => {
                job.fail(format!("publishing the model version at the end of training failed: {e}"));
            }
            Err(_) => {}
        }
        if due.last {
            job.final_publish_pending = false;
            job.complete_if_done();
        }
        self.dirty = true;
        Ok(())
    }

    /// One job, or all in submission order.
    pub fn jobs(&self, id: Option<&str>) -> Result<Vec<&Job>, SchedulerError> {
        match id {
            Some(id) => Ok(vec![self.persisted.jobs.get(id).ok_or_else(|| SchedulerError::UnknownJob(id.into()))?]),
            None => {
                let mut jobs: Vec<&Job> = self.persisted.jobs.values().collect();
                jobs.sort_by_key(|j| j.seq);
                Ok(jobs)
            }
        }
    }
}

mod error;
mod gate;
mod job;
mod members;
mod persist;
mod report_check;
pub mod rollback;
pub mod stream;
mod submit;

pub use error::SchedulerError;
use job::ItemStatus;
pub use job::{CheckpointRecord, Job, JobState};
pub(crate) use persist::unix_ms;
use persist::Persisted;
pub use persist::Snapshot;
pub use submit::{plan_job, Planned};
#[cfg(test)]
mod stream_tests;
#[cfg(test)]
mod tests;
