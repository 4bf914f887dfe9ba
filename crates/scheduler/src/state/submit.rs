//! Submission: a job file validated and its data planned into items (off the lock), then queued
//! under it; a submission that could not be made durable is withdrawn.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use ember_core::job::DataSource;
use ember_core::JobSpec;

use super::job::{Item, ItemStatus, Job, JobState};
use super::{persist, stream, SchedulerError, State, ITEM_SIZE};
use crate::plan::{self, Phase, Range};
use crate::report::JobStats;

/// A job file whose data has been split into items, ready to queue (planning reads every file,
/// so it happens before the state is locked).
pub struct Planned {
    toml: String,
    spec: JobSpec,
    files: Vec<PathBuf>,
    ranges: Vec<Range>,
    header_lines: u64,
}

/// Validates a job file and splits its data into items, reading only under `roots`.
pub fn plan_job(toml: String, roots: &ember_model::DataRoots) -> Result<Planned, SchedulerError> {
    let spec = JobSpec::from_toml(&toml)?;
    let header_lines = u64::from(spec.data.schema.as_ref().is_some_and(|s| s.columns.is_none()));
    let ranges = match spec.data.source {
        DataSource::Files => {
            let files = plan::expand(&spec.data.paths, roots)?;
            let ranges = plan::plan(&files, header_lines, spec.data.test_split, ITEM_SIZE)?;
            return Ok(Planned { toml, spec, files, ranges, header_lines });
        }
        // What has arrived so far; the rest is found while the job runs.
        DataSource::Follow => {
            let files = plan::list_follow(&spec.data.paths, roots)?;
            let ranges = plan::plan(&files, header_lines, 0.0, stream::window_size(&spec.data.follow))?;
            (files, ranges)
        }
    };
    Ok(Planned { toml, spec, files: ranges.0, ranges: ranges.1, header_lines })
}

impl State {
    /// Validates a job file, splits its data into items, and queues it. (The service plans with
    /// [`plan_job`] before it takes the lock and calls [`State::add_job`].)
    pub fn submit(&mut self, toml: String, now: Instant) -> Result<String, SchedulerError> {
        let planned = plan_job(toml, &self.data_roots)?;
        self.add_job(planned, now)
    }

    /// Queues a planned job; returns its id.
    pub fn add_job(&mut self, planned: Planned, now: Instant) -> Result<String, SchedulerError> {
        let Planned { toml, spec, files, ranges, header_lines } = planned;
        let now_ms = persist::unix_ms();
        let stream = (spec.data.source == DataSource::Follow).then(|| {
            let rows = ranges.iter().map(|r| r.rows).sum();
            stream::StreamState::new(&spec, header_lines, &files, rows, now_ms)
        });
        let (train, test): (Vec<Range>, Vec<Range>) = ranges.into_iter().partition(|r| r.phase == Phase::Train);
        let split_rows = (train.iter().map(|r| r.rows).sum::<u64>(), test.iter().map(|r| r.rows).sum::<u64>());
        let mut items = Vec::new();
        for _ in 0..spec.training.epochs {
            items.extend(train.iter().cloned());
        }
        items.extend(test);
        let items = items
            .into_iter()
            .enumerate()
            .map(|(id, range)| Item {
                id: id as u64,
                range,
                status: ItemStatus::Pending,
                holder: None,
                found_ms: now_ms,
                assigned_ms: 0,
            })
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
            item_base: 0,
            max_bad_ratio: spec.data.max_bad_ratio,
            rows_trained: 0,
            rows_seen: 0,
            bad_lines: 0,
            bad_line_samples: Vec::new(),
            loss_sum: 0.0,
            test_results: BTreeMap::new(),
            test_rows_done: 0,
            test_bad_lines: 0,
            cursor: 0,
            open_items: (0, 0),
            // A follow job's files keep coming: its report names the patterns.
            files: match &stream {
                Some(_) => spec.data.paths.clone(),
                None => files.iter().map(|f| f.display().to_string()).collect(),
            },
            stream,
            split_rows,
            rows_to_train: split_rows.0 * u64::from(spec.training.epochs),
            stats: JobStats::default(),
            final_publish_pending: false,
            test_auc: None,
            test_logloss: None,
            error: None,
            checkpoints: Vec::new(),
            checkpoint_spec: spec.checkpoint,
            publish_spec: spec.publish.clone(),
            published: Vec::new(),
            held: Vec::new(),
            gate_window: Default::default(),
            last_publish_ms: 0,
            published_auc: None,
            last_verdict: None,
            paused: false,
            rollbacks: Vec::new(),
            elapsed_seconds: 0.0,
            started: Some(now),
        };
        let mut job = job;
        job.count_open();
        self.persisted.jobs.insert(id.clone(), job);
        self.dirty = true;
        Ok(id)
    }

    /// Removes a job whose submission could not be made durable (it was refused).
    pub fn withdraw(&mut self, job_id: &str) {
        self.persisted.jobs.remove(job_id);
        self.dirty = true;
    }
}
