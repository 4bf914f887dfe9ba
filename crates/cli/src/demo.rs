//! `ember demo`: until training lands, the demo starts a ps-server in this process on a loopback
//! port (real gRPC, same code as `ember ps`), drives pulls and then Adagrad pushes at it with the
//! load generator, and prints what it measured.

use std::sync::Arc;

use anyhow::Context;
use ember_ps_server::{serve, ServeConfig};
use ember_store::{Store, StoreConfig};

use crate::bench::{self, BenchPsArgs, Dist, Op, OptimizerArg};

/// Arguments of `ember demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Seconds per measured phase.
    #[arg(long, default_value_t = 4.0)]
    seconds: f64,
    /// Key space.
    #[arg(long, default_value_t = 1_000_000)]
    keys: u64,
}

/// Runs the demo.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("binding a loopback port")?;
    let addr = listener.local_addr()?;
    let store = Arc::new(Store::new(StoreConfig::default()));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, Arc::clone(&store), ServeConfig::default(), async {
        let _ = stopped.await;
    }));
    println!("ember demo: ps-server on {addr}; {} keys x dim 16, batches of 4096, 4 in flight", args.keys);
    let mut args = BenchPsArgs {
        target: vec![addr.to_string()],
        op: Op::Pull,
        keys: args.keys,
        dim: 16,
        batch: 4096,
        concurrency: 4,
        connections: 2,
        seconds: args.seconds,
        dist: Dist::Uniform,
        zipf_s: 1.1,
        table: "demo".into(),
        optimizer: OptimizerArg::Adagrad,
        no_preload: false,
        seed: 1,
        json: false,
    };
    let mut reports = Vec::new();
    for (op, dist) in [(Op::Pull, Dist::Uniform), (Op::Push, Dist::Uniform), (Op::Pull, Dist::Zipf)] {
        args.op = op;
        args.dist = dist;
        let report = bench::measure(&args).await?;
        if reports.is_empty() {
            println!("preloaded {} rows in {:.2}s", args.keys, report.preload_seconds);
        }
        println!("  {}", bench::summary(&report));
        args.no_preload = true;
        reports.push(report);
    }
    let table = store.sparse("demo")?.stats();
    println!(
        "store: {} rows, {:.1} MiB, {} pushes applied, {} row updates",
        table.rows,
        table.bytes as f64 / (1 << 20) as f64,
        table.version,
        table.row_updates
    );
    let _ = stop.send(());
    server.await.context("server task")?.context("server")?;
    anyhow::ensure!(reports.iter().all(|r| r.errors == 0), "the demo saw request errors");
    Ok(())
}
