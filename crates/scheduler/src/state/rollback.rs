//! Rollback and replay of a follow job: its ps-servers return to one of its checkpoints, its
//! source rewinds to the windows done when that checkpoint was taken, and windows in a skipped
//! range of files are never trained.
//!
//! Invariants:
//! - A checkpoint of a follow job stores the source's position when the checkpoint was decided
//!   (before the servers wrote it): windows done then are in it; a window in flight then may be
//!   partly in it too, and is trained again (at least once, never lost).
//! - Windows are pruned from the queue only below the oldest kept checkpoint's position, so a
//!   rollback to any kept checkpoint finds every window it must hand out again.
//! - While a rollback runs the job hands out nothing ([`Job::paused`]); it starts only once no
//!   window is in flight, and a failure unpauses it (a failed restore on the servers fails the
//!   job: their state is then unknown).
//! - Checkpoints taken after the target belong to the abandoned branch: their records go, so a
//!   label (rows trained, which count again from the target) names one checkpoint.

use serde::{Deserialize, Serialize};

use super::job::{CheckpointRecord, ItemStatus, Job, JobState};
use super::{persist::unix_ms, SchedulerError, State};

/// Checkpoint records kept per job (the oldest go first).
pub const KEEP_CHECKPOINTS: usize = 64;

/// Which windows were done: every id below `below`, and the ids in `done` above it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPosition {
    /// Every window with a smaller id was done.
    pub below: u64,
    /// Windows at or above `below` that were done.
    pub done: Vec<u64>,
}

/// Which checkpoint a rollback returns to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RollbackTarget {
    /// The checkpoint with this label (the job's rows trained when it was taken).
    Label(u64),
    /// The newest checkpoint taken at or before this time (Unix ms).
    Time(u64),
}

/// A rollback under way: the checkpoint, and each server's id of it in shard-map order.
#[derive(Debug, Clone, PartialEq)]
pub struct RollbackPlan {
    /// The checkpoint's label.
    pub label: u64,
    /// Each ps-server's checkpoint id, in shard-map order.
    pub ids: Vec<u64>,
}

/// What a rollback did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RollbackRecord {
    /// The checkpoint returned to.
    pub label: u64,
    /// Rows trained before the rollback.
    pub from_rows: u64,
    /// Windows handed out again.
    pub requeued: u64,
    /// Rows of skipped windows (found so far).
    pub skipped_rows: u64,
    /// The file-name range skipped, if any.
    pub skip: Option<(String, String)>,
    /// The model version made current again, if the job publishes.
    pub version: Option<u64>,
    /// When, Unix ms.
    pub unix_ms: u64,
}

impl Job {
    /// Where the source stands now.
    pub(crate) fn position(&self) -> StreamPosition {
        let first_open = self.items.iter().position(|i| i.status != ItemStatus::Done).unwrap_or(self.items.len());
        let below = self.item_base + first_open as u64;
        let done = self.items[first_open..].iter().filter(|i| i.status == ItemStatus::Done).map(|i| i.id).collect();
        StreamPosition { below, done }
    }

    /// Windows below this id may be pruned: none a kept checkpoint would hand out again.
    pub(crate) fn prune_bound(&self) -> u64 {
        let kept = self.checkpoints.iter().filter_map(|c| c.position.as_ref()).map(|p| p.below);
        kept.min().unwrap_or(u64::MAX)
    }

    /// Whether a window of `file` lies in a skipped range.
    pub(crate) fn skipped(&self, file: &std::path::Path) -> bool {
        let Some(stream) = &self.stream else { return false };
        let name = file.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        stream.skip.iter().any(|(first, last)| name >= first.as_str() && name <= last.as_str())
    }
}

impl State {
    /// Records a cluster checkpoint with a job (keeping the newest [`KEEP_CHECKPOINTS`]).
    pub fn record_checkpoint(&mut self, job_id: &str, record: CheckpointRecord) -> Result<(), SchedulerError> {
        let job = self.persisted.jobs.get_mut(job_id).ok_or_else(|| SchedulerError::UnknownJob(job_id.into()))?;
        job.checkpoints.push(record);
        if job.checkpoints.len() > KEEP_CHECKPOINTS {
            job.checkpoints.remove(0);
        }
        self.dirty = true;
        Ok(())
    }

    /// What a checkpoint of `job_id` decided now is labeled with, and its source's position
    /// (follow jobs).
    pub fn checkpoint_point(&self, job_id: &str) -> Result<(u64, Option<StreamPosition>), SchedulerError> {
        let job = self.persisted.jobs.get(job_id).ok_or_else(|| SchedulerError::UnknownJob(job_id.into()))?;
        Ok((job.rows_trained, job.stream.as_ref().map(|_| job.position())))
    }

    /// Starts a rollback of follow job `job_id` to `target`: checks it, and pauses the job (no
    /// window is handed out until [`State::finish_rollback`]). The shard map must be the one the
    /// checkpoint was taken on (`servers` servers).
    pub fn begin_rollback(
        &mut self,
        job_id: &str,
        target: RollbackTarget,
        servers: usize,
    ) -> Result<RollbackPlan, SchedulerError> {
        let job = self.persisted.jobs.get_mut(job_id).ok_or_else(|| SchedulerError::UnknownJob(job_id.into()))?;
        let refuse = |m: String| Err(SchedulerError::Rollback(m));
        if job.stream.is_none() {
            return refuse(format!("job {job_id} reads a fixed set of files; only a follow job rewinds its source"));
        }
        if job.state != JobState::Training || job.paused {
            return refuse(format!(
                "job {job_id} is {:?}{}",
                job.state,
                if job.paused { " (rolling back)" } else { "" }
            ));
        }
        let usable: Vec<&CheckpointRecord> =
            job.checkpoints.iter().filter(|c| c.error.is_none() && c.position.is_some()).collect();
        let found = match target {
            RollbackTarget::Label(label) => usable.iter().find(|c| c.label == label),
            RollbackTarget::Time(ms) => usable.iter().rev().find(|c| c.unix_ms <= ms),
        };
        let Some(record) = found else {
            let labels: Vec<String> = usable.iter().map(|c| c.label.to_string()).collect();
            return refuse(format!(
                "job {job_id} has no checkpoint {}; its checkpoints are labeled [{}]",
                match target {
                    RollbackTarget::Label(l) => format!("labeled {l}"),
                    RollbackTarget::Time(ms) => format!("taken at or before {ms} ms"),
                },
                labels.join(", ")
            ));
        };
        if record.ids.len() != servers {
            return refuse(format!(
                "checkpoint {} was taken on {} ps-servers; the shard map now has {servers}",
                record.label,
                record.ids.len()
            ));
        }
        let plan = RollbackPlan { label: record.label, ids: record.ids.clone() };
        job.paused = true;
        self.dirty = true;
        Ok(plan)
    }

    /// Gives up a rollback before the servers were touched: the job goes on as it was.
    pub fn abort_rollback(&mut self, job_id: &str) {
        if let Some(job) = self.persisted.jobs.get_mut(job_id) {
            job.paused = false;
            self.dirty = true;
        }
    }

    /// Windows of `job_id` handed out and not reported.
    pub fn in_flight(&self, job_id: &str) -> usize {
        self.persisted
            .jobs
            .get(job_id)
            .map_or(0, |j| j.items.iter().filter(|i| i.status == ItemStatus::Assigned).count())
    }

    /// Ends a rollback: `restored` says how the servers' restore went, `version` is the model
    /// version to serve again. On success the source rewinds to the checkpoint's position and
    /// windows of files named in `skip` (inclusive) are marked done without training.
    pub fn finish_rollback(
        &mut self,
        job_id: &str,
        plan: &RollbackPlan,
        skip: Option<(String, String)>,
        restored: Result<(), String>,
    ) -> Result<RollbackRecord, SchedulerError> {
        let job = self.persisted.jobs.get_mut(job_id).ok_or_else(|| SchedulerError::UnknownJob(job_id.into()))?;
        job.paused = false;
        self.dirty = true;
        if let Err(e) = restored {
            job.fail(format!(
                "rollback to checkpoint {} failed on the ps-servers ({e}); their state is unknown: restart them \
                 (each restores its newest checkpoint chain) and submit the job again",
                plan.label
            ));
            return Err(SchedulerError::Rollback(e));
        }
        let at = job.checkpoints.iter().rposition(|c| c.label == plan.label && c.position.is_some());
        let Some(at) = at else { return Err(SchedulerError::Rollback(format!("checkpoint {} is gone", plan.label))) };
        let position = job.checkpoints[at].position.clone().unwrap_or_default();
        job.checkpoints.truncate(at + 1);
        if let (Some(stream), Some(range)) = (job.stream.as_mut(), &skip) {
            stream.skip.push(range.clone());
        }
        let (mut requeued, mut skipped_rows) = (0, 0);
        for i in 0..job.items.len() {
            let (id, rows) = (job.items[i].id, job.items[i].range.rows);
            let done_then = id < position.below || position.done.binary_search(&id).is_ok();
            let skip_it = !done_then && job.skipped(&job.items[i].range.path);
            let item = &mut job.items[i];
            item.holder = None;
            if done_then || skip_it {
                item.status = ItemStatus::Done;
                skipped_rows += if skip_it { rows } else { 0 };
            } else {
                requeued += u64::from(item.status == ItemStatus::Done);
                item.status = ItemStatus::Pending;
            }
        }
        let from_rows = job.rows_trained;
        job.rows_trained = plan.label;
        job.gate_window = Default::default();
        job.last_verdict = None;
        job.count_open();
        let version = job.published.iter().rev().find(|(_, rows)| *rows <= plan.label).map(|(v, _)| *v);
        let record =
            RollbackRecord { label: plan.label, from_rows, requeued, skipped_rows, skip, version, unix_ms: unix_ms() };
        job.rollbacks.push(record.clone());
        Ok(record)
    }
}
