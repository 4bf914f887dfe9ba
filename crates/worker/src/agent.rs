//! The worker process's loop: ask the scheduler for work, run it, report it.
//!
//! A train item's lines are parsed on a reader thread and trained on by [`train`]; a test item's
//! are predicted with read-only lookups and the predictions reported, so the scheduler computes the
//! job's exact test AUC over all items. Per job the agent keeps the parsed job file, a client over
//! the scheduler's shard map, and the tables (created idempotently on first use). Scheduler and
//! ps-server errors are retried with backoff rather than ending the worker.
//!
//! Under `ssp` and `sync` the worker keeps one SSP clock per job across its items, in the group
//! named by the job id; it leaves the group (and flushes softsync buffers) when it gets a test
//! item or no work, so the workers still training never wait for one that has none.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ember_client::{ClientError, Membership, PsClient, RetryPolicy, SchedulerClient};
use ember_core::eval::logloss;
use ember_core::JobSpec;
use ember_proto::v1;
use tokio::sync::{mpsc, Mutex};

use crate::model::IndexedBatch;
use crate::reader::{expand_paths, read_lines, read_range, BadLines, LineParser};
use crate::ssp::SspClock;
use crate::train::{predict, train, ModelTables, Progress, TrainOptions, Window, WorkerStats};

/// Why the worker stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Registering with the scheduler failed.
    #[error("registering with the scheduler: {0}")]
    Register(ClientError),
}

struct JobContext {
    client: PsClient,
    /// Where this worker may read data.
    roots: ember_model::DataRoots,
    tables: ModelTables,
    parser: LineParser,
    batch_size: usize,
    options: TrainOptions,
    softsync: bool,
    /// This worker has left the job's SSP group (and flushed) since its last train item.
    finished: AtomicBool,
}

impl JobContext {
    /// Leaves the SSP group and applies softsync buffers, once per stretch of training.
    async fn finish_training(&self) {
        if self.finished.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(clock) = &self.options.ssp {
            if let Err(e) = clock.leave().await {
                tracing::warn!(%e, "leaving the SSP group failed; its lease will expire");
            }
        }
        if self.softsync {
            if let Err(e) = self.client.flush_pending().await {
                tracing::warn!(%e, "flushing softsync buffers failed");
            }
        }
    }
}

async fn job_context(
    scheduler: &SchedulerClient,
    item: &v1::WorkItem,
    member: &str,
    roots: &ember_model::DataRoots,
) -> Result<JobContext, String> {
    let spec = JobSpec::from_toml(&item.job_toml).map_err(|e| e.to_string())?;
    let files = expand_paths(&spec.data.paths, roots).map_err(|e| e.to_string())?;
    let parser = LineParser::new(&spec.data, &files).map_err(|e| e.to_string())?;
    let (_, map) = scheduler.shard_map().await.map_err(|e| e.to_string())?;
    // A ps-server that restarts mid-job (and restores its checkpoint) is waited for, not fatal.
    // The worker shows the ps-servers what it shows the scheduler (its TLS and worker token).
    let client = PsClient::connect(map, scheduler.credentials())
        .await
        .map_err(|e| e.to_string())?
        .with_retry(RetryPolicy::patient(PS_RESTART_WAIT));
    let (tables, specs) = ModelTables::for_job(&spec, &item.job_id);
    for (spec, initial) in &specs {
        client.create_table(spec, initial.as_deref()).await.map_err(|e| format!("creating {}: {e}", spec.name))?;
    }
    let ssp = match spec.sync.clock_bound() {
        Some(bound) => Some(Arc::new(
            SspClock::join(client.clone(), &item.job_id, member, bound)
                .await
                .map_err(|e| format!("joining the SSP group: {e}"))?,
        )),
        None => None,
    };
    let softsync = spec.sync.buffers();
    Ok(JobContext {
        client,
        roots: roots.clone(),
        tables,
        parser,
        batch_size: spec.training.batch_size,
        options: TrainOptions { compression: spec.compression, ssp, pull_ahead: spec.sync.pull_ahead() },
        softsync,
        finished: AtomicBool::new(false),
    })
}

/// How long a worker keeps retrying a ps-server that stopped answering before failing its item.
const PS_RESTART_WAIT: Duration = Duration::from_secs(120);

/// Reads an item's lines on a blocking thread into a queue.
fn spawn_reader(
    ctx: &JobContext,
    item: &v1::WorkItem,
) -> (mpsc::Receiver<IndexedBatch>, tokio::task::JoinHandle<Result<BadLines, String>>) {
    let (tx, rx) = mpsc::channel(8);
    let (parser, batch, path) = (ctx.parser.clone(), ctx.batch_size, PathBuf::from(&item.path));
    let (range, first_line, roots) = ((item.start, item.end), item.first_line, ctx.roots.clone());
    let line_range = item.line_range;
    let reader = tokio::task::spawn_blocking(move || {
        let path = roots.check(&path).map_err(|e| e.to_string())?;
        let sink = |b: Vec<_>| tx.blocking_send(IndexedBatch::new(&b)).is_ok();
        if line_range {
            read_lines(&path, &parser, range, batch, sink)
        } else {
            read_range(&path, &parser, range, first_line, batch, sink)
        }
        .map_err(|e| e.to_string())
    });
    (rx, reader)
}

/// What the scheduler's report needs from one train item.
fn train_stats(stats: &WorkerStats, windows: Vec<Window>) -> v1::TrainStats {
    let h = &stats.staleness;
    let used = h.counts.iter().rposition(|c| *c > 0).map_or(0, |i| i + 1);
    v1::TrainStats {
        bytes_pulled: stats.bytes_pulled,
        bytes_pushed: stats.bytes_pushed,
        sparse_bytes_pushed: stats.sparse_bytes_pushed,
        dense_bytes_pushed: stats.dense_bytes_pushed,
        bytes_pushed_by_table: stats.bytes_pushed_by_table.clone().into_iter().collect(),
        staleness_counts: h.counts[..used].to_vec(),
        staleness_sum: h.sum,
        staleness_max: h.max,
        clock_wait_seconds: stats.clock_wait_seconds,
        windows: windows
            .into_iter()
            .map(|w| v1::ProgressWindow { rows: w.rows, loss_sum: w.loss_sum, auc: w.auc, end_unix_ms: w.end_unix_ms })
            .collect(),
    }
}

/// Runs one item; returns the report to send (errors included in it).
async fn run_item(ctx: &JobContext, item: &v1::WorkItem) -> v1::ReportWorkRequest {
    let mut report = v1::ReportWorkRequest { job_id: item.job_id.clone(), item_id: item.item_id, ..Default::default() };
    let (mut rx, reader) = spawn_reader(ctx, item);
    let outcome: Result<(), String> = async {
        if item.phase == v1::WorkPhase::Test as i32 {
            ctx.finish_training().await;
            let (mut probs, mut labels) = (Vec::new(), Vec::new());
            while let Some(batch) = rx.recv().await {
                labels.extend_from_slice(&batch.labels);
                probs.extend(predict(&ctx.client, &ctx.tables, batch).await.map_err(|e| e.to_string())?);
            }
            report.rows = labels.len() as u64;
            report.predictions = bytemuck::cast_slice(&probs).to_vec().into();
            report.labels = bytemuck::cast_slice(&labels).to_vec().into();
        } else {
            let queue = Arc::new(Mutex::new(rx));
            ctx.finished.store(false, Ordering::Release);
            let progress = Arc::new(Progress::with_windows(item.window_rows));
            let stats =
                train(ctx.client.clone(), ctx.tables.clone(), queue, Arc::clone(&progress), ctx.options.clone())
                    .await
                    .map_err(|e| e.to_string())?;
            report.rows = stats.examples;
            report.loss_sum = logloss(&stats.progressive_probs, &stats.progressive_labels) * stats.examples as f64;
            report.predictions = bytemuck::cast_slice(&stats.progressive_probs).to_vec().into();
            report.labels = bytemuck::cast_slice(&stats.progressive_labels).to_vec().into();
            report.stats = Some(train_stats(&stats, progress.take_windows()));
        }
        Ok(())
    }
    .await;
    match reader.await.map_err(|e| e.to_string()).and_then(|r| r) {
        Ok(bad) => {
            report.bad_lines = bad.count;
            report.bad_line_samples = bad.first;
        }
        Err(e) => report.error = e,
    }
    if let Err(e) = outcome {
        report.error = e;
    }
    report
}

/// Registers as a worker and runs items, reading data only under `roots`, until `shutdown`
/// resolves.
pub async fn run_worker(
    scheduler: SchedulerClient,
    label: String,
    roots: ember_model::DataRoots,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let membership =
        Membership::join(scheduler.clone(), v1::Role::Worker, label).await.map_err(AgentError::Register)?;
    tracing::info!(member = %membership.id(), "worker registered");
    let mut jobs: HashMap<String, Arc<JobContext>> = HashMap::new();
    let mut backoff = Duration::from_millis(100);
    tokio::pin!(shutdown);
    loop {
        let member = membership.id();
        let next = tokio::select! {
            () = &mut shutdown => return Ok(()),
            next = scheduler.next_work(&member) => next,
        };
        let item = match next {
            Ok(Some(item)) => item,
            Ok(None) => {
                // No work for now: stop holding SSP groups back.
                for ctx in jobs.values() {
                    ctx.finish_training().await;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Err(e) => {
                tracing::warn!(%e, ?backoff, "asking for work failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        let ctx = match jobs.get(&item.job_id) {
            Some(ctx) => Arc::clone(ctx),
            None => match job_context(&scheduler, &item, &member, &roots).await {
                Ok(ctx) => Arc::clone(jobs.entry(item.job_id.clone()).or_insert(Arc::new(ctx))),
                Err(e) => {
                    let report = v1::ReportWorkRequest {
                        job_id: item.job_id.clone(),
                        item_id: item.item_id,
                        error: e,
                        ..Default::default()
                    };
                    send_report(&scheduler, &membership, report).await;
                    continue;
                }
            },
        };
        let report = run_item(&ctx, &item).await;
        tracing::debug!(job = %item.job_id, item = item.item_id, rows = report.rows, "item done");
        send_report(&scheduler, &membership, report).await;
    }
}

async fn send_report(scheduler: &SchedulerClient, membership: &Membership, mut report: v1::ReportWorkRequest) {
    let mut backoff = Duration::from_millis(100);
    for _ in 0..8 {
        report.member_id = membership.id();
        match scheduler.report(report.clone()).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(%e, "reporting an item failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    tracing::error!(job = %report.job_id, item = report.item_id, "gave up reporting; the scheduler will requeue the item when this lease expires");
}
