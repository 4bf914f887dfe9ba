//! Cluster subcommands: `ember scheduler`, `ember worker`, `ember submit`, `ember status`,
//! `ember stop`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use ember_client::SchedulerClient;
use ember_proto::v1;

use crate::observability;
use crate::security::{ClientSecurityArgs, ServerSecurityArgs};

/// Arguments of `ember scheduler`.
#[derive(Debug, clap::Args)]
pub struct SchedulerArgs {
    /// gRPC address (port 0 picks one; the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:7000")]
    listen: SocketAddr,
    /// Where jobs are persisted; a restarted scheduler resumes them.
    #[arg(long)]
    state_dir: PathBuf,
    /// Members that do not heartbeat within this are forgotten and their work requeued.
    #[arg(long, default_value_t = 10_000)]
    lease_ms: u64,
    #[command(flatten)]
    data: DataRootArgs,
    #[command(flatten)]
    security: ServerSecurityArgs,
    /// Serve Prometheus metrics (per job: window AUC, logloss, positive rate, examples/s, lag)
    /// on this address at /metrics.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Trace export (`--otlp-endpoint`).
    #[command(flatten)]
    pub trace: crate::otlp::TraceArgs,
}

/// Where a process may read job data.
#[derive(Debug, clap::Args)]
pub struct DataRootArgs {
    /// Read job data only from files under this directory (repeat for several). Default: the
    /// current directory. Job files name their data, and whoever can submit a job could
    /// otherwise make this process read any file it can.
    #[arg(long = "data-root", value_name = "DIR")]
    data_roots: Vec<PathBuf>,
}

impl DataRootArgs {
    /// The roots (the current directory if none were given), resolved now.
    pub fn roots(&self) -> anyhow::Result<ember_model::DataRoots> {
        let dirs = if self.data_roots.is_empty() { vec![std::env::current_dir()?] } else { self.data_roots.clone() };
        let roots = ember_model::DataRoots::new(&dirs).context("--data-root")?;
        let shown: Vec<String> = roots.dirs().unwrap_or_default().iter().map(|d| d.display().to_string()).collect();
        tracing::info!(roots = ?shown, "reading job data only under these directories");
        Ok(roots)
    }
}

impl SchedulerArgs {
    /// `--check-config`: what this scheduler would start with, every file it names loaded,
    /// nothing bound or written. Data roots are resolved at start, not here.
    pub fn check(&self) -> anyhow::Result<String> {
        Ok(format!(
            "scheduler: listen {}, state dir {}, lease {} ms; {}; {}",
            self.listen,
            self.state_dir.display(),
            self.lease_ms,
            self.security.summary()?,
            self.trace.summary()
        ))
    }
}

/// Runs the scheduler until SIGINT/SIGTERM.
pub async fn scheduler(args: SchedulerArgs) -> anyhow::Result<()> {
    let data_roots = args.data.roots()?;
    let (security, credentials) = (args.security.server()?, args.security.credentials()?);
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    println!("ember scheduler listening on {}", listener.local_addr()?);
    if let Some(addr) = args.metrics_listen {
        let bound = observability::serve_metrics(addr, &security).await?;
        println!("ember scheduler metrics on {}://{bound}/metrics", crate::https::scheme(&security));
    }
    let config = ember_scheduler::SchedulerConfig {
        state_dir: args.state_dir,
        lease: Duration::from_millis(args.lease_ms),
        data_roots,
        security,
        credentials,
    };
    ember_scheduler::serve(listener, config, observability::shutdown_signal())
        .await
        .map_err(|e| anyhow::anyhow!("scheduler: {e}"))
}

/// Arguments of `ember worker`.
#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    /// The scheduler's address.
    #[arg(long)]
    scheduler: String,
    /// A name for status output (default: worker-PID).
    #[arg(long)]
    name: Option<String>,
    #[command(flatten)]
    data: DataRootArgs,
    #[command(flatten)]
    security: ClientSecurityArgs,
    /// Trace export (`--otlp-endpoint`).
    #[command(flatten)]
    pub trace: crate::otlp::TraceArgs,
}

impl WorkerArgs {
    /// `--check-config`: what this worker would start with, every file it names loaded.
    pub fn check(&self) -> anyhow::Result<String> {
        Ok(format!("worker: scheduler {}; {}; {}", self.scheduler, self.security.summary()?, self.trace.summary()))
    }
}

/// Runs a worker until SIGINT/SIGTERM.
pub async fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    let roots = args.data.roots()?;
    let scheduler = SchedulerClient::connect(&args.scheduler, &args.security.credentials()?).await?;
    let label = args.name.unwrap_or_else(|| format!("worker-{}", std::process::id()));
    println!("ember worker {label} working for {}", args.scheduler);
    ember_worker::agent::run_worker(scheduler, label, roots, observability::shutdown_signal()).await?;
    Ok(())
}

/// Arguments of `ember submit`.
#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    /// The job file.
    job: PathBuf,
    /// The scheduler's address.
    #[arg(long)]
    scheduler: String,
    #[command(flatten)]
    security: ClientSecurityArgs,
}

/// Makes the job's relative data paths absolute (relative to this directory), since the scheduler
/// and workers run elsewhere.
pub fn absolute_paths(text: &str, cwd: &Path) -> anyhow::Result<String> {
    let mut doc: toml::Table = toml::from_str(text).context("job file is not valid TOML")?;
    if let Some(paths) = doc.get_mut("data").and_then(|d| d.get_mut("paths")).and_then(|p| p.as_array_mut()) {
        for p in paths.iter_mut() {
            if let Some(s) = p.as_str().filter(|s| Path::new(s).is_relative()) {
                *p = toml::Value::String(cwd.join(s).display().to_string());
            }
        }
    }
    Ok(toml::to_string(&doc)?)
}

/// Submits a job; prints its id.
pub async fn submit(args: SubmitArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.job).with_context(|| format!("reading {}", args.job.display()))?;
    let text = absolute_paths(&text, &std::env::current_dir()?)?;
    let scheduler = SchedulerClient::connect(&args.scheduler, &args.security.credentials()?).await?;
    let id = scheduler.submit(text).await?;
    println!("{id}");
    Ok(())
}

/// Arguments of `ember stop`.
#[derive(Debug, clap::Args)]
pub struct StopArgs {
    /// The job.
    job: String,
    /// The scheduler's address.
    #[arg(long)]
    scheduler: String,
    #[command(flatten)]
    security: ClientSecurityArgs,
}

/// Stops a follow job.
pub async fn stop(args: StopArgs) -> anyhow::Result<()> {
    let scheduler = SchedulerClient::connect(&args.scheduler, &args.security.credentials()?).await?;
    scheduler.stop(&args.job).await?;
    println!("{}: stopping (no new file is taken; the windows found are trained, then it ends)", args.job);
    Ok(())
}

/// Arguments of `ember status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The scheduler's address.
    #[arg(long)]
    scheduler: String,
    /// One job (default: all).
    #[arg(long)]
    job: Option<String>,
    /// JSON, one object per job, in an array.
    #[arg(long)]
    json: bool,
    /// Write the job's report here (needs `--job`): the JSON `ember train --report` writes.
    #[arg(long, requires = "job")]
    report: Option<PathBuf>,
    #[command(flatten)]
    security: ClientSecurityArgs,
}

fn state_name(state: i32) -> &'static str {
    match v1::JobState::try_from(state) {
        Ok(v1::JobState::Training) => "training",
        Ok(v1::JobState::Evaluating) => "evaluating",
        Ok(v1::JobState::Succeeded) => "succeeded",
        Ok(v1::JobState::Failed) => "failed",
        _ => "unknown",
    }
}

/// Prints job status.
pub async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let scheduler = SchedulerClient::connect(&args.scheduler, &args.security.credentials()?).await?;
    if let (Some(path), Some(job)) = (&args.report, &args.job) {
        let (json, _, _) = scheduler.report_of(job, false).await?;
        let report: ember_scheduler::report::JobReport =
            serde_json::from_str(&json).context("the scheduler's report")?;
        crate::train::write_report(&report, path)?;
        println!("{}\nreport: {}", report.summary(), path.display());
        return Ok(());
    }
    let jobs = scheduler.status(args.job.as_deref()).await?;
    if args.json {
        let num = |v: f64| if v.is_finite() { serde_json::json!(v) } else { serde_json::Value::Null };
        let out: Vec<serde_json::Value> = jobs
            .iter()
            .map(|j| {
                serde_json::json!({
                    "job_id": j.job_id, "name": j.name, "state": state_name(j.state),
                    "items_done": j.items_done, "items_total": j.items_total, "rows_trained": j.rows_trained,
                    "bad_lines": j.bad_lines, "progressive_logloss": num(j.progressive_logloss),
                    "test_auc": num(j.test_auc), "test_logloss": num(j.test_logloss), "test_rows": j.test_rows,
                    "error": j.error, "elapsed_seconds": j.elapsed_seconds,
                    "checkpoints": j.checkpoints.iter().map(|c| serde_json::json!({
                        "label": c.label, "full": c.full, "ids": c.ids, "unix_ms": c.unix_ms,
                        "error": (!c.error.is_empty()).then_some(&c.error),
                    })).collect::<Vec<_>>(),
                    "published": j.published.iter().map(|p| serde_json::json!({
                        "version": p.version, "rows_trained": p.rows_trained,
                    })).collect::<Vec<_>>(),
                    "held": j.held.iter().map(|h| serde_json::json!({
                        "version": h.version, "rows_trained": h.rows_trained, "reason": h.reason,
                    })).collect::<Vec<_>>(),
                    "follow": j.follow.then(|| serde_json::json!({
                        "files_found": j.files_found, "rows_found": j.rows_found, "lag_rows": j.lag_rows,
                        "lag_seconds": j.lag_seconds, "stopping": j.stopping,
                    })),
                })
            })
            .collect();
        println!("{}", serde_json::to_string(&out)?);
        return Ok(());
    }
    for j in jobs {
        let test = if j.test_auc.is_finite() {
            format!(", test AUC {:.4} logloss {:.4}", j.test_auc, j.test_logloss)
        } else {
            String::new()
        };
        let error = if j.error.is_empty() { String::new() } else { format!(", error: {}", j.error) };
        let held = match j.held.last() {
            Some(h) => format!(", {} versions held (last: v{} {})", j.held.len(), h.version, h.reason),
            None => String::new(),
        };
        let follow = if j.follow {
            let stopping = if j.stopping { ", stopping" } else { "" };
            format!(
                ", following: {} files found, lag {} rows / {:.1} s{stopping}, window AUC {:.4}",
                j.files_found, j.lag_rows, j.lag_seconds, j.recent_auc
            )
        } else {
            String::new()
        };
        println!(
            "{} {:?} {}: {}/{} items, {} rows trained, {} bad lines, progressive logloss {:.4}{follow}{held}{test}{error}",
            j.job_id,
            j.name,
            state_name(j.state),
            j.items_done,
            j.items_total,
            j.rows_trained,
            j.bad_lines,
            j.progressive_logloss
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_data_paths_become_absolute() {
        let text =
            "version = 1\n[data]\nformat = \"criteo\"\npaths = [\"d/a.tsv\", \"/abs/b.tsv\"]\n[model]\nkind = \"lr\"\n";
        let out = absolute_paths(text, Path::new("/work")).unwrap();
        assert!(out.contains("\"/work/d/a.tsv\"") && out.contains("\"/abs/b.tsv\""), "{out}");
        assert!(ember_core::JobSpec::from_toml(&out).is_ok());
    }
}
