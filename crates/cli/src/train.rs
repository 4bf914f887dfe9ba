//! `ember train JOB.toml`: runs a job on an embedded cluster and writes a JSON report.
//!
//! The ps-servers run in this process on loopback ports and the workers reach them over real
//! gRPC. A reader thread parses the training split ahead of the workers into a bounded queue that
//! the workers share (fast workers take more). The last `data.test_split` of the rows is held out
//! and evaluated with read-only lookups after training. Data is assigned through the in-process
//! queue, not by a scheduler's work items. With `--ps` the job trains on running ps-servers
//! instead of embedded ones; with a model dir (`--model-dir` or `[publish]`) it publishes model
//! versions for serving during the run and at its end.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use ember_client::{PsClient, ShardMap};
use ember_core::eval::{auc, logloss};
use ember_core::sync::StalenessHistogram;
use ember_core::JobSpec;
use ember_model::publish::Publisher;
use ember_model::ModelDir;
use ember_worker::model::IndexedBatch;
use ember_worker::reader::{count_rows, expand_paths, read_rows, LineParser};
use ember_worker::ssp::SspClock;
use ember_worker::train::{predict, train, ModelTables, Progress, TrainOptions, WorkerStats};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, Mutex};

use crate::cluster::EmbeddedCluster;
use crate::plot::CurvePoint;

/// Arguments of `ember train`.
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// The job file.
    job: PathBuf,
    /// Directory for the report (created if missing).
    #[arg(long, default_value = "ember-train")]
    workdir: PathBuf,
    /// Where to write the JSON report (default WORKDIR/report.json).
    #[arg(long)]
    report: Option<PathBuf>,
    /// Replace the job's data paths with this file or glob (same format and split rule).
    #[arg(long)]
    data: Option<String>,
    /// True probabilities of the data rows, one per line (from `ember gen-data --oracle`): the
    /// report then includes the best achievable test AUC.
    #[arg(long)]
    oracle: Option<PathBuf>,
    /// Train on these running ps-servers (comma-separated) instead of an embedded cluster.
    #[arg(long, value_delimiter = ',')]
    ps: Vec<String>,
    /// Publish model versions into this directory (overrides the job's `publish.model_dir`).
    #[arg(long)]
    model_dir: Option<PathBuf>,
    /// Write the hold-out predictions here, one probability per line in data order.
    #[arg(long)]
    test_predictions: Option<PathBuf>,
}

/// The JSON report of a training run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Job name.
    pub job: String,
    /// Model kind.
    pub model: String,
    /// Data files read.
    pub data: Vec<String>,
    /// ps-servers and workers.
    pub cluster: (u32, u32),
    /// Data rows (train + test).
    pub rows_total: u64,
    /// Rows in the training split.
    pub train_rows: u64,
    /// Rows in the test split.
    pub test_rows: u64,
    /// Examples trained on, over all epochs.
    pub rows_trained: u64,
    /// Exact AUC on the test split.
    pub test_auc: f64,
    /// Logloss on the test split.
    pub test_logloss: f64,
    /// AUC of the data's true probabilities on the test split (synthetic data only).
    pub oracle_test_auc: Option<f64>,
    /// Logloss of always predicting the training positive rate (the floor to beat).
    pub baseline_test_logloss: f64,
    /// AUC of each training example predicted before it was trained on.
    pub progressive_auc: f64,
    /// Logloss of the same.
    pub progressive_logloss: f64,
    /// Training examples per second (reading, parsing, pulls, compute and pushes).
    pub examples_per_sec: f64,
    /// Seconds of training.
    pub train_seconds: f64,
    /// Seconds of the whole run.
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
    pub bytes_pushed_by_table: std::collections::BTreeMap<String, u64>,
    /// Windows of progressive validation, about one per second.
    pub curve: Vec<CurvePoint>,
    /// The sparse tables at the end of training, summed over ps-servers.
    pub tables: Vec<TableReport>,
    /// Model versions published during and at the end of the run.
    pub published: Vec<u64>,
    /// `sync.mode`.
    pub sync: String,
    /// Staleness of the pushes, as the servers measured it.
    pub staleness: StalenessReport,
    /// Seconds workers spent waiting on their SSP clocks, summed over workers.
    pub clock_wait_seconds: f64,
}

/// Staleness figures of a run: versions a table moved on between a gradient's pull and its
/// arrival, over every push (each server's part of a sparse push, each dense table).
#[derive(Debug, Clone, Default, Serialize)]
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

/// A finished run: its report and the hold-out predictions behind its test figures.
pub struct TrainRun {
    /// The report.
    pub report: Report,
    /// Hold-out probabilities, in data order.
    pub test_probs: Vec<f32>,
}

/// One sparse table's figures at the end of a run.
#[derive(Debug, Clone, Default, Serialize)]
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

/// Per-table figures from every server's `Stats`, summed by table.
async fn table_reports(client: &PsClient) -> anyhow::Result<Vec<TableReport>> {
    let mut tables: std::collections::BTreeMap<String, TableReport> = Default::default();
    for server in client.stats().await? {
        for t in server.tables {
            let Some(spec) = t.spec else { continue };
            if spec.kind != ember_proto::v1::TableKind::Sparse as i32 {
                continue;
            }
            let r = tables
                .entry(spec.name.clone())
                .or_insert_with(|| TableReport { name: spec.name, ..Default::default() });
            r.rows += t.rows;
            r.bytes += t.bytes;
            r.admitted += t.admitted;
            r.filtered += t.filtered;
            r.dropped += t.dropped;
            r.evicted += t.evicted;
        }
    }
    Ok(tables.into_values().collect())
}

/// Runs `ember train`.
pub async fn run(args: TrainArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.job).with_context(|| format!("reading {}", args.job.display()))?;
    let mut job = JobSpec::from_toml(&text).with_context(|| format!("in {}", args.job.display()))?;
    if let Some(data) = args.data {
        job.data.paths = vec![data];
    }
    if let Some(dir) = &args.model_dir {
        job.publish.model_dir = dir.display().to_string();
    }
    std::fs::create_dir_all(&args.workdir).with_context(|| format!("creating {}", args.workdir.display()))?;
    let run = if args.ps.is_empty() {
        train_embedded(&job, true, args.oracle.as_deref()).await?
    } else {
        let map = ShardMap::round_robin(args.ps.clone(), 1024).context("--ps needs at least one address")?;
        train_on(&job, map, true, args.oracle.as_deref()).await?
    };
    if let Some(path) = &args.test_predictions {
        let text: String = run.test_probs.iter().map(|p| format!("{p}\n")).collect();
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    let report = run.report;
    let path = args.report.unwrap_or_else(|| args.workdir.join("report.json"));
    write_report(&report, &path)?;
    println!("{}", summary(&report));
    println!("report: {}", path.display());
    Ok(())
}

/// One line of the headline figures.
pub fn summary(r: &Report) -> String {
    let oracle = r.oracle_test_auc.map(|a| format!(" (oracle {a:.4})")).unwrap_or_default();
    format!(
        "{}: test AUC {:.4}{oracle}, logloss {:.4} (positive-rate baseline {:.4}); progressive AUC {:.4}; {:.0} examples/s",
        r.model, r.test_auc, r.test_logloss, r.baseline_test_logloss, r.progressive_auc, r.examples_per_sec
    )
}

/// Writes a report as pretty JSON, via a temporary file and a rename.
pub fn write_report(report: &Report, path: &Path) -> anyhow::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(report)?).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// Trains `job` on a fresh embedded cluster and evaluates it.
pub async fn train_embedded(job: &JobSpec, show_progress: bool, oracle: Option<&Path>) -> anyhow::Result<TrainRun> {
    let cluster = EmbeddedCluster::start(job.cluster.ps).await?;
    let run = train_on(job, cluster.shard_map(), show_progress, oracle).await;
    cluster.stop().await?;
    run
}

/// Trains `job` with `job.cluster.workers` workers against the ps-servers of `map`, publishes
/// model versions if the job has a model dir, and evaluates the hold-out split.
pub async fn train_on(
    job: &JobSpec,
    map: ShardMap,
    show_progress: bool,
    oracle: Option<&Path>,
) -> anyhow::Result<TrainRun> {
    let started = Instant::now();
    // `ember train` reads its own user's job file: any file that user can read.
    let files = expand_paths(&job.data.paths, &ember_model::DataRoots::unrestricted())?;
    let parser = LineParser::new(&job.data, &files)?;
    let rows_total = count_rows(&files, &parser)?;
    let test_rows = (rows_total as f64 * job.data.test_split).round() as u64;
    let train_rows = rows_total - test_rows;
    anyhow::ensure!(train_rows > 0, "no training rows in {:?}", job.data.paths);

    let client = PsClient::connect(map.clone(), &ember_client::Credentials::none()).await?;
    let (tables, specs) = ModelTables::for_job(job, "job");
    for (spec, initial) in &specs {
        client.create_table(spec, initial.as_deref()).await.with_context(|| format!("creating table {}", spec.name))?;
    }
    let publisher = (!job.publish.model_dir.is_empty()).then(|| {
        let dir = ModelDir::new(&job.publish.model_dir);
        Publisher::new(dir, job, "job", tables.clone(), &specs, parser.input_schema())
    });

    // Reader thread -> bounded queue -> workers.
    let (tx, rx) = mpsc::channel::<IndexedBatch>(8);
    let reader = {
        let (files, parser, data, epochs, batch) =
            (files.clone(), parser.clone(), job.data.clone(), job.training.epochs, job.training.batch_size);
        std::thread::spawn(move || {
            let mut bad = Default::default();
            for _ in 0..epochs {
                bad = read_rows(&files, &parser, (0, train_rows), batch, data.max_bad_ratio, |b| {
                    tx.blocking_send(IndexedBatch::new(&b)).is_ok()
                })?;
            }
            Ok::<_, ember_worker::reader::ReadError>(bad)
        })
    };
    let queue = Arc::new(Mutex::new(rx));
    let progress = Arc::new(Progress::default());
    let train_started = Instant::now();
    // Every worker joins the SSP group before any starts, so none runs ahead of one not yet
    // counted. The group is this process's: runs on shared ps-servers do not mix clocks.
    let group = format!("train.{}", std::process::id());
    let mut options = Vec::new();
    for i in 0..job.cluster.workers {
        let worker_client = PsClient::connect(map.clone(), &ember_client::Credentials::none()).await?;
        let ssp = match job.sync.clock_bound() {
            Some(bound) => {
                Some(Arc::new(SspClock::join(worker_client.clone(), &group, &format!("w{i}"), bound).await?))
            }
            None => None,
        };
        options.push((
            worker_client,
            TrainOptions { compression: job.compression, ssp, pull_ahead: job.sync.pull_ahead() },
        ));
    }
    let mut workers = Vec::new();
    for (worker_client, options) in options {
        let (tables, queue, progress) = (tables.clone(), Arc::clone(&queue), Arc::clone(&progress));
        workers.push(tokio::spawn(async move {
            let ssp = options.ssp.clone();
            let result = train(worker_client, tables, queue, progress, options).await;
            // A finished worker must not hold the others back.
            if let Some(clock) = ssp {
                clock.leave().await?;
            }
            result
        }));
    }
    drop(queue);
    let (stop_tracking, tracking_stopped) = oneshot::channel();
    let bar = progress_bar(show_progress, train_rows * u64::from(job.training.epochs));
    let tracker = tokio::spawn(track_progress(Arc::clone(&progress), bar, tracking_stopped));
    let periodic = match (&publisher, job.publish.every) {
        (Some(p), every) if every > 0 => {
            let (stop, stopped) = oneshot::channel();
            let task = publish_every(p.clone(), client.clone(), Arc::clone(&progress), every, stopped);
            Some((stop, tokio::spawn(task)))
        }
        _ => None,
    };
    let mut stats = Vec::new();
    for w in workers {
        stats.push(w.await.context("worker task")?.context("worker")?);
    }
    if job.sync.buffers() {
        client.flush_pending().await.context("applying the last softsync gradients")?;
    }
    let _ = stop_tracking.send(());
    let curve = tracker.await.context("progress task")?;
    let mut published = match periodic {
        Some((stop, task)) => {
            let _ = stop.send(());
            task.await.context("publishing task")?
        }
        None => Vec::new(),
    };
    if let Some(p) = &publisher {
        let rows = progress.examples.load(Ordering::Relaxed);
        published.push(p.publish(&client, rows).await.context("publishing the final model version")?);
    }
    let mut bad = reader.join().map_err(|_| anyhow::anyhow!("reader thread panicked"))??;
    let train_seconds = train_started.elapsed().as_secs_f64();

    // Hold-out evaluation with read-only lookups. Its bad lines count like the training split's
    // and fall under the same ratio: a hold-out of garbage is no evaluation.
    let mut test = Vec::new();
    let test_bad = read_rows(&files, &parser, (train_rows, rows_total), 4096, job.data.max_bad_ratio, |b| {
        test.push(IndexedBatch::new(&b));
        true
    })
    .context("reading the hold-out split")?;
    bad.merge(test_bad);
    let (mut probs, mut labels) = (Vec::new(), Vec::new());
    for batch in test {
        labels.extend_from_slice(&batch.labels);
        probs.extend(predict(&client, &tables, batch).await?);
    }
    let tables = table_reports(&client).await?;

    let oracle_test_auc = match oracle {
        Some(path) => Some(oracle_auc(path, train_rows, &labels)?),
        None => None,
    };
    let total = merge(&stats);
    let positive_rate = total.progressive_labels.iter().sum::<f32>() / total.progressive_labels.len().max(1) as f32;
    let report = Report {
        job: job.name.clone(),
        model: format!("{:?}", job.model.kind).to_lowercase(),
        data: files.iter().map(|f| f.display().to_string()).collect(),
        cluster: (job.cluster.ps, job.cluster.workers),
        rows_total,
        train_rows,
        test_rows: labels.len() as u64,
        rows_trained: total.examples,
        test_auc: auc(&probs, &labels),
        test_logloss: logloss(&probs, &labels),
        oracle_test_auc,
        baseline_test_logloss: logloss(&vec![positive_rate; labels.len()], &labels),
        progressive_auc: auc(&total.progressive_probs, &total.progressive_labels),
        progressive_logloss: logloss(&total.progressive_probs, &total.progressive_labels),
        examples_per_sec: total.examples as f64 / train_seconds,
        train_seconds,
        wall_seconds: started.elapsed().as_secs_f64(),
        bad_lines: bad.count,
        bad_line_samples: bad.first,
        bytes_pushed: total.bytes_pushed,
        bytes_pulled: total.bytes_pulled,
        sparse_bytes_pushed: total.sparse_bytes_pushed,
        dense_bytes_pushed: total.dense_bytes_pushed,
        bytes_pushed_by_table: total.bytes_pushed_by_table.clone(),
        curve,
        tables,
        published,
        sync: format!("{:?}", job.sync.mode).to_lowercase(),
        staleness: StalenessReport::from(&total.staleness),
        clock_wait_seconds: total.clock_wait_seconds,
    };
    Ok(TrainRun { report, test_probs: probs })
}

/// Publishes a version each time the job's rows trained cross a multiple of `every`, until `stop`;
/// returns the versions published.
async fn publish_every(
    publisher: Publisher,
    client: PsClient,
    progress: Arc<Progress>,
    every: u64,
    mut stop: oneshot::Receiver<()>,
) -> Vec<u64> {
    let mut done = 0u64;
    let mut versions = Vec::new();
    loop {
        // Progress first: a crossing seen together with the stop is still published.
        tokio::select! {
            biased;
            _ = progress.trained.notified() => {}
            _ = &mut stop => return versions,
        }
        let rows = progress.examples.load(Ordering::Relaxed);
        if rows / every > done / every {
            match publisher.publish(&client, rows).await {
                Ok(v) => versions.push(v),
                // A failed publish leaves the previous versions serving; training goes on.
                Err(e) => tracing::error!(error = %e, rows, "publishing a model version failed"),
            }
        }
        done = rows;
    }
}

/// AUC of an oracle file's probabilities for the test rows (lines after `train_rows`).
fn oracle_auc(path: &Path, train_rows: u64, labels: &[f32]) -> anyhow::Result<f64> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let probs = text
        .lines()
        .skip(train_rows as usize)
        .map(|l| l.trim().parse::<f32>().with_context(|| format!("{}: {l:?} is not a probability", path.display())))
        .collect::<anyhow::Result<Vec<f32>>>()?;
    anyhow::ensure!(
        probs.len() == labels.len(),
        "{} has {} test rows, the data {} (was a line skipped as malformed?)",
        path.display(),
        probs.len(),
        labels.len()
    );
    Ok(auc(&probs, labels))
}

fn merge(stats: &[WorkerStats]) -> WorkerStats {
    let mut all = WorkerStats::default();
    for s in stats {
        all.examples += s.examples;
        all.bytes_pulled += s.bytes_pulled;
        all.bytes_pushed += s.bytes_pushed;
        all.sparse_bytes_pushed += s.sparse_bytes_pushed;
        all.dense_bytes_pushed += s.dense_bytes_pushed;
        all.progressive_probs.extend_from_slice(&s.progressive_probs);
        all.progressive_labels.extend_from_slice(&s.progressive_labels);
        all.staleness.merge(&s.staleness);
        all.clock_wait_seconds += s.clock_wait_seconds;
        for (table, bytes) in &s.bytes_pushed_by_table {
            *all.bytes_pushed_by_table.entry(table.clone()).or_default() += bytes;
        }
    }
    all
}

/// Samples the shared progress every second: moves the bar and records a curve point from the
/// window's progressive predictions. Runs until `stop`, then returns the points.
async fn track_progress(progress: Arc<Progress>, bar: ProgressBar, mut stop: oneshot::Receiver<()>) -> Vec<CurvePoint> {
    let started = Instant::now();
    let mut points = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let (mut last_examples, mut last_seconds) = (0u64, 0f64);
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = &mut stop => true,
        };
        let (probs, labels) = progress.take_recent();
        let examples = progress.examples.load(Ordering::Relaxed);
        let seconds = started.elapsed().as_secs_f64();
        if !probs.is_empty() {
            let point = CurvePoint {
                examples,
                seconds,
                window_auc: auc(&probs, &labels),
                window_logloss: logloss(&probs, &labels),
                examples_per_sec: (examples - last_examples) as f64 / (seconds - last_seconds).max(1e-9),
            };
            bar.set_position(examples);
            bar.set_message(format!(
                "{:.0} ex/s | window logloss {:.4} AUC {:.4}",
                point.examples_per_sec, point.window_logloss, point.window_auc
            ));
            points.push(point);
            (last_examples, last_seconds) = (examples, seconds);
        }
        if stopping {
            bar.finish_and_clear();
            return points;
        }
    }
}

fn progress_bar(show: bool, len: u64) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    let style = ProgressStyle::with_template("  [{elapsed_precise}] {bar:32} {pos}/{len} examples {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}
