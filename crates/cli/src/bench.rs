//! `ember bench ps`: a closed-loop load generator for ps-servers.
//!
//! It creates its table if missing, preloads `--keys` rows (so pulls measure reads, not row
//! creation), then runs `--concurrency` tasks, each sending one batch at a time for `--seconds`,
//! and prints keys/s and batch-latency percentiles. Keys are drawn uniformly, from a Zipf
//! distribution, or from a hot set mixed with uniform keys, over the preloaded key space. The
//! hot set fixes the share of keys a tiered server can serve from DRAM (a set that fits the budget
//! is all hot once read), which Zipf's long tail does not. Latency is per batch, at the client.

use std::time::{Duration, Instant};

use anyhow::Context;
use ember_client::{Clock, PsClient, ShardMap};
use ember_core::{Initializer, Optimizer, SplitMix64, TableSpec, Zipf};
use serde::Serialize;

/// Which RPC to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// Training reads (create missing rows).
    Pull,
    /// Read-only reads.
    Lookup,
    /// Sparse gradient pushes.
    Push,
    /// No load: read every key of the key space once and check it (see `bench_verify`).
    Verify,
}

/// How batch keys are drawn from the key space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dist {
    /// Every key equally likely.
    Uniform,
    /// Rank-frequency power law with exponent `--zipf-s` (hot keys are the low ids).
    Zipf,
    /// A share `--hot-share` of keys drawn uniformly from the `--hot-keys` lowest ids, the rest
    /// uniformly from the whole key space.
    HotSet,
}

/// The optimizer of the bench table (what a push applies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OptimizerArg {
    /// Plain SGD.
    Sgd,
    /// Adagrad.
    Adagrad,
    /// FTRL-Proximal.
    Ftrl,
    /// Adam.
    Adam,
}

impl OptimizerArg {
    fn build(self) -> Optimizer {
        match self {
            OptimizerArg::Sgd => Optimizer::Sgd { learning_rate: 0.01 },
            OptimizerArg::Adagrad => {
                Optimizer::Adagrad { learning_rate: 0.05, initial_accumulator: 0.1, epsilon: 1e-7 }
            }
            OptimizerArg::Ftrl => Optimizer::Ftrl { alpha: 0.05, beta: 1.0, l1: 0.1, l2: 0.1 },
            OptimizerArg::Adam => Optimizer::Adam { learning_rate: 0.001, beta1: 0.9, beta2: 0.999, epsilon: 1e-8 },
        }
    }
}

/// Arguments of `ember bench ps`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchPsArgs {
    /// ps-server address(es), comma-separated; keys are routed over 1024 slots round-robin.
    #[arg(long, value_delimiter = ',', required = true)]
    pub target: Vec<String>,
    /// The RPC to drive.
    #[arg(long, value_enum, default_value = "pull")]
    pub op: Op,
    /// Size of the key space (preloaded before the run).
    #[arg(long, default_value_t = 1_000_000)]
    pub keys: u64,
    /// Row width.
    #[arg(long, default_value_t = 16)]
    pub dim: u32,
    /// Keys per request.
    #[arg(long, default_value_t = 4096)]
    pub batch: usize,
    /// Requests in flight (one task each).
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// HTTP/2 connections per server, shared round-robin by the tasks.
    #[arg(long, default_value_t = 2)]
    pub connections: usize,
    #[command(flatten)]
    pub security: crate::security::ClientSecurityArgs,
    /// Length of the measured run.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Key distribution.
    #[arg(long, value_enum, default_value = "uniform")]
    pub dist: Dist,
    /// Zipf exponent.
    #[arg(long, default_value_t = 1.1)]
    pub zipf_s: f64,
    /// `--dist hot-set`: size of the hot set (the lowest ids).
    #[arg(long, default_value_t = 1_000_000)]
    pub hot_keys: u64,
    /// `--dist hot-set`: share of keys drawn from the hot set, in [0, 1].
    #[arg(long, default_value_t = 0.9)]
    pub hot_share: f64,
    /// Table to use (created if missing).
    #[arg(long, default_value = "bench")]
    pub table: String,
    /// Optimizer of a newly created table.
    #[arg(long, value_enum, default_value = "adagrad")]
    pub optimizer: OptimizerArg,
    /// Skip the preload (pulls then also measure row creation).
    #[arg(long)]
    pub no_preload: bool,
    /// Seed of the key streams.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// `--op verify`: fail unless every row exists and still holds its initial values.
    #[arg(long)]
    pub expect_initial: bool,
    /// Also follow every server's row deltas during the run, a round every this many ms (what
    /// a replica adds to a training server's load).
    #[arg(long)]
    pub follow_deltas_ms: Option<u32>,
}

/// The bench table's initializer and seed: `--op verify` recomputes every row's initial values.
pub(crate) const BENCH_INIT: Initializer = Initializer::Uniform { low: -0.01, high: 0.01 };
/// See [`BENCH_INIT`].
pub(crate) const BENCH_SEED: u64 = 42;

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// The RPC driven.
    pub op: Op,
    /// Key distribution.
    pub dist: Dist,
    /// Key space.
    pub keys: u64,
    /// Row width.
    pub dim: u32,
    /// Keys per request.
    pub batch: usize,
    /// Requests in flight.
    pub concurrency: usize,
    /// Connections per server.
    pub connections: usize,
    /// Measured wall time.
    pub seconds: f64,
    /// Successful requests.
    pub batches: u64,
    /// Keys moved per second by successful requests.
    pub keys_per_sec: f64,
    /// Row payload bytes per second (keys/s x dim x 4).
    pub payload_mb_per_sec: f64,
    /// Batch latency percentiles and mean, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Slowest batch.
    pub max_ms: f64,
    /// Mean.
    pub mean_ms: f64,
    /// Failed requests.
    pub errors: u64,
    /// The first failure, if any.
    pub first_error: Option<String>,
    /// Seconds spent preloading the key space.
    pub preload_seconds: f64,
    /// Keys of the run served from DRAM, summed over servers (from `Stats` before and after).
    pub hot_hits: u64,
    /// Keys of the run served from the cold tier (0 without a DRAM budget).
    pub cold_hits: u64,
    /// Rows of the table in DRAM and in the cold tier after the run.
    pub hot_rows: u64,
    /// See `hot_rows`.
    pub cold_rows: u64,
    /// With `--follow-deltas-ms`: delta rounds completed and rows (changed or deleted) received.
    pub delta_rounds: u64,
    /// See `delta_rounds`.
    pub delta_rows: u64,
}

/// (hot hits, cold hits, hot rows, cold rows) of `table` over every server.
async fn tier_counts(client: &PsClient, table: &str) -> anyhow::Result<[u64; 4]> {
    let mut sums = [0u64; 4];
    for server in client.stats().await? {
        for t in server.tables.iter().filter(|t| t.spec.as_ref().is_some_and(|s| s.name == table)) {
            for (sum, v) in sums.iter_mut().zip([t.hot_hits, t.cold_hits, t.hot_rows, t.cold_rows]) {
                *sum += v;
            }
        }
    }
    Ok(sums)
}

/// How a [`KeyGen`] draws.
enum Draw {
    Uniform,
    Zipf(Zipf),
    /// (hot-set size, share drawn from it)
    HotSet(u64, f64),
}

/// Draws keys in `[0, n)`.
struct KeyGen {
    rng: SplitMix64,
    n: u64,
    draw: Draw,
}

impl KeyGen {
    fn new(seed: u64, n: u64, args: &BenchPsArgs) -> Self {
        let n = n.max(1);
        let draw = match args.dist {
            Dist::Uniform => Draw::Uniform,
            Dist::Zipf => Draw::Zipf(Zipf::new(n, args.zipf_s)),
            Dist::HotSet => Draw::HotSet(args.hot_keys.clamp(1, n), args.hot_share),
        };
        Self { rng: SplitMix64::new(seed), n, draw }
    }

    fn next(&mut self) -> u64 {
        match &self.draw {
            Draw::Uniform => self.rng.below(self.n),
            Draw::Zipf(zipf) => zipf.draw(&mut self.rng),
            Draw::HotSet(hot, share) => {
                let from_hot = self.rng.next_f64() < *share;
                self.rng.below(if from_hot { *hot } else { self.n })
            }
        }
    }
}

pub(crate) async fn connect_all(args: &BenchPsArgs) -> anyhow::Result<Vec<PsClient>> {
    let map = ShardMap::round_robin(args.target.clone(), 1024).context("--target needs at least one address")?;
    let credentials = args.security.credentials()?;
    let mut clients = Vec::new();
    for _ in 0..args.connections.max(1) {
        clients.push(PsClient::connect(map.clone(), &credentials).await.context("connecting to the ps-servers")?);
    }
    Ok(clients)
}

async fn preload(clients: &[PsClient], args: &BenchPsArgs) -> anyhow::Result<()> {
    let chunks: Vec<(u64, u64)> =
        (0..args.keys).step_by(args.batch.max(1)).map(|lo| (lo, (lo + args.batch as u64).min(args.keys))).collect();
    let lanes = args.concurrency.max(1);
    let mut tasks = tokio::task::JoinSet::new();
    for lane in 0..lanes {
        let client = clients[lane % clients.len()].clone();
        let mine: Vec<(u64, u64)> = chunks.iter().copied().skip(lane).step_by(lanes).collect();
        let table = args.table.clone();
        tasks.spawn(async move {
            for (lo, hi) in mine {
                let keys: Vec<u64> = (lo..hi).collect();
                client.pull(&table, &keys).await?;
            }
            Ok::<_, ember_client::ClientError>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.context("preload task")?.context("preloading")?;
    }
    Ok(())
}

/// Per-task tally.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    errors: u64,
    first_error: Option<String>,
}

pub(crate) fn percentile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    f64::from(sorted[idx]) / 1000.0
}

/// Runs one benchmark and returns its report.
pub async fn measure(args: &BenchPsArgs) -> anyhow::Result<BenchReport> {
    anyhow::ensure!(args.batch > 0 && args.keys > 0 && args.dim > 0, "--batch, --keys and --dim must be > 0");
    anyhow::ensure!(args.op != Op::Verify, "--op verify is not a load run (bench_verify::run)");
    anyhow::ensure!((0.0..=1.0).contains(&args.hot_share), "--hot-share must be in [0, 1]");
    let clients = connect_all(args).await?;
    let spec = TableSpec::sparse(args.table.clone(), args.dim, args.optimizer.build())
        .with_initializer(BENCH_INIT, BENCH_SEED);
    clients[0].create_table(&spec, None).await.context("creating the bench table")?;
    let preload_started = Instant::now();
    if !args.no_preload {
        preload(&clients, args).await?;
    }
    let preload_seconds = preload_started.elapsed().as_secs_f64();
    let before = tier_counts(&clients[0], &args.table).await?;

    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.seconds);
    let follower = args
        .follow_deltas_ms
        .map(|ms| tokio::spawn(crate::bench_follow::follow_deltas(clients[0].clone(), ms, deadline)));
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..args.concurrency.max(1) {
        let client = clients[task % clients.len()].clone();
        let args = args.clone();
        tasks.spawn(async move {
            let mut keygen = KeyGen::new(args.seed.wrapping_add(task as u64), args.keys, &args);
            let mut grad_rng = SplitMix64::new(args.seed ^ 0xdead_beef ^ task as u64);
            let grads: Vec<f32> =
                (0..args.batch * args.dim as usize).map(|_| grad_rng.next_f32() * 0.02 - 0.01).collect();
            let clock = Clock::default();
            let mut tally = Tally::default();
            let mut keys = vec![0u64; args.batch];
            while Instant::now() < deadline {
                keys.iter_mut().for_each(|k| *k = keygen.next());
                let sent = Instant::now();
                let result = match args.op {
                    Op::Pull => client.pull(&args.table, &keys).await.map(|_| ()),
                    Op::Lookup => client.lookup(&args.table, &keys).await.map(|_| ()),
                    Op::Push => client.push(&args.table, &keys, &grads, &clock).await.map(|_| ()),
                    Op::Verify => Ok(()), // refused at the top of `measure`
                };
                match result {
                    Ok(()) => tally.latencies_us.push(sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32),
                    Err(err) => {
                        tally.errors += 1;
                        tally.first_error.get_or_insert_with(|| err.to_string());
                    }
                }
            }
            tally
        });
    }
    let mut all = Tally::default();
    while let Some(done) = tasks.join_next().await {
        let t = done.context("bench task")?;
        all.latencies_us.extend(t.latencies_us);
        all.errors += t.errors;
        if all.first_error.is_none() {
            all.first_error = t.first_error;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let (delta_rounds, delta_rows) = match follower {
        Some(task) => task.await.context("delta follower")??,
        None => (0, 0),
    };
    let after = tier_counts(&clients[0], &args.table).await?;
    all.latencies_us.sort_unstable();
    let lat = &all.latencies_us;
    let batches = lat.len() as u64;
    let keys_per_sec = (batches * args.batch as u64) as f64 / seconds;
    let mean_ms =
        if lat.is_empty() { 0.0 } else { lat.iter().map(|v| f64::from(*v)).sum::<f64>() / lat.len() as f64 / 1000.0 };
    Ok(BenchReport {
        op: args.op,
        dist: args.dist,
        keys: args.keys,
        dim: args.dim,
        batch: args.batch,
        concurrency: args.concurrency,
        connections: args.connections,
        seconds,
        batches,
        keys_per_sec,
        payload_mb_per_sec: keys_per_sec * f64::from(args.dim) * 4.0 / 1e6,
        p50_ms: percentile(lat, 0.50),
        p99_ms: percentile(lat, 0.99),
        p999_ms: percentile(lat, 0.999),
        max_ms: lat.last().map_or(0.0, |v| f64::from(*v) / 1000.0),
        mean_ms,
        errors: all.errors,
        first_error: all.first_error,
        preload_seconds,
        hot_hits: after[0] - before[0].min(after[0]),
        cold_hits: after[1] - before[1].min(after[1]),
        hot_rows: after[2],
        cold_rows: after[3],
        delta_rounds,
        delta_rows,
    })
}

/// A one-line human summary of a report.
pub fn summary(r: &BenchReport) -> String {
    format!(
        "{:?} {:?}: {:.2}M keys/s ({:.0} MB/s), {} batches of {} in {:.1}s, p50 {:.2} ms, p99 {:.2} ms, p999 {:.2} ms, errors {}, hot/cold hits {}/{}",
        r.op,
        r.dist,
        r.keys_per_sec / 1e6,
        r.payload_mb_per_sec,
        r.batches,
        r.batch,
        r.seconds,
        r.p50_ms,
        r.p99_ms,
        r.p999_ms,
        r.errors,
        r.hot_hits,
        r.cold_hits
    )
}

/// `ember bench ps`.
pub async fn run(args: BenchPsArgs) -> anyhow::Result<()> {
    if args.op == Op::Verify {
        return crate::bench_verify::run(&args).await;
    }
    let report = measure(&args).await?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{}", summary(&report));
    }
    anyhow::ensure!(report.batches > 0, "no request succeeded: {}", report.first_error.as_deref().unwrap_or("?"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dist: Dist) -> BenchPsArgs {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            bench: BenchPsArgs,
        }
        let mut args = Cli::parse_from(["bench", "--target", "127.0.0.1:1"]).bench;
        args.dist = dist;
        args
    }

    #[test]
    fn uniform_keys_stay_in_range() {
        let mut uni = KeyGen::new(1, 1000, &args(Dist::Uniform));
        assert!((0..10_000).all(|_| uni.next() < 1000));
    }

    #[test]
    fn hot_set_keys_come_from_the_hot_set_at_the_given_share() {
        let mut a = args(Dist::HotSet);
        a.hot_keys = 100;
        a.hot_share = 0.9;
        let mut gen = KeyGen::new(3, 1_000_000, &a);
        let keys: Vec<u64> = (0..100_000).map(|_| gen.next()).collect();
        assert!(keys.iter().all(|k| *k < 1_000_000));
        // 90% from the hot set plus the uniform draws that land in it (0.01%).
        let in_hot = keys.iter().filter(|k| **k < 100).count() as f64 / keys.len() as f64;
        assert!((in_hot - 0.9).abs() < 0.01, "share from the hot set {in_hot}");
        a.hot_share = 1.0;
        let mut all_hot = KeyGen::new(3, 1_000_000, &a);
        assert!((0..10_000).all(|_| all_hot.next() < 100));
    }

    #[test]
    fn percentiles_pick_the_right_rank() {
        let lat: Vec<u32> = (1..=1000).map(|v| v * 1000).collect();
        assert_eq!(percentile(&lat, 0.5), 500.0);
        assert_eq!(percentile(&lat, 0.99), 990.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
