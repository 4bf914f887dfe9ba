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
//! - Jobs are persisted (temporary file, fsync, rename) after every change; members are not (they
//!   re-register after a scheduler restart). Items assigned when the scheduler stopped are pending
//!   again after it restarts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ember_core::eval::{auc, logloss};
use ember_core::JobSpec;
use serde::{Deserialize, Serialize};

use crate::plan::{self, Phase, Range};

/// Work item sizes: about 32 items per job so fast workers take more, at least 256 rows so a
/// batch pipeline fills, at most 8,192 so a lost item is cheap to redo.
pub const ITEM_SIZE: plan::ItemSize = plan::ItemSize { target_items: 32, min_rows: 256, max_rows: 8192 };

/// A member's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A ps-server.
    Ps,
    /// A worker.
    Worker,
}

/// Why a request was refused.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// Unknown member, or its lease expired: register again.
    #[error("member {0:?} is not registered (its lease may have expired): register again")]
    UnknownMember(String),
    /// Unknown job.
    #[error("job {0:?} not found")]
    UnknownJob(String),
    /// The job file does not parse or validate.
    #[error(transparent)]
    BadJob(#[from] ember_core::JobError),
    /// The job's data cannot be planned.
    #[error(transparent)]
    Plan(#[from] plan::PlanError),
    /// No ps-server registered yet.
    #[error("no ps-server is registered yet")]
    NoPs,
    /// A work report whose figures its item cannot hold (see `report_check`).
    #[error("report refused: {0}")]
    BadReport(String),
    /// The state file could not be written or read.
    #[error("state file {}: {reason}", path.display())]
    State {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
}

struct Member {
    role: Role,
    address: String,
    expires: Instant,
}

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
enum ItemStatus {
    Pending,
    Assigned,
    Done,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Item {
    id: u64,
    range: Range,
    status: ItemStatus,
    #[serde(skip)]
    holder: Option<String>,
}

/// A job and its progress (what is persisted).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    /// Id.
    pub id: String,
    /// Submission order: work is handed out first come, first served.
    seq: u64,
    /// The job file text.
    pub toml: String,
    /// Name from the job file.
    pub name: String,
    /// State.
    pub state: JobState,
    items: Vec<Item>,
    max_bad_ratio: f64,
    /// Rows trained.
    pub rows_trained: u64,
    /// Rows read (trained, tested or bad).
    rows_seen: u64,
    /// Malformed lines.
    pub bad_lines: u64,
    /// The first few.
    pub bad_line_samples: Vec<String>,
    loss_sum: f64,
    test_probs: Vec<f32>,
    test_labels: Vec<f32>,
    /// Test AUC once evaluated.
    pub test_auc: Option<f64>,
    /// Test logloss once evaluated.
    pub test_logloss: Option<f64>,
    /// Why the job failed.
    pub error: Option<String>,
    /// Cluster checkpoints taken during the job.
    #[serde(default)]
    pub checkpoints: Vec<CheckpointRecord>,
    /// The job's checkpoint schedule.
    #[serde(default)]
    checkpoint_spec: ember_core::job::CheckpointSpec,
    /// Where and how often the job publishes model versions.
    #[serde(default)]
    publish_spec: ember_core::job::PublishSpec,
    /// Model versions published for the job (version, rows trained), oldest first.
    #[serde(default)]
    pub published: Vec<(u64, u64)>,
    /// Seconds from submission to the end (or now).
    pub elapsed_seconds: f64,
    #[serde(skip)]
    started: Option<Instant>,
}

impl Job {
    /// (items done, items total).
    pub fn items_progress(&self) -> (u64, u64) {
        (self.items.iter().filter(|i| i.status == ItemStatus::Done).count() as u64, self.items.len() as u64)
    }

    /// Mean progressive logloss so far.
    pub fn progressive_logloss(&self) -> f64 {
        self.loss_sum / self.rows_trained.max(1) as f64
    }

    /// Test rows evaluated.
    pub fn test_rows(&self) -> u64 {
        self.test_labels.len() as u64
    }

    fn fail(&mut self, reason: String) {
        self.state = JobState::Failed;
        self.error = Some(reason);
    }
}

impl ember_core::HasCode for SchedulerError {
    fn code(&self) -> ember_core::Code {
        use ember_core::Code;
        match self {
            SchedulerError::UnknownMember(_) | SchedulerError::UnknownJob(_) => Code::NotFound,
            SchedulerError::Plan(plan::PlanError::Root(ember_model::DataRootError::Outside(_))) => {
                Code::PermissionDenied
            }
            SchedulerError::BadJob(_) | SchedulerError::Plan(_) | SchedulerError::BadReport(_) => Code::InvalidArgument,
            SchedulerError::NoPs => Code::FailedPrecondition,
            // The state file could not be written (a full or failed disk): retry later.
            SchedulerError::State { .. } => Code::Unavailable,
        }
    }
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
}

/// What a report makes due.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Due {
    /// A cluster checkpoint: (full, label = rows trained).
    pub checkpoint: Option<(bool, u64)>,
    /// A model version, at this many rows trained: each time `publish.every` more rows are
    /// trained, and when training ends (before evaluation, so the version is the evaluated model).
    pub publish: Option<u64>,
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
}

#[derive(Serialize, Deserialize, Default)]
struct Persisted {
    next_job: u64,
    jobs: BTreeMap<String, Job>,
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
            for item in &mut job.items {
                if item.status == ItemStatus::Assigned {
                    item.status = ItemStatus::Pending;
                }
            }
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
        })
    }

    fn save(&self) -> Result<(), SchedulerError> {
        let err = |reason: String| SchedulerError::State { path: self.state_file.clone(), reason };
        let tmp = self.state_file.with_extension("json.tmp");
        let bytes = serde_json::to_vec(&self.persisted).map_err(|e| err(e.to_string()))?;
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.state_file)
        };
        write().map_err(|e| err(e.to_string()))
    }

    /// The lease length members must renew within.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Registers a member; returns its id.
    pub fn register(&mut self, role: Role, address: String, now: Instant) -> String {
        self.expire(now);
        let prefix = if role == Role::Ps { "ps" } else { "worker" };
        let id = format!("{prefix}-{}", self.next_member);
        self.next_member += 1;
        if role == Role::Ps && !self.ps_order.contains(&address) {
            self.ps_order.push(address.clone());
            self.map_version += 1;
        }
        self.members.insert(id.clone(), Member { role, address, expires: now + self.lease });
        id
    }

    /// Renews a lease; returns the shard map version.
    pub fn heartbeat(&mut self, member: &str, now: Instant) -> Result<u64, SchedulerError> {
        self.expire(now);
        let m = self.members.get_mut(member).ok_or_else(|| SchedulerError::UnknownMember(member.into()))?;
        m.expires = now + self.lease;
        Ok(self.map_version)
    }

    /// Forgets members whose lease ran out and requeues their items.
    pub fn expire(&mut self, now: Instant) {
        let dead: Vec<String> =
            self.members.iter().filter(|(_, m)| m.expires < now).map(|(id, _)| id.clone()).collect();
        for id in dead {
            if let Some(m) = self.members.remove(&id) {
                if m.role == Role::Ps {
                    tracing::warn!(member = %id, address = %m.address, "ps-server lease expired; its slots wait for it to come back");
                } else {
                    tracing::warn!(member = %id, address = %m.address, "lease expired");
                }
            }
            for job in self.persisted.jobs.values_mut() {
                for item in job.items.iter_mut().filter(|i| i.holder.as_deref() == Some(id.as_str())) {
                    if item.status == ItemStatus::Assigned {
                        item.status = ItemStatus::Pending;
                        item.holder = None;
                    }
                }
            }
        }
    }

    /// (version, endpoints, owner of each slot).
    pub fn shard_map(&self) -> (u64, Vec<String>, Vec<u32>) {
        let endpoints = self.ps_order.clone();
        let n = endpoints.len().max(1) as u32;
        let owners = if endpoints.is_empty() { Vec::new() } else { (0..self.num_slots).map(|s| s % n).collect() };
        (self.map_version, endpoints, owners)
    }

    /// Validates a job file, splits its data into items, and queues it.
    pub fn submit(&mut self, toml: String, now: Instant) -> Result<String, SchedulerError> {
        let spec = JobSpec::from_toml(&toml)?;
        let files = plan::expand(&spec.data.paths, &self.data_roots)?;
        let header_lines = u64::from(spec.data.schema.as_ref().is_some_and(|s| s.columns.is_none()));
        let ranges = plan::plan(&files, header_lines, spec.data.test_split, ITEM_SIZE)?;
        let (train, test): (Vec<Range>, Vec<Range>) = ranges.into_iter().partition(|r| r.phase == Phase::Train);
        let mut items = Vec::new();
        for _ in 0..spec.training.epochs {
            items.extend(train.iter().cloned());
        }
        items.extend(test);
        let items = items
            .into_iter()
            .enumerate()
            .map(|(id, range)| Item { id: id as u64, range, status: ItemStatus::Pending, holder: None })
            .collect();
        self.persisted.next_job += 1;
        let id = format!("job-{}", self.persisted.next_job);
        let job = Job {
            id: id.clone(),
            seq: self.persisted.next_job,
            toml,
            name: spec.name.clone(),
            state: JobState::Training,
            items,
            max_bad_ratio: spec.data.max_bad_ratio,
            rows_trained: 0,
            rows_seen: 0,
            bad_lines: 0,
            bad_line_samples: Vec::new(),
            loss_sum: 0.0,
            test_probs: Vec::new(),
            test_labels: Vec::new(),
            test_auc: None,
            test_logloss: None,
            error: None,
            checkpoints: Vec::new(),
            checkpoint_spec: spec.checkpoint,
            publish_spec: spec.publish.clone(),
            published: Vec::new(),
            elapsed_seconds: 0.0,
            started: Some(now),
        };
        self.persisted.jobs.insert(id.clone(), job);
        self.save()?;
        Ok(id)
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
                JobState::Training => Phase::Train,
                JobState::Evaluating => Phase::Test,
                _ => continue,
            };
            if let Some(item) = job.items.iter_mut().find(|i| i.status == ItemStatus::Pending && i.range.phase == phase)
            {
                item.status = ItemStatus::Assigned;
                item.holder = Some(member.to_string());
                return Ok(Some(Assignment {
                    job_id: job.id.clone(),
                    item_id: item.id,
                    job_toml: job.toml.clone(),
                    range: item.range.clone(),
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
        let Some(item) = job.items.iter_mut().find(|i| i.id == item_id) else {
            return Err(SchedulerError::UnknownJob(format!("{job_id} item {item_id}")));
        };
        // A late report for an item that was requeued and done by someone else changes nothing.
        if item.status == ItemStatus::Done || matches!(job.state, JobState::Failed | JobState::Succeeded) {
            return Ok(Due::default());
        }
        let mut report = report;
        report_check::check(item, member, &mut report).map_err(SchedulerError::BadReport)?;
        let was_training = job.state == JobState::Training;
        item.status = ItemStatus::Done;
        item.holder = None;
        let phase = item.range.phase;
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
            }
            Phase::Test => {
                job.test_probs.extend(report.probs);
                job.test_labels.extend(report.labels);
            }
        }
        if let Some(error) = report.error {
            job.fail(format!("worker {member}: {error}"));
        } else if job.bad_lines as f64 > job.max_bad_ratio * job.rows_seen.max(1) as f64 {
            job.fail(format!(
                "{} of {} lines malformed (max_bad_ratio {}); first: {}",
                job.bad_lines,
                job.rows_seen,
                job.max_bad_ratio,
                job.bad_line_samples.join("; ")
            ));
        } else {
            let all_done =
                |p: Phase| job.items.iter().filter(|i| i.range.phase == p).all(|i| i.status == ItemStatus::Done);
            if job.state == JobState::Training && all_done(Phase::Train) {
                job.state = JobState::Evaluating;
            }
            if job.state == JobState::Evaluating && all_done(Phase::Test) {
                job.test_auc = Some(auc(&job.test_probs, &job.test_labels));
                job.test_logloss = Some(logloss(&job.test_probs, &job.test_labels));
                job.state = JobState::Succeeded;
            }
        }
        if let Some(started) = job.started {
            job.elapsed_seconds = now.duration_since(started).as_secs_f64();
        }
        let checkpoint = job.checkpoint_spec.due(rows_before, job.rows_trained).map(|full| (full, job.rows_trained));
        let publishing = !job.publish_spec.model_dir.is_empty();
        let training_ended = was_training && matches!(job.state, JobState::Evaluating | JobState::Succeeded);
        let every = job.publish_spec.every;
        let crossed = every > 0 && job.rows_trained / every > rows_before / every && job.state == JobState::Training;
        let publish = (publishing && (training_ended || crossed)).then_some(job.rows_trained);
        self.save()?;
        Ok(Due { checkpoint, publish })
    }

    /// Records a model version published for a job.
    pub fn record_published(&mut self, job_id: &str, version: u64, rows: u64) -> Result<(), SchedulerError> {
        let job = self.persisted.jobs.get_mut(job_id).ok_or_else(|| SchedulerError::UnknownJob(job_id.into()))?;
        job.published.push((version, rows));
        self.save()
    }

    /// Records a cluster checkpoint with a job.
    pub fn record_checkpoint(&mut self, job_id: &str, record: CheckpointRecord) -> Result<(), SchedulerError> {
        let job = self.persisted.jobs.get_mut(job_id).ok_or_else(|| SchedulerError::UnknownJob(job_id.into()))?;
        job.checkpoints.push(record);
        self.save()
    }

    /// A job's rows trained (a checkpoint's label).
    pub fn rows_trained(&self, job_id: &str) -> Result<u64, SchedulerError> {
        Ok(self.persisted.jobs.get(job_id).ok_or_else(|| SchedulerError::UnknownJob(job_id.into()))?.rows_trained)
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

mod report_check;
#[cfg(test)]
mod tests;
