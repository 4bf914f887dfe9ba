//! `ember ps`: a standalone parameter server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use ember_ps_server::{PsConfig, Started};
use ember_store::{IfNoIntactChain, StoreConfig};

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
    /// Keys each sparse table's row-delta log keeps for replicas (16 bytes each); a replica
    /// further behind resyncs from a snapshot. 0 turns row deltas off.
    #[arg(long, default_value_t = StoreConfig::default().delta_log_keys)]
    delta_log_keys: usize,
    /// Register with this scheduler (and heartbeat); without it the server runs standalone.
    #[arg(long)]
    scheduler: Option<String>,
    /// Address to register with the scheduler (default: the bound address).
    #[arg(long, requires = "scheduler")]
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
    /// Trace export (`--otlp-endpoint`).
    #[command(flatten)]
    pub trace: crate::otlp::TraceArgs,
}

impl PsArgs {
    /// `--check-config`: what this server would start with, every file it names loaded, nothing
    /// bound or written.
    pub fn check(&self) -> anyhow::Result<String> {
        let budget = self.dram_budget.map_or("none".to_string(), |b| format!("{} MiB", b >> 20));
        Ok(format!(
            "ps: listen {}, data dir {}, dram budget {budget}, scheduler {}; {}; {}",
            self.listen,
            self.data_dir.display(),
            self.scheduler.as_deref().unwrap_or("none"),
            self.security.summary()?,
            self.trace.summary()
        ))
    }
}

/// Runs a ps-server until SIGINT/SIGTERM (the life itself is `ember_ps_server::run`).
pub async fn run(args: PsArgs) -> anyhow::Result<()> {
    let security = args.security.server()?;
    let credentials = args.security.credentials()?;
    if let Some(addr) = args.metrics_listen {
        let bound = observability::serve_metrics(addr, &security).await?;
        println!("ember ps metrics on {}://{bound}/metrics", crate::https::scheme(&security));
    }
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    let config = PsConfig {
        data_dir: args.data_dir,
        store: StoreConfig {
            shard_bits: args.shard_bits,
            max_batch_keys: args.max_batch_keys,
            delta_log_keys: args.delta_log_keys,
        },
        dram_budget: args.dram_budget,
        checkpoint_every: (args.checkpoint_every > 0).then(|| Duration::from_secs(args.checkpoint_every)),
        full_every: args.full_every,
        evict_every: Duration::from_secs(args.evict_every),
        if_no_intact_chain: if args.allow_empty_restore {
            IfNoIntactChain::StartEmpty
        } else {
            IfNoIntactChain::Refuse
        },
        scheduler: args.scheduler.map(|s| (s, args.advertise)),
        security,
        credentials,
    };
    // The lines tests and scripts wait for (stdout, unaffected by RUST_LOG); "listening" comes
    // after registering, so a scheduler that lists this server can already route to it.
    let ready = |started: &Started| {
        if let Some(last) = started.restored.last() {
            let rows: u64 = started.restored.iter().map(|c| c.rows).sum();
            let seconds: f64 = started.restored.iter().map(|c| c.seconds).sum();
            let files = started.restored.len();
            println!("ember ps restored checkpoint {} ({files} files, {rows} row records, {seconds:.2}s)", last.id);
        }
        println!("ember ps listening on {}", started.addr);
    };
    ember_ps_server::run(listener, config, ready, observability::shutdown_signal()).await?;
    Ok(())
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
