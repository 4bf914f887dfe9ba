//! `ember bench serve` and `ember bench freshness`: load and freshness figures for a serving node.
//!
//! `bench serve` is open-loop: request i is due at start + i/qps whatever happened to earlier
//! ones, and its latency is measured from that due time, so a stall shows up as queueing in every
//! request behind it instead of hiding as a pause in sending. With `--swap-every`, it publishes a
//! new model version (the current one's parameters under a new number) on that period and
//! reports requests due inside a window after each publish apart from the others.
//!
//! `bench freshness` pushes a gradient for one sample's rows straight to the ps-servers and polls
//! the serving node until its prediction for the sample changes: the time a training update takes
//! to reach predictions (bounded by the serving cache's TTL plus a lookup).

use std::io::BufRead;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use ember_client::ServingClient;
use ember_core::SplitMix64;
use ember_model::{FieldKind, InputField, InputSchema, ModelDir};
use ember_proto::v1;
use serde::Serialize;

use crate::bench::percentile;
use crate::bench_swap::{republish, RowChanger};
use crate::security::ClientSecurityArgs;
use crate::serve_cmds::SampleReader;
use crate::store_cmds::Targets;

/// Arguments of `ember bench serve`.
#[derive(Debug, clap::Args)]
pub struct BenchServeArgs {
    /// The serving node.
    #[arg(long)]
    target: String,
    /// Requests per second.
    #[arg(long, default_value_t = 200.0)]
    qps: f64,
    /// Samples per request.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Measured seconds (after one unmeasured second of warm-up at the same rate).
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Publish a new model version every this many seconds (needs --model-dir).
    #[arg(long, requires = "model_dir")]
    swap_every: Option<f64>,
    /// The model directory the serving node follows.
    #[arg(long)]
    model_dir: Option<PathBuf>,
    /// Requests due within this many milliseconds after a publish count as "in swap".
    #[arg(long, default_value_t = 1000)]
    swap_window_ms: u64,
    /// With --swap-every: before each publish, change this many rows of --swap-table on
    /// --swap-ps and checkpoint them; the version names those checkpoints (replicas serving it
    /// pinned read that many changed rows). 0: publish copies of the current version.
    #[arg(long, default_value_t = 0)]
    swap_rows: u64,
    /// The ps-servers whose rows --swap-rows changes.
    #[arg(long, value_delimiter = ',')]
    swap_ps: Vec<String>,
    /// The table --swap-rows changes.
    #[arg(long, default_value = "")]
    swap_table: String,
    /// Key space of --swap-rows.
    #[arg(long, default_value_t = 5_000_000)]
    swap_keys: u64,
    /// Create every row of --swap-keys before the run.
    #[arg(long)]
    swap_preload: bool,
    /// Samples from this file (the model's training format); synthetic values otherwise.
    #[arg(long)]
    data: Option<PathBuf>,
    /// gRPC connections to spread requests over.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    security: ClientSecurityArgs,
}

/// Latency figures of a set of requests, in milliseconds from their due time.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latencies {
    /// Requests answered successfully.
    pub requests: usize,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

impl Latencies {
    fn of(mut us: Vec<u32>) -> Self {
        us.sort_unstable();
        Self {
            requests: us.len(),
            p50_ms: percentile(&us, 0.5),
            p99_ms: percentile(&us, 0.99),
            p999_ms: percentile(&us, 0.999),
            max_ms: us.last().map_or(0.0, |m| f64::from(*m) / 1000.0),
        }
    }
}

/// What `bench serve` prints.
#[derive(Debug, Serialize)]
pub struct ServeReport {
    /// Target.
    pub target: String,
    /// Requested rate.
    pub qps: f64,
    /// Samples per request.
    pub batch: usize,
    /// Measured seconds.
    pub seconds: f64,
    /// Requests that failed.
    pub errors: u64,
    /// The first failure's message.
    pub first_error: Option<String>,
    /// All measured requests.
    #[serde(flatten)]
    pub all: Latencies,
    /// Versions published during the run.
    pub swaps: usize,
    /// Requests due within the swap window after a publish.
    pub in_swap: Option<Latencies>,
    /// The other requests.
    pub steady: Option<Latencies>,
    /// Model versions that answered.
    pub versions: Vec<u64>,
}

/// A pool of samples to cut requests from.
async fn sample_pool(client: &ServingClient, data: Option<&PathBuf>) -> anyhow::Result<Vec<v1::Sample>> {
    let status = client.status().await.context("asking the serving node for its model")?;
    if let Some(path) = data {
        let mut reader = SampleReader::new(&status, "label")?;
        let mut pool = Vec::new();
        for line in ember_worker::reader::open_lines(path)?.lines().take(20_000) {
            if let Ok(Some((s, _))) = reader.sample(&line?) {
                pool.push(s);
            }
        }
        anyhow::ensure!(!pool.is_empty(), "no usable rows in {}", path.display());
        return Ok(pool);
    }
    let mut rng = SplitMix64::new(17);
    Ok((0..4096).map(|_| synthetic_sample(&status, &mut rng)).collect())
}

/// A sample with a value for every field of the model: categorical values from a small
/// vocabulary per field (so lookups hit rows and the cache sees reuse), numbers below 1000.
fn synthetic_sample(status: &v1::ModelStatusResponse, rng: &mut SplitMix64) -> v1::Sample {
    let mut s = v1::Sample::default();
    if status.fields.is_empty() {
        s.hashed = (0..8).map(|f| v1::HashedFeature { field: f, id: rng.next_u64() % 10_000, value: 1.0 }).collect();
    }
    for f in &status.fields {
        let v = if f.kind == "categorical" {
            format!("v{}", rng.next_u64() % 1000)
        } else {
            (rng.next_u64() % 1000).to_string()
        };
        s.fields.insert(f.name.clone(), v);
    }
    s
}

struct Outcome {
    due: Duration,
    latency_us: u32,
    result: Result<u64, String>,
}

/// Runs `ember bench serve`.
pub async fn serve(args: BenchServeArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.qps > 0.0 && args.seconds > 0.0 && args.batch > 0, "--qps, --seconds and --batch must be > 0");
    let credentials = args.security.credentials()?;
    let mut clients = Vec::new();
    for _ in 0..args.connections.max(1) {
        clients.push(ServingClient::connect(&args.target, &credentials).await?);
    }
    let pool = Arc::new(sample_pool(&clients[0], args.data.as_ref()).await?);
    let warmup = Duration::from_secs(1);
    let total = warmup + Duration::from_secs_f64(args.seconds);
    let n = (total.as_secs_f64() * args.qps) as u64;
    let mut changer = None;
    if args.swap_rows > 0 {
        let table = args.swap_table.clone();
        anyhow::ensure!(!table.is_empty(), "--swap-rows needs --swap-table");
        let c = RowChanger::connect(&args.swap_ps, &credentials, table, args.swap_rows, args.swap_keys).await?;
        if args.swap_preload {
            let started = Instant::now();
            let rows = c.preload().await?;
            eprintln!("preloaded {rows} rows of {} in {:.1}s", args.swap_table, started.elapsed().as_secs_f64());
        }
        changer = Some(c);
    }
    let start = tokio::time::Instant::now() + Duration::from_millis(100);
    let swapper = match (args.swap_every, &args.model_dir) {
        (Some(every), Some(dir)) => {
            let dir = ModelDir::new(dir);
            let every = Duration::from_secs_f64(every.max(0.1));
            Some(tokio::spawn(async move {
                let mut publishes = Vec::new();
                let mut at = start + warmup + every / 2;
                let mut label = 1_000_000u64;
                while at < start + total {
                    tokio::time::sleep_until(at).await;
                    let d = dir.clone();
                    let checkpoints = match changer.as_mut() {
                        Some(c) => {
                            label += 1;
                            let started = Instant::now();
                            match c.change_and_checkpoint(label).await {
                                Ok(ids) => {
                                    tracing::info!(
                                        seconds = started.elapsed().as_secs_f64(),
                                        ?ids,
                                        "rows changed and checkpointed"
                                    );
                                    Some(ids)
                                }
                                Err(e) => {
                                    tracing::error!(error = %e, "changing rows");
                                    at += every;
                                    continue;
                                }
                            }
                        }
                        None => None,
                    };
                    let published_at = start.elapsed();
                    match tokio::task::spawn_blocking(move || republish(&d, checkpoints)).await {
                        Ok(Ok(v)) => publishes.push((published_at, v)),
                        Ok(Err(e)) => tracing::error!(error = %e, "publishing a version"),
                        Err(e) => tracing::error!(error = %e, "publishing task"),
                    }
                    at += every;
                }
                publishes
            }))
        }
        _ => None,
    };
    // Requests are released by a plain thread: its sleeps wake within tens of microseconds,
    // where tokio's timer wheel rounds every due time up to the next millisecond (which would
    // count as latency here).
    let runtime = tokio::runtime::Handle::current();
    let (qps, batch, start_std) = (args.qps, args.batch, start.into_std());
    let releaser = std::thread::spawn(move || {
        let mut tasks = Vec::with_capacity(n as usize);
        for i in 0..n {
            let due = start_std + Duration::from_secs_f64(i as f64 / qps);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let client = clients[i as usize % clients.len()].clone();
            let pool = Arc::clone(&pool);
            tasks.push(runtime.spawn(async move {
                let first = (i as usize * batch) % pool.len();
                let samples: Vec<v1::Sample> = (0..batch).map(|j| pool[(first + j) % pool.len()].clone()).collect();
                let result = client.predict("", samples).await.map(|r| r.version).map_err(|e| e.to_string());
                let latency_us = due.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                Outcome { due: due - start_std, latency_us, result }
            }));
        }
        tasks
    });
    let tasks = tokio::task::spawn_blocking(move || releaser.join())
        .await?
        .map_err(|_| anyhow::anyhow!("releaser panicked"))?;
    let mut outcomes = Vec::with_capacity(tasks.len());
    for t in tasks {
        outcomes.push(t.await?);
    }
    let publishes = match swapper {
        Some(t) => t.await?,
        None => Vec::new(),
    };
    let window = Duration::from_millis(args.swap_window_ms);
    let in_window = |due: Duration| publishes.iter().any(|(at, _)| due >= *at && due < *at + window);
    let (mut all, mut swap, mut steady) = (Vec::new(), Vec::new(), Vec::new());
    let (mut errors, mut first_error, mut versions) = (0u64, None, Vec::new());
    for o in outcomes.into_iter().filter(|o| o.due >= warmup) {
        match o.result {
            Ok(v) => {
                if !versions.contains(&v) {
                    versions.push(v);
                }
                all.push(o.latency_us);
                if in_window(o.due) {
                    swap.push(o.latency_us);
                } else {
                    steady.push(o.latency_us);
                }
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    versions.sort_unstable();
    let swapping = args.swap_every.is_some();
    let report = ServeReport {
        target: args.target.clone(),
        qps: args.qps,
        batch: args.batch,
        seconds: args.seconds,
        errors,
        first_error,
        all: Latencies::of(all),
        swaps: publishes.len(),
        in_swap: swapping.then(|| Latencies::of(swap)),
        steady: swapping.then(|| Latencies::of(steady)),
        versions,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{} requests of {} at {} qps: p50 {:.2} ms, p99 {:.2} ms, p999 {:.2} ms, max {:.2} ms, {} errors",
            report.all.requests,
            report.batch,
            report.qps,
            report.all.p50_ms,
            report.all.p99_ms,
            report.all.p999_ms,
            report.all.max_ms,
            report.errors
        );
        if let (Some(s), Some(o)) = (&report.in_swap, &report.steady) {
            println!(
                "  {} swaps: in swap windows p999 {:.2} ms ({} requests), outside p999 {:.2} ms ({} requests)",
                report.swaps, s.p999_ms, s.requests, o.p999_ms, o.requests
            );
        }
    }
    Ok(())
}

/// Arguments of `ember bench freshness`.
#[derive(Debug, clap::Args)]
pub struct BenchFreshnessArgs {
    /// The serving node.
    #[arg(long)]
    target: String,
    /// The ps-servers it reads from.
    #[command(flatten)]
    ps: Targets,
    /// Pushes measured.
    #[arg(long, default_value_t = 5)]
    trials: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    security: ClientSecurityArgs,
}

/// Runs `ember bench freshness`.
pub async fn freshness(args: BenchFreshnessArgs) -> anyhow::Result<()> {
    let credentials = args.security.credentials()?;
    let serving = ServingClient::connect(&args.target, &credentials).await?;
    let ps = args.ps.client(&credentials).await?;
    let status = serving.status().await?;
    let table = status.tables.last().context("the model names no tables")?.clone();
    let fields: Vec<InputField> = status
        .fields
        .iter()
        .map(|f| {
            let kind = match f.kind.as_str() {
                "integer" => FieldKind::Integer,
                "numeric" => FieldKind::Numeric,
                _ => FieldKind::Categorical,
            };
            InputField { name: f.name.clone(), field: f.field, kind }
        })
        .collect();
    let schema: InputSchema = fields.into();
    let mut rng = SplitMix64::new(99);
    let mut times_ms = Vec::new();
    for trial in 0..args.trials {
        let sample = synthetic_sample(&status, &mut rng);
        let hashed: Vec<_> = sample
            .hashed
            .iter()
            .map(|h| ember_model::features::Feature { field: h.field, id: h.id, value: h.value })
            .collect();
        let example = schema
            .example(sample.fields.iter().map(|(k, v)| (k.as_str(), v.as_str())), &hashed)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut keys: Vec<u64> = example.features.iter().map(|f| f.id).collect();
        keys.push(ember_model::features::bias_id());
        keys.sort_unstable();
        keys.dedup();
        let before = serving.predict("", vec![sample.clone()]).await?.probabilities[0];
        // A pull, not a lookup: serving's lookups are what `training_ps_lookups` counts.
        let rows = ps.pull(&table, &keys).await?;
        let grads = vec![-1.0f32; keys.len() * rows.dim];
        ps.push(&table, &keys, &grads, &rows.clock).await?;
        let pushed = Instant::now();
        loop {
            let now = serving.predict("", vec![sample.clone()]).await?.probabilities[0];
            if (now - before).abs() > 1e-7 {
                times_ms.push(pushed.elapsed().as_secs_f64() * 1000.0);
                break;
            }
            anyhow::ensure!(pushed.elapsed() < Duration::from_secs(30), "trial {trial}: no change within 30 s");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let mut sorted = times_ms.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
    let max = sorted.last().copied().unwrap_or(0.0);
    let p99 = sorted.get((sorted.len() * 99 / 100).min(sorted.len().saturating_sub(1))).copied().unwrap_or(0.0);
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "table": table, "trials_ms": times_ms, "freshness_median_ms": median,
                "freshness_p99_ms": p99, "freshness_max_ms": max })
        );
    } else {
        println!("freshness over {} pushes to {table}: median {median:.0} ms, max {max:.0} ms", times_ms.len());
    }
    Ok(())
}
