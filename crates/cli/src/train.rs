//! `ember train JOB.toml`: runs a job on an embedded cluster and writes a JSON report.
//!
//! The ps-servers run in this process on loopback ports and the workers reach them over real
//! gRPC. A reader thread parses the training split ahead of the workers into a bounded queue that
//! the workers share (fast workers take more). The last `data.test_split` of the rows is held out
//! and evaluated with read-only lookups after training. The scheduler is not built yet: data is
//! assigned through the in-process queue, not by a scheduler's work items.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use ember_client::PsClient;
use ember_core::eval::{auc, logloss};
use ember_core::JobSpec;
use ember_worker::features::Example;
use ember_worker::reader::{count_rows, expand_paths, read_rows, LineParser};
use ember_worker::train::{predict, train, ModelTables, Progress, WorkerStats};
use serde::Serialize;
use tokio::sync::{mpsc, Mutex};

use crate::cluster::EmbeddedCluster;

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
}

/// Runs `ember train`.
pub async fn run(args: TrainArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.job).with_context(|| format!("reading {}", args.job.display()))?;
    let mut job = JobSpec::from_toml(&text).with_context(|| format!("in {}", args.job.display()))?;
    if let Some(data) = args.data {
        job.data.paths = vec![data];
    }
    std::fs::create_dir_all(&args.workdir).with_context(|| format!("creating {}", args.workdir.display()))?;
    let report = train_embedded(&job, true).await?;
    let path = args.report.unwrap_or_else(|| args.workdir.join("report.json"));
    write_report(&report, &path)?;
    println!(
        "{}: test AUC {:.4}, logloss {:.4} (positive-rate baseline {:.4}); progressive AUC {:.4}; {:.0} examples/s",
        report.model,
        report.test_auc,
        report.test_logloss,
        report.baseline_test_logloss,
        report.progressive_auc,
        report.examples_per_sec
    );
    println!("report: {}", path.display());
    Ok(())
}

/// Writes a report as pretty JSON, via a temporary file and a rename.
pub fn write_report(report: &Report, path: &Path) -> anyhow::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(report)?).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// Trains `job` on a fresh embedded cluster and evaluates it.
pub async fn train_embedded(job: &JobSpec, show_progress: bool) -> anyhow::Result<Report> {
    let started = Instant::now();
    let files = expand_paths(&job.data.paths)?;
    let parser = LineParser::new(&job.data, &files)?;
    let rows_total = count_rows(&files, &parser)?;
    let test_rows = (rows_total as f64 * job.data.test_split).round() as u64;
    let train_rows = rows_total - test_rows;
    anyhow::ensure!(train_rows > 0, "no training rows in {:?}", job.data.paths);

    let cluster = EmbeddedCluster::start(job.cluster.ps).await?;
    let map = cluster.shard_map();
    let client = PsClient::connect(map.clone()).await?;
    let (tables, specs) = ModelTables::for_job(job, "job");
    for (spec, initial) in &specs {
        client.create_table(spec, initial.as_deref()).await.with_context(|| format!("creating table {}", spec.name))?;
    }

    // Reader thread -> bounded queue -> workers.
    let (tx, rx) = mpsc::channel::<Vec<Example>>(8);
    let reader = {
        let (files, parser, data, epochs, batch) =
            (files.clone(), parser.clone(), job.data.clone(), job.training.epochs, job.training.batch_size);
        std::thread::spawn(move || {
            let mut bad = Default::default();
            for _ in 0..epochs {
                bad = read_rows(&files, &parser, (0, train_rows), batch, data.max_bad_ratio, |b| {
                    tx.blocking_send(b).is_ok()
                })?;
            }
            Ok::<_, ember_worker::reader::ReadError>(bad)
        })
    };
    let queue = Arc::new(Mutex::new(rx));
    let progress = Arc::new(Progress::default());
    let train_started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..job.cluster.workers {
        let worker_client = PsClient::connect(map.clone()).await?;
        workers.push(tokio::spawn(train(worker_client, tables.clone(), Arc::clone(&queue), Arc::clone(&progress))));
    }
    drop(queue);
    let ticker = show_progress
        .then(|| tokio::spawn(report_progress(Arc::clone(&progress), train_rows * u64::from(job.training.epochs))));
    let mut stats = Vec::new();
    for w in workers {
        stats.push(w.await.context("worker task")?.context("worker")?);
    }
    if let Some(t) = ticker {
        t.abort();
    }
    let bad = reader.join().map_err(|_| anyhow::anyhow!("reader thread panicked"))??;
    let train_seconds = train_started.elapsed().as_secs_f64();

    // Hold-out evaluation with read-only lookups.
    let mut test = Vec::new();
    read_rows(&files, &parser, (train_rows, rows_total), 4096, 1.0, |b| {
        test.push(b);
        true
    })?;
    let (mut probs, mut labels) = (Vec::new(), Vec::new());
    for chunk in &test {
        probs.extend(predict(&client, &tables, chunk).await?);
        labels.extend(chunk.iter().map(|e| e.label));
    }
    cluster.stop().await?;

    let total = merge(&stats);
    let positive_rate = total.progressive_labels.iter().sum::<f32>() / total.progressive_labels.len().max(1) as f32;
    Ok(Report {
        job: job.name.clone(),
        model: format!("{:?}", job.model.kind).to_lowercase(),
        data: files.iter().map(|f| f.display().to_string()).collect(),
        cluster: (job.cluster.ps, job.cluster.workers),
        rows_total,
        train_rows,
        test_rows,
        rows_trained: total.examples,
        test_auc: auc(&probs, &labels),
        test_logloss: logloss(&probs, &labels),
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
    })
}

fn merge(stats: &[WorkerStats]) -> WorkerStats {
    let mut all = WorkerStats::default();
    for s in stats {
        all.examples += s.examples;
        all.batches += s.batches;
        all.bytes_pulled += s.bytes_pulled;
        all.bytes_pushed += s.bytes_pushed;
        all.progressive_probs.extend_from_slice(&s.progressive_probs);
        all.progressive_labels.extend_from_slice(&s.progressive_labels);
    }
    all
}

async fn report_progress(progress: Arc<Progress>, expected: u64) {
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.tick().await;
    loop {
        tick.tick().await;
        let n = progress.examples.load(Ordering::Relaxed);
        let loss = progress.loss_micros.load(Ordering::Relaxed) as f64 / 1e6 / n.max(1) as f64;
        eprintln!(
            "  {n}/{expected} examples ({:.0}%), {:.0} examples/s, progressive logloss {loss:.4}",
            100.0 * n as f64 / expected.max(1) as f64,
            n as f64 / started.elapsed().as_secs_f64()
        );
    }
}
