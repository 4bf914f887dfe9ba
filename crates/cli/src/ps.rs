//! `ember ps`: a standalone parameter server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ember_ps_server::{serve, ServeConfig};
use ember_store::tier::RocksCold;
use ember_store::{CheckpointKind, Checkpointer, IfNoIntactChain, Store, StoreConfig};

use crate::observability;
use crate::security::ServerSecurityArgs;

/// Arguments of `ember ps`.
#[derive(Debug, clap::Args)]
pub struct PsArgs {
    /// gRPC address to listen on (port 0 picks a free port; the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Directory for this server's durable state, created if missing. Checkpoints go to
    /// DATA_DIR/checkpoints; on start the newest complete chain there is restored before serving.
    #[arg(long)]
    data_dir: PathBuf,
    /// Write an incremental checkpoint this often (seconds; 0 = only on request and at shutdown).
    #[arg(long, default_value_t = 60)]
    checkpoint_every: u64,
    /// Bound the DRAM (hot) tier of sparse tables to this size (e.g. 64MiB, 4GiB); rows beyond it
    /// are demoted to a RocksDB cold tier in DATA_DIR/cold. Without it every row stays in DRAM.
    #[arg(long, value_parser = parse_size)]
    dram_budget: Option<u64>,
    /// Run tables' eviction rules (TTL, min_l2) this often, in seconds.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    evict_every: u64,
    /// Make every N-th periodic checkpoint a full one (bounds the restore chain).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    full_every: u64,
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
    /// Start empty when checkpoint files exist but none starts an intact chain. Without it the
    /// server refuses to start and names the damaged files: starting empty would, two full
    /// checkpoints later, delete them.
    #[arg(long)]
    allow_empty_restore: bool,
    #[command(flatten)]
    security: ServerSecurityArgs,
}

/// Runs a ps-server until SIGINT/SIGTERM.
pub async fn run(args: PsArgs) -> anyhow::Result<()> {
    let security = args.security.server()?;
    let credentials = args.security.credentials()?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating data dir {}", args.data_dir.display()))?;
    if let Some(addr) = args.metrics_listen {
        let bound = observability::serve_metrics(addr, &security).await?;
        println!("ember ps metrics on {}://{bound}/metrics", crate::https::scheme(&security));
    }
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    let bound = listener.local_addr()?;
    let config = StoreConfig { shard_bits: args.shard_bits, max_batch_keys: args.max_batch_keys };
    let store = Arc::new(match args.dram_budget {
        Some(budget) => {
            let path = args.data_dir.join("cold");
            let cold =
                RocksCold::open_empty(&path).with_context(|| format!("opening the cold tier {}", path.display()))?;
            tracing::info!(budget, cold = %path.display(), "DRAM budget set; rows beyond it go to RocksDB");
            Store::tiered(config, Arc::new(cold), budget)
        }
        None => Store::new(config),
    });
    let checkpoints = Arc::new(Checkpointer::open(args.data_dir.join("checkpoints"))?);
    let if_none = if args.allow_empty_restore { IfNoIntactChain::StartEmpty } else { IfNoIntactChain::Refuse };
    restore(&store, &checkpoints, if_none).await?;
    tracing::info!(%bound, data_dir = %args.data_dir.display(), "ps-server serving");
    let config = ServeConfig {
        checkpoints: Some(Arc::clone(&checkpoints)),
        evict_interval: Duration::from_secs(args.evict_every),
        security,
        ..ServeConfig::default()
    };
    // Serving starts before registering: the scheduler checks a registering ps-server's
    // health at the address it gives.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(serve(listener, Arc::clone(&store), config, async {
        let _ = stopped.await;
    }));
    // Held for the server's life: its background task renews the lease.
    let _membership = match &args.scheduler {
        Some(addr) => {
            let advertised = args.advertise.clone().unwrap_or_else(|| bound.to_string());
            let joined = async {
                let scheduler = ember_client::SchedulerClient::connect(addr, &credentials).await?;
                ember_client::Membership::join(scheduler, ember_proto::v1::Role::Ps, advertised).await
            };
            match joined.await {
                Ok(m) => {
                    tracing::info!(member = %m.id(), scheduler = %addr, "registered with the scheduler");
                    Some(m)
                }
                Err(e) => {
                    let _ = stop.send(());
                    let _ = server.await;
                    return Err(e).context("registering with the scheduler");
                }
            }
        }
        None => None,
    };
    // The line tests and scripts wait for (stdout, unaffected by RUST_LOG); printed after
    // registering, so a scheduler that lists this server can already route to it.
    println!("ember ps listening on {bound}");
    let periodic = (args.checkpoint_every > 0).then(|| {
        let every = Duration::from_secs(args.checkpoint_every);
        tokio::spawn(checkpoint_periodically(Arc::clone(&store), Arc::clone(&checkpoints), every, args.full_every))
    });
    let served = tokio::select! {
        () = observability::shutdown_signal() => {
            let _ = stop.send(());
            server.await
        }
        ended = &mut server => ended,
    };
    served.context("the server task failed")?.context("serving")?;
    if let Some(task) = periodic {
        task.abort();
    }
    // A clean stop loses nothing: what changed since the last checkpoint is written now. If it
    // cannot be written, the process must not exit 0: a supervisor would take that for a clean
    // stop while the pushes since the last checkpoint are gone.
    let last = tokio::task::spawn_blocking(move || checkpoints.write(&store, CheckpointKind::Incremental, 0)).await?;
    let info = last.context("final checkpoint failed: updates since the previous checkpoint are lost")?;
    tracing::info!(id = info.id, rows = info.rows, "final checkpoint written; ps-server stopped");
    Ok(())
}

async fn restore(store: &Arc<Store>, checkpoints: &Arc<Checkpointer>, if_none: IfNoIntactChain) -> anyhow::Result<()> {
    let (store, checkpoints) = (Arc::clone(store), Arc::clone(checkpoints));
    let dir = checkpoints.dir().display().to_string();
    let chain = tokio::task::spawn_blocking(move || checkpoints.restore(&store, if_none))
        .await?
        .with_context(|| format!("restoring checkpoints from {dir}"))?;
    match chain.last() {
        Some(last) => {
            let rows: u64 = chain.iter().map(|c| c.rows).sum();
            let seconds: f64 = chain.iter().map(|c| c.seconds).sum();
            tracing::info!(checkpoint = last.id, label = last.label, files = chain.len(), rows, seconds, %dir, "restored");
            println!(
                "ember ps restored checkpoint {} ({} files, {rows} row records, {seconds:.2}s)",
                last.id,
                chain.len()
            );
        }
        None => tracing::info!(%dir, "no checkpoint to restore; starting empty"),
    }
    Ok(())
}

async fn checkpoint_periodically(store: Arc<Store>, checkpoints: Arc<Checkpointer>, every: Duration, full_every: u64) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await; // the first tick is immediate
    for n in 1u64.. {
        tick.tick().await;
        let kind = if n % full_every == 0 { CheckpointKind::Full } else { CheckpointKind::Incremental };
        let (store, checkpoints) = (Arc::clone(&store), Arc::clone(&checkpoints));
        match tokio::task::spawn_blocking(move || checkpoints.write(&store, kind, 0)).await {
            Ok(Ok(info)) => {
                tracing::debug!(id = info.id, kind = info.kind.as_str(), rows = info.rows, "periodic checkpoint")
            }
            Ok(Err(e)) => tracing::error!(error = %e, "periodic checkpoint failed; the previous one is still usable"),
            Err(e) => tracing::error!(error = %e, "checkpoint task failed"),
        }
    }
}

/// Parses a size: bytes, or a number with K/M/G/T and an optional `iB`/`B` (binary multiples,
/// as memory is counted): `64MiB`, `4GiB`, `512M`, `1048576`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number.parse().map_err(|_| format!("{text:?} is not a size like 64MiB or 4GiB"))?;
    let shift = match unit.trim().to_ascii_lowercase().trim_end_matches('b').trim_end_matches('i') {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        other => return Err(format!("unknown size unit {other:?} in {text:?} (use KiB, MiB, GiB or TiB)")),
    };
    Ok((value * (1u64 << shift) as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_in_binary_units() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("4GiB"), Ok(4 << 30));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("4 parsecs").is_err());
    }
}
