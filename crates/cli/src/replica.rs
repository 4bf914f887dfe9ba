//! `ember replica`: parses arguments and runs the replica role (`ember_replica::run`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use ember_client::replica_status;
use ember_replica::ReplicaConfig;

use crate::observability;
use crate::security::{ClientSecurityArgs, ServerSecurityArgs};
use crate::store_cmds::Targets;

/// Arguments of `ember replica`.
#[derive(Debug, clap::Args)]
pub struct ReplicaArgs {
    /// gRPC address to listen on (port 0 picks one; the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Where segments and manifests live; a restart maps them and resumes from there.
    #[arg(long)]
    dir: PathBuf,
    /// The training ps-servers to follow.
    #[command(flatten)]
    targets: Targets,
    /// Slots to hold, e.g. `0-511,1000` (of the shard map's slots); all when absent.
    #[arg(long)]
    slots: Option<String>,
    /// The model directory training publishes into: the replica then also holds the sparse state
    /// of its newest --keep-versions versions (read from the checkpoints their publishes took),
    /// for pinned serving and exact rollbacks.
    #[arg(long)]
    model_dir: Option<PathBuf>,
    /// Published versions' sparse states kept.
    #[arg(long, default_value_t = 3)]
    keep_versions: usize,
    /// Round interval asked of the training servers, in milliseconds.
    #[arg(long, default_value_t = 200)]
    interval_ms: u64,
    /// Compact a table once it has this many overlay layers.
    #[arg(long, default_value_t = 16)]
    compact_layers: usize,
    /// Serve Prometheus metrics on this address.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    #[command(flatten)]
    security: ServerSecurityArgs,
    /// Trace export (`--otlp-endpoint`).
    #[command(flatten)]
    pub trace: crate::otlp::TraceArgs,
}

/// Arguments of `ember replica-status`.
#[derive(Debug, clap::Args)]
pub struct ReplicaStatusArgs {
    /// The replica.
    #[arg(long)]
    target: String,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Wait until the replica is ready (up to this many seconds), then print.
    #[arg(long, default_value_t = 0)]
    wait_secs: u64,
    #[command(flatten)]
    security: ClientSecurityArgs,
}

impl ReplicaArgs {
    /// `--check-config`: what this replica would start with, every file it names loaded, nothing
    /// bound or written.
    pub fn check(&self) -> anyhow::Result<String> {
        let slots = match &self.slots {
            Some(text) => format!("{} slots", parse_slots(text)?.len()),
            None => "every slot".to_string(),
        };
        Ok(format!(
            "replica: listen {}, dir {}, {slots}, {}; {}; {}",
            self.listen,
            self.dir.display(),
            self.targets.describe(),
            self.security.summary()?,
            self.trace.summary()
        ))
    }
}

/// Prints what a replica holds and how far it has followed each training server.
pub async fn status(args: ReplicaStatusArgs) -> anyhow::Result<()> {
    let credentials = args.security.credentials()?;
    let started = std::time::Instant::now();
    let deadline = started + Duration::from_secs(args.wait_secs);
    let status = loop {
        match replica_status(&args.target, &credentials).await {
            Ok(s) if s.ready || std::time::Instant::now() >= deadline => break s,
            Err(e) if std::time::Instant::now() >= deadline => return Err(e.into()),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let (segment_rows, overlay_rows): (u64, u64) =
        status.tables.iter().fold((0, 0), |(s, o), t| (s + t.segment_rows, o + t.overlay_rows));
    if args.json {
        let sources: Vec<_> = status
            .sources
            .iter()
            .map(|s| {
                serde_json::json!({ "endpoint": s.endpoint, "stream_id": s.stream_id, "watermark": s.watermark,
                "connected": s.connected, "rounds": s.rounds })
            })
            .collect();
        let tables: Vec<_> = status
            .tables
            .iter()
            .map(|t| {
                serde_json::json!({ "name": t.name, "dim": t.dim, "segment_rows": t.segment_rows,
                "overlay_rows": t.overlay_rows })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({ "ready": status.ready, "num_slots": status.num_slots, "slots": status.slots.len(),
                "segment_rows": segment_rows, "overlay_rows": overlay_rows, "sources": sources, "tables": tables,
                "versions": status.versions,
                "waited_ms": started.elapsed().as_millis() as u64 })
        );
    } else {
        let held = if status.slots.is_empty() { "every".to_string() } else { status.slots.len().to_string() };
        println!("ready: {}; holds {held} of {} slots; versions {:?}", status.ready, status.num_slots, status.versions);
        for s in &status.sources {
            println!(
                "  {}: stream {} watermark {} ({} rounds, connected: {})",
                s.endpoint, s.stream_id, s.watermark, s.rounds, s.connected
            );
        }
        for t in &status.tables {
            println!(
                "  table {} (dim {}): {} rows in segments, {} in the overlay",
                t.name, t.dim, t.segment_rows, t.overlay_rows
            );
        }
    }
    Ok(())
}

/// Parses `0-511,1000` into slot numbers.
fn parse_slots(text: &str) -> anyhow::Result<Vec<u32>> {
    let mut slots = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("--slots: {part:?} is not a slot or a range like 0-511");
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.trim().parse().with_context(bad)?, b.trim().parse().with_context(bad)?);
                anyhow::ensure!(a <= b, "--slots: {part:?} is an empty range");
                slots.extend(a..=b);
            }
            None => slots.push(part.parse().with_context(bad)?),
        }
    }
    anyhow::ensure!(!slots.is_empty(), "--slots names no slot");
    Ok(slots)
}

/// Runs a replica until SIGINT/SIGTERM.
pub async fn run(args: ReplicaArgs) -> anyhow::Result<()> {
    let (security, credentials) = (args.security.server()?, args.security.credentials()?);
    let slots = args.slots.as_deref().map(parse_slots).transpose()?;
    if let Some(addr) = args.metrics_listen {
        let bound = observability::serve_metrics(addr, &security).await?;
        println!("ember replica metrics on {}://{bound}/metrics", crate::https::scheme(&security));
    }
    let client = args.targets.client(&credentials).await?;
    let config = ReplicaConfig {
        dir: args.dir,
        slots,
        model_dir: args.model_dir,
        keep_versions: args.keep_versions,
        interval: Duration::from_millis(args.interval_ms.max(10)),
        compact_layers: args.compact_layers.max(1),
        security,
        ..ReplicaConfig::default()
    };
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    println!("ember replica listening on {}", listener.local_addr()?);
    ember_replica::run(listener, client, config, observability::shutdown_signal()).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_lists_and_ranges_parse_and_nonsense_is_refused() {
        assert_eq!(parse_slots("0-3, 7,9-9").unwrap(), vec![0, 1, 2, 3, 7, 9]);
        assert!(parse_slots("5-2").unwrap_err().to_string().contains("empty range"));
        assert!(parse_slots("x").unwrap_err().to_string().contains("not a slot"));
        assert!(parse_slots(",").unwrap_err().to_string().contains("no slot"));
    }
}
