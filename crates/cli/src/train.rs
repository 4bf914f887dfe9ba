//! `ember train JOB.toml`: runs a job on an embedded cluster and writes its report.
//!
//! The cluster is [`JobCluster`]: ps-servers, one scheduler and worker agents in this process,
//! the code `ember ps`, `ember scheduler` and `ember worker` run, on loopback gRPC. `ember train`
//! only submits the job, follows it (the progress bar reads the scheduler's job status) and
//! writes the scheduler's report, the same JSON `ember status --job ID --report FILE` writes on
//! a process cluster. With `--ps` the job's rows live on running ps-servers instead of embedded
//! ones. With a `[checkpoint]` schedule the embedded servers keep checkpoints in
//! WORKDIR/checkpoints; with a model dir (`--model-dir` or `[publish]`) the scheduler publishes
//! versions there during the run and at its end.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use ember_client::SchedulerClient;
use ember_core::eval::auc;
use ember_core::JobSpec;
use ember_proto::v1;
use ember_scheduler::report::JobReport;
use indicatif::{ProgressBar, ProgressStyle};

use crate::cluster::{JobCluster, PsServers};

/// Arguments of `ember train`.
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// The job file.
    job: PathBuf,
    /// Directory for the report, the scheduler's state and checkpoints (created if missing).
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

/// The job text with `--data` and `--model-dir` applied and relative data paths made absolute
/// (the scheduler resolves them, as it would for `ember submit`), and its parsed spec.
pub fn job_text(
    text: &str,
    data: Option<&str>,
    model_dir: Option<&Path>,
    cwd: &Path,
) -> anyhow::Result<(String, JobSpec)> {
    let mut doc: toml::Table = toml::from_str(text).context("job file is not valid TOML")?;
    let section = |doc: &mut toml::Table, name: &str| -> anyhow::Result<toml::Table> {
        match doc.remove(name) {
            Some(toml::Value::Table(t)) => Ok(t),
            None => Ok(toml::Table::new()),
            Some(_) => anyhow::bail!("[{name}] is not a table"),
        }
    };
    if let Some(data) = data {
        let mut d = section(&mut doc, "data")?;
        d.insert("paths".into(), toml::Value::Array(vec![toml::Value::String(data.to_string())]));
        doc.insert("data".into(), toml::Value::Table(d));
    }
    if let Some(dir) = model_dir {
        let mut p = section(&mut doc, "publish")?;
        p.insert("model_dir".into(), toml::Value::String(dir.display().to_string()));
        doc.insert("publish".into(), toml::Value::Table(p));
    }
    let text = crate::cluster_cmds::absolute_paths(&toml::to_string(&doc)?, cwd)?;
    let spec = JobSpec::from_toml(&text)?;
    Ok((text, spec))
}

/// Runs `ember train`.
pub async fn run(args: TrainArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.job).with_context(|| format!("reading {}", args.job.display()))?;
    let (text, job) = job_text(&text, args.data.as_deref(), args.model_dir.as_deref(), &std::env::current_dir()?)
        .with_context(|| format!("in {}", args.job.display()))?;
    std::fs::create_dir_all(&args.workdir).with_context(|| format!("creating {}", args.workdir.display()))?;
    let checkpoints = args.workdir.join("checkpoints");
    let scheduled = job.checkpoint.full_every > 0 || job.checkpoint.incremental_every > 0;
    let ps = if args.ps.is_empty() {
        PsServers::Embedded { count: job.cluster.ps, checkpoints: scheduled.then_some(checkpoints.as_path()) }
    } else {
        PsServers::Running(&args.ps)
    };
    let mut run = train(&text, &job, ps, &args.workdir, true).await?;
    if let Some(oracle) = &args.oracle {
        run.report.oracle_test_auc = Some(oracle_auc(oracle, run.report.train_rows, &run.test_labels)?);
    }
    if let Some(path) = &args.test_predictions {
        let text: String = run.test_probs.iter().map(|p| format!("{p}\n")).collect();
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    let path = args.report.unwrap_or_else(|| args.workdir.join("report.json"));
    write_report(&run.report, &path)?;
    println!("{}", run.report.summary());
    println!("report: {}", path.display());
    Ok(())
}

/// A run's report with the hold-out labels behind it.
pub struct Trained {
    /// The scheduler's report.
    pub report: JobReport,
    /// Hold-out probabilities, in data order.
    pub test_probs: Vec<f32>,
    /// Their labels.
    pub test_labels: Vec<f32>,
}

/// Runs the job `text` (parsed: `job`) on a [`JobCluster`] with the job's worker count, the
/// scheduler's state in WORKDIR/scheduler (removed after); returns its report once it succeeded,
/// or the job's error.
pub async fn train(
    text: &str,
    job: &JobSpec,
    ps: PsServers<'_>,
    workdir: &Path,
    show_progress: bool,
) -> anyhow::Result<Trained> {
    let state_dir = workdir.join("scheduler");
    let cluster = JobCluster::start(ps, job.cluster.workers, &state_dir).await?;
    let outcome = async {
        let id = cluster.scheduler().submit(text.to_string()).await?;
        let info = follow(cluster.scheduler(), &id, show_progress).await?;
        let (json, test_probs, test_labels) = cluster.scheduler().report_of(&id, true).await?;
        let report: JobReport = serde_json::from_str(&json).context("the scheduler's report")?;
        if info.state != v1::JobState::Succeeded as i32 {
            anyhow::bail!("job {} failed: {}", report.job, info.error);
        }
        Ok(Trained { report, test_probs, test_labels })
    }
    .await;
    let stopped = cluster.stop().await;
    let _ = std::fs::remove_dir_all(&state_dir);
    let trained = outcome?;
    stopped?;
    Ok(trained)
}

/// Follows job `id` until it succeeds or fails, moving a progress bar; returns its last status.
async fn follow(scheduler: &SchedulerClient, id: &str, show: bool) -> anyhow::Result<v1::JobInfo> {
    let bar = progress_bar(show);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let info = scheduler.status(Some(id)).await?.into_iter().next().context("the scheduler lost the job")?;
        bar.set_length(info.rows_to_train.max(1));
        bar.set_position(info.rows_trained);
        if info.recent_logloss.is_finite() {
            bar.set_message(format!(
                "{:.0} ex/s | window logloss {:.4} AUC {:.4}",
                info.recent_examples_per_sec, info.recent_logloss, info.recent_auc
            ));
        }
        let done = [v1::JobState::Succeeded as i32, v1::JobState::Failed as i32].contains(&info.state);
        if done {
            bar.finish_and_clear();
            return Ok(info);
        }
    }
}

/// Writes a report as pretty JSON, via a temporary file and a rename.
pub fn write_report(report: &JobReport, path: &Path) -> anyhow::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(report)?).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// AUC of an oracle file's probabilities for the test rows (lines after `train_rows`).
pub fn oracle_auc(path: &Path, train_rows: u64, labels: &[f32]) -> anyhow::Result<f64> {
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

fn progress_bar(show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(1);
    let style = ProgressStyle::with_template("  [{elapsed_precise}] {bar:32} {pos}/{len} examples {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}
