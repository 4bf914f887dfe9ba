//! `ember`: every Ember role is a subcommand of this one binary.
//!
//! Only this crate parses arguments, installs the tracing subscriber and the metrics recorder;
//! the role crates are libraries. Logs go to stderr; machine-readable output (the listening
//! address line, bench JSON) goes to stdout.

mod bench;
mod bench_follow;
mod bench_otlp;
mod bench_publish;
mod bench_scheduler;
mod bench_serve;
mod bench_swap;
mod bench_verify;
mod cluster;
mod cluster_cmds;
mod demo;
mod gen_data;
mod health;
mod https;
mod join_cmd;
mod observability;
mod otlp;
mod plot;
mod ps;
mod replica;
mod rollback;
mod security;
mod serve_cmds;
mod store_cmds;
mod train;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Ember: a parameter-server system for real-time sparse models.
#[derive(Debug, Parser)]
#[command(name = "ember", version, about)]
struct Cli {
    /// Parse the flags, load every file they name (certificates, keys, token files), print what
    /// the role would start with and exit, without binding a port or touching a data directory.
    /// Deployments check their manifests' command lines with it.
    #[arg(long, global = true)]
    check_config: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a parameter server.
    Ps(ps::PsArgs),
    /// Run the scheduler (membership, shard map, jobs, work queue).
    Scheduler(cluster_cmds::SchedulerArgs),
    /// Run a worker that takes work items from a scheduler.
    Worker(cluster_cmds::WorkerArgs),
    /// Submit a job file to a scheduler; prints the job id.
    Submit(cluster_cmds::SubmitArgs),
    /// Show jobs' progress and results.
    Status(cluster_cmds::StatusArgs),
    /// Stop a job that follows a stream: it takes no new file, trains what it found and ends.
    Stop(cluster_cmds::StopArgs),
    /// Return a follow job to one of its checkpoints (servers, serving and source), skipping a
    /// range of files.
    Rollback(rollback::RollbackArgs),
    /// Join prediction logs with click events into labelled rows for a follow job.
    Join(join_cmd::JoinArgs),
    /// Load generators that print JSON figures.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Train a job on an embedded cluster (ps-servers and workers in this process, real gRPC).
    Train(train::TrainArgs),
    /// Write synthetic Criteo-format data from a hidden model (and its true probabilities).
    GenData(gen_data::GenDataArgs),
    /// Train DeepFM on generated data with an embedded cluster; report, plot and metrics.
    Demo(demo::DemoArgs),
    /// Checkpoint running ps-servers now.
    Checkpoint(store_cmds::CheckpointArgs),
    /// Write every row of a table to a text file, sorted by key.
    Export(store_cmds::ExportArgs),
    /// Run a serving node: predictions from the model directory's current version.
    Serve(serve_cmds::ServeArgs),
    /// Run a read-only embedding replica: follows the ps-servers' row deltas, answers lookups.
    Replica(replica::ReplicaArgs),
    /// Show what a replica holds and how far it has followed the training servers.
    ReplicaStatus(replica::ReplicaStatusArgs),
    /// Send a data file through a serving node; one probability per line (and the AUC).
    Predict(serve_cmds::PredictArgs),
    /// Manage a model directory's versions.
    #[command(subcommand)]
    Model(serve_cmds::ModelCommand),
    /// Ask a server's gRPC health service whether it is serving (exit 0) or not (exit 1).
    Health(health::HealthArgs),
    /// Plot several training reports' progressive AUC against examples seen, in one PNG.
    Plot(PlotArgs),
}

#[derive(Debug, clap::Args)]
struct PlotArgs {
    /// The PNG to write.
    #[arg(long)]
    out: std::path::PathBuf,
    /// The plot's title.
    #[arg(long, default_value = "progressive AUC")]
    title: String,
    /// Runs as NAME=REPORT.json (reports of `ember train`).
    #[arg(required_unless_present = "series")]
    runs: Vec<String>,
    /// Instead of reports, lines and marks from a JSON file: `{"title", "x_label", "y_label",
    /// "series": [{"name", "points": [[x, y], ...]}], "marks": [{"x", "name"}]}`.
    #[arg(long, conflicts_with = "runs")]
    series: Option<std::path::PathBuf>,
}

fn plot_reports(args: PlotArgs) -> anyhow::Result<()> {
    if let Some(path) = &args.series {
        #[derive(serde::Deserialize)]
        struct Series {
            title: String,
            x_label: String,
            y_label: String,
            series: Vec<plot::Line>,
            #[serde(default)]
            marks: Vec<plot::Mark>,
        }
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let s: Series =
            serde_json::from_str(&text).with_context(|| format!("{} is not a series file", path.display()))?;
        let axes = plot::Axes { x: s.x_label, y: s.y_label, x_in_thousands: false };
        if !plot::draw_lines(&s.series, &s.marks, &s.title, &axes, &args.out)? {
            eprintln!("no TrueType font found: {} has no text", args.out.display());
        }
        println!("{}", args.out.display());
        return Ok(());
    }
    #[derive(serde::Deserialize)]
    struct WithCurve {
        curve: Vec<plot::CurvePoint>,
    }
    let mut runs = Vec::new();
    for run in &args.runs {
        let (name, path) = run.split_once('=').ok_or_else(|| anyhow::anyhow!("{run:?} is not NAME=REPORT.json"))?;
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
        let report: WithCurve =
            serde_json::from_str(&text).with_context(|| format!("{path} is not a training report"))?;
        runs.push((name.to_string(), report.curve));
    }
    if !plot::compare_auc(&runs, &args.title, &args.out)? {
        eprintln!("no TrueType font found: {} has no text", args.out.display());
    }
    println!("{}", args.out.display());
    Ok(())
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Drive pulls, lookups or pushes against a ps-server.
    Ps(bench::BenchPsArgs),
    /// Open-loop predictions against a serving node, optionally publishing versions meanwhile.
    Serve(bench_serve::BenchServeArgs),
    /// Time from a push to a ps-server until a serving prediction reflects it.
    Freshness(bench_serve::BenchFreshnessArgs),
    /// Time from a model version's publish until a serving node answers with it.
    PublishLatency(bench_publish::BenchPublishArgs),
    /// Heartbeat latency of a scheduler while it plans a many-file job under reports.
    Scheduler(bench_scheduler::BenchSchedulerArgs),
    /// An OTLP trace receiver that counts spans (the tracing benchmarks export to it).
    OtlpSink(bench_otlp::OtlpSinkArgs),
}

/// Keeps freed memory in glibc's heap instead of returning it to the kernel.
///
/// A training loop allocates and frees the same megabyte-sized buffers every batch
/// (activations, gRPC messages, gemm's packing). Under glibc's defaults blocks above the mmap
/// threshold are unmapped on free and the heap top is trimmed, so each batch touches fresh
/// pages again: 106k page faults per 200k-row DeepFM job, 74k with this (`perf stat`,
/// docs/benchmarks.md). Only processes that
/// train call this; a standalone ps-server uses [`return_large_blocks`] instead, because its memory
/// must stay near its rows (and, with a DRAM budget, is measured against that budget).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn keep_freed_memory() {
    // SAFETY: mallopt only changes allocator parameters and takes glibc's own lock; it is called
    // before the runtime starts any thread. A rejected value (returns 0) keeps the default.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

/// Makes every allocation of 4 MiB or more its own mapping, given back to the kernel on free.
///
/// Every replica: it frees a snapshot round's layer (hundreds of MB) once it is compacted into a
/// segment. At 5M rows, this setting together with one buffer per layer (instead of a box per
/// row) took its RSS after bootstrap from 1,175 to 571 MB; the two were not measured apart
/// (docs/serving.md). Every ps-server: checkpoints copy each shard's rows into a buffer of tens of
/// MB and free it, which raises glibc's dynamic mmap threshold, so the shards' row arenas, growing as rows are
/// created, then come from the heap and what their reallocations free stays there. With a
/// checkpoint every 5 s, 12M rows (dim 16, Adagrad) took 3,805 MB of RSS against 2,588 MB
/// without checkpoints; with this, 2,587 against 2,517 (`scripts/bench-ckpt-memory.sh`,
/// docs/reliability.md). A tiered ps-server's shards also grow and shrink their row arenas and
/// indexes (tens of MB each at 50M keys) as rows move between tiers. Under glibc's default, the mmap threshold rises to the
/// largest block freed so far (up to 32 MiB), so those reallocations come from the heap instead,
/// and what they free stays there: at 50M keys / 1 GiB, after the preload and a Zipf run,
/// RssAnon was 3.17 GB with the default and 1.91 GB with a fixed 4 MiB threshold, against
/// 1.31-1.36 GB of shard allocations (docs/benchmarks.md). A fixed threshold also turns off
/// glibc's dynamic adjustment.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn return_large_blocks() {
    // SAFETY: as in `keep_freed_memory`: allocator parameters only, before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn return_large_blocks() {}

/// Runs the command; an error prints one line (its context chain, no backtrace, whatever
/// RUST_BACKTRACE says) and exits 1.
fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if matches!(cli.command, Command::Train(_) | Command::Demo(_) | Command::Worker(_)) {
        keep_freed_memory();
    }
    if matches!(&cli.command, Command::Ps(_) | Command::Replica(_)) {
        return_large_blocks();
    }
    // The embedded cluster's roles log as they would as processes; behind a progress bar only
    // their warnings and errors are shown (RUST_LOG=info shows the rest).
    let embedded = matches!(cli.command, Command::Train(_) | Command::Demo(_));
    let trace = match &cli.command {
        Command::Ps(args) => Some((&args.trace, "ember-ps")),
        Command::Scheduler(args) => Some((&args.trace, "ember-scheduler")),
        Command::Worker(args) => Some((&args.trace, "ember-worker")),
        Command::Serve(args) => Some((&args.trace, "ember-serve")),
        Command::Replica(args) => Some((&args.trace, "ember-replica")),
        _ => None,
    };
    // --check-config exports nothing.
    let trace = trace.filter(|_| !cli.check_config);
    let _exporting = observability::init_tracing(if embedded { "warn" } else { "info" }, trace)?;
    if cli.check_config {
        let summary = match &cli.command {
            Command::Ps(args) => args.check()?,
            Command::Scheduler(args) => args.check()?,
            Command::Worker(args) => args.check()?,
            Command::Serve(args) => args.check()?,
            Command::Replica(args) => args.check()?,
            Command::Health(args) => args.check()?,
            _ => anyhow::bail!("--check-config applies to ps, scheduler, worker, serve, replica and health"),
        };
        println!("configuration ok: {summary}");
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Ps(args) => ps::run(args).await,
            Command::Bench(BenchCommand::Ps(args)) => bench::run(args).await,
            Command::Bench(BenchCommand::Serve(args)) => bench_serve::serve(args).await,
            Command::Bench(BenchCommand::Freshness(args)) => bench_serve::freshness(args).await,
            Command::Bench(BenchCommand::PublishLatency(args)) => bench_publish::run(args).await,
            Command::Bench(BenchCommand::Scheduler(args)) => bench_scheduler::run(args).await,
            Command::Bench(BenchCommand::OtlpSink(args)) => bench_otlp::run(args).await,
            Command::Demo(args) => demo::run(args).await,
            Command::Train(args) => train::run(args).await,
            Command::Scheduler(args) => cluster_cmds::scheduler(args).await,
            Command::Worker(args) => cluster_cmds::worker(args).await,
            Command::Submit(args) => cluster_cmds::submit(args).await,
            Command::Status(args) => cluster_cmds::status(args).await,
            Command::Stop(args) => cluster_cmds::stop(args).await,
            Command::Rollback(args) => rollback::run(args).await,
            Command::Join(args) => join_cmd::run(args).await,
            Command::GenData(args) => gen_data::run(args),
            Command::Checkpoint(args) => store_cmds::checkpoint(args).await,
            Command::Export(args) => store_cmds::export(args).await,
            Command::Serve(args) => serve_cmds::serve(args).await,
            Command::Replica(args) => replica::run(args).await,
            Command::ReplicaStatus(args) => replica::status(args).await,
            Command::Predict(args) => serve_cmds::predict(args).await,
            Command::Model(cmd) => serve_cmds::model(cmd),
            Command::Health(args) => health::run(args).await,
            Command::Plot(args) => plot_reports(args),
        }
    })
}
