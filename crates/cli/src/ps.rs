//! `ember ps`: a standalone parameter server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use ember_ps_server::{serve, ServeConfig};
use ember_store::{Store, StoreConfig};

use crate::observability;

/// Arguments of `ember ps`.
#[derive(Debug, clap::Args)]
pub struct PsArgs {
    /// gRPC address to listen on (port 0 picks a free port; the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Directory for this server's durable state. Created if missing. (The in-memory store keeps
    /// nothing here yet; the cold tier and checkpoints will.)
    #[arg(long)]
    data_dir: PathBuf,
    /// Serve Prometheus metrics on this address at /metrics.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Most keys accepted in one request.
    #[arg(long, default_value_t = StoreConfig::default().max_batch_keys)]
    max_batch_keys: usize,
    /// Register with this scheduler (and heartbeat); without it the server runs standalone.
    #[arg(long)]
    scheduler: Option<String>,
    /// Address to register with the scheduler (default: the bound address).
    #[arg(long)]
    advertise: Option<String>,
    /// log2 of the internal lock shards per table.
    #[arg(long, default_value_t = StoreConfig::default().shard_bits, value_parser = clap::value_parser!(u32).range(0..=12))]
    shard_bits: u32,
}

/// Runs a ps-server until SIGINT/SIGTERM.
pub async fn run(args: PsArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating data dir {}", args.data_dir.display()))?;
    if let Some(addr) = args.metrics_listen {
        let bound = observability::serve_metrics(addr).await?;
        println!("ember ps metrics on http://{bound}/metrics");
    }
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    let bound = listener.local_addr()?;
    let store = Arc::new(Store::new(StoreConfig { shard_bits: args.shard_bits, max_batch_keys: args.max_batch_keys }));
    tracing::info!(%bound, data_dir = %args.data_dir.display(), "ps-server serving");
    // Held for the server's life: its background task renews the lease.
    let _membership = match &args.scheduler {
        Some(addr) => {
            let scheduler = ember_client::SchedulerClient::connect(addr).await?;
            let advertised = args.advertise.clone().unwrap_or_else(|| bound.to_string());
            let m = ember_client::Membership::join(scheduler, ember_proto::v1::Role::Ps, advertised).await?;
            tracing::info!(member = %m.id(), scheduler = %addr, "registered with the scheduler");
            Some(m)
        }
        None => None,
    };
    // The line tests and scripts wait for (stdout, unaffected by RUST_LOG); printed after
    // registering, so a scheduler that lists this server can already route to it.
    println!("ember ps listening on {bound}");
    serve(listener, store, ServeConfig::default(), observability::shutdown_signal()).await.context("serving")?;
    tracing::info!("ps-server stopped");
    Ok(())
}
