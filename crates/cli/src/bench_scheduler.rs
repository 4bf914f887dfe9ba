//! `ember bench scheduler`: is a scheduler still answering heartbeats while it plans a large job
//! and workers report at a high rate?
//!
//! It writes `--files` data files, starts a scheduler (or uses `--scheduler ADDR`, so any build's
//! `ember scheduler` can be measured with this client) and one embedded ps-server registered with
//! it, then runs `--workers` fake workers that take items and report them at once (train items
//! with their rows, test items with a prediction per row, as real workers do) on a first job,
//! while a prober heartbeats every 20 ms and times each answer. After a second, the many-file job
//! is submitted. It prints heartbeat latency percentiles (over the whole run and while the
//! submission was in flight), the submission's time, and reports per second. A heartbeat slower
//! than the lease would expire the member that sent it.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use ember_client::{Credentials, Membership, SchedulerClient};
use ember_proto::v1;

use crate::cluster::EmbeddedCluster;

/// Arguments of `ember bench scheduler`.
#[derive(Debug, clap::Args)]
pub struct BenchSchedulerArgs {
    /// A running scheduler to measure (default: start one in this process).
    #[arg(long)]
    scheduler: Option<String>,
    /// Files of the large job.
    #[arg(long, default_value_t = 1000)]
    files: u32,
    /// Rows per file (each line is 100 bytes).
    #[arg(long, default_value_t = 2000)]
    rows_per_file: u32,
    /// Fake workers reporting.
    #[arg(long, default_value_t = 8)]
    workers: u32,
    /// Seconds of load.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Where the data files go (default: a temporary directory).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

const LINE_BYTES: u64 = 100;

/// Writes `files` criteo-like files of `rows` 100-byte lines; returns the glob over them.
fn write_files(dir: &Path, files: u32, rows: u32) -> anyhow::Result<String> {
    let mut line = format!("0\t{}", "1\t".repeat(13));
    line.push_str(&"a".repeat(LINE_BYTES as usize - 1 - line.len()));
    line.push('\n');
    let body = line.repeat(rows as usize);
    for i in 0..files {
        std::fs::write(dir.join(format!("part-{i:05}.tsv")), &body)?;
    }
    Ok(dir.join("part-*.tsv").display().to_string())
}

fn job(name: &str, paths: &str, epochs: u32) -> String {
    format!(
        "version = 1\nname = \"{name}\"\n[data]\nformat = \"criteo\"\npaths = [\"{paths}\"]\ntest_split = 0.1\n\
         [model]\nkind = \"lr\"\n[training]\nepochs = {epochs}\n"
    )
}

/// A fake worker: takes items and reports them at once until `stop`.
async fn fake_worker(scheduler: SchedulerClient, stop: Arc<AtomicBool>, reports: Arc<AtomicU64>) -> anyhow::Result<()> {
    let member = Membership::join(scheduler.clone(), v1::Role::Worker, "bench".into()).await?;
    while !stop.load(Ordering::Relaxed) {
        let Some(item) = scheduler.next_work(&member.id()).await? else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        let rows = item.end.saturating_sub(item.start) / LINE_BYTES;
        let mut report = v1::ReportWorkRequest {
            member_id: member.id(),
            job_id: item.job_id.clone(),
            item_id: item.item_id,
            rows,
            loss_sum: 0.5 * rows as f64,
            ..Default::default()
        };
        if item.phase == v1::WorkPhase::Test as i32 {
            let probs = vec![0.5f32; rows as usize];
            report.predictions = bytemuck::cast_slice(&probs).to_vec().into();
            let labels = vec![1.0f32; rows as usize];
            report.labels = bytemuck::cast_slice(&labels).to_vec().into();
        }
        scheduler.report(report).await?;
        reports.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn describe(label: &str, mut latencies: Vec<Duration>) -> String {
    latencies.sort();
    format!(
        "{label}: {} heartbeats, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        latencies.len(),
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    )
}

/// Runs the bench.
pub async fn run(args: BenchSchedulerArgs) -> anyhow::Result<()> {
    let own_dir = args.dir.is_none();
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("ember-bench-scheduler-{}", std::process::id())));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let small_dir = dir.join("small");
    let large_dir = dir.join("large");
    std::fs::create_dir_all(&small_dir)?;
    std::fs::create_dir_all(&large_dir)?;
    let small = write_files(&small_dir, 4, 20_000)?;
    let large = write_files(&large_dir, args.files, args.rows_per_file)?;
    println!(
        "data: {} files x {} rows ({:.0} MB) for the large job",
        args.files,
        args.rows_per_file,
        (u64::from(args.files) * u64::from(args.rows_per_file) * LINE_BYTES) as f64 / 1e6
    );

    let (embedded, addr) = match &args.scheduler {
        Some(addr) => (None, addr.clone()),
        None => {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?.to_string();
            let config = ember_scheduler::SchedulerConfig {
                state_dir: dir.join("scheduler-state"),
                lease: Duration::from_secs(10),
                data_roots: ember_model::DataRoots::unrestricted(),
                security: Default::default(),
                credentials: Credentials::none(),
            };
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(ember_scheduler::serve(listener, config, async {
                let _ = stopped.await;
            }));
            (Some((stop, task)), addr)
        }
    };
    let scheduler = SchedulerClient::connect(&addr, &Credentials::none()).await.context("reaching the scheduler")?;
    let (ps, _) = EmbeddedCluster::start_with_checkpoints(1, None).await?;
    let ps_address = ps.shard_map().endpoints()[0].clone();
    let _ps_member = Membership::join(scheduler.clone(), v1::Role::Ps, ps_address).await?;
    // A first job keeps the fake workers busy: many epochs of small items.
    scheduler.submit(job("bench-small", &small, 10_000)).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let reports = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..args.workers {
        let client = SchedulerClient::connect(&addr, &Credentials::none()).await?;
        workers.push(tokio::spawn(fake_worker(client, Arc::clone(&stop), Arc::clone(&reports))));
    }
    let prober = {
        let client = SchedulerClient::connect(&addr, &Credentials::none()).await?;
        let member = client.register(v1::Role::Worker, "prober").await?.0;
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let mut samples = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                client.heartbeat(&member).await?;
                samples.push((sent, sent.elapsed()));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok::<_, anyhow::Error>(samples)
        })
    };
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let reports_before = reports.load(Ordering::Relaxed);
    let submit_started = Instant::now();
    scheduler.submit(job("bench-large", &large, 1)).await.context("submitting the large job")?;
    let submit_time = submit_started.elapsed();
    let submit_ended = Instant::now();
    let rest = Duration::from_secs(args.seconds).saturating_sub(started.elapsed());
    tokio::time::sleep(rest).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let samples = prober.await??;
    for w in workers {
        w.await??;
    }
    let total = reports.load(Ordering::Relaxed);
    let during: Vec<Duration> =
        samples.iter().filter(|(at, d)| *at + *d >= submit_started && *at <= submit_ended).map(|(_, d)| *d).collect();
    println!("submitting the large job took {:.3} s", submit_time.as_secs_f64());
    println!("{}", describe("all", samples.iter().map(|(_, d)| *d).collect()));
    println!("{}", describe("during the submission", during));
    println!(
        "reports: {total} in {elapsed:.1} s ({:.0}/s; {reports_before} in the first second)",
        total as f64 / elapsed
    );
    drop(_ps_member);
    ps.stop().await?;
    if let Some((stop, task)) = embedded {
        let _ = stop.send(());
        task.await?.map_err(|e| anyhow::anyhow!("scheduler: {e}"))?;
    }
    if own_dir {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}
