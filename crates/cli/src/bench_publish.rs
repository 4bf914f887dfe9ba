//! `ember bench publish-latency`: how long a published model version takes to answer on a
//! serving node. Polls the node's model status; each version seen current for the first time is
//! timed against its manifest's publish time (`created_unix_ms`, the same machine's clock).
//! Versions the node skipped (superseded before its next look at the directory) or never made
//! current (held by the gate) are not timed; the output says how many were seen.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use ember_client::ServingClient;
use ember_core::unix_ms;
use ember_model::ModelDir;

use crate::security::ClientSecurityArgs;

/// Arguments of `ember bench publish-latency`.
#[derive(Debug, clap::Args)]
pub struct BenchPublishArgs {
    /// The serving node.
    #[arg(long)]
    target: String,
    /// The model directory it serves.
    #[arg(long)]
    model_dir: PathBuf,
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 60.0)]
    seconds: f64,
    /// Stop once this file exists (a script's signal that publishing is over).
    #[arg(long)]
    until_file: Option<PathBuf>,
    #[command(flatten)]
    security: ClientSecurityArgs,
}

/// The `q` quantile of sorted `xs` (nearest rank).
fn quantile(xs: &[u64], q: f64) -> Option<u64> {
    let i = ((xs.len() as f64 * q).ceil() as usize).clamp(1, xs.len().max(1)) - 1;
    xs.get(i).copied()
}

/// Runs it; prints one JSON object.
pub async fn run(args: BenchPublishArgs) -> anyhow::Result<()> {
    let serving = ServingClient::connect(&args.target, &args.security.credentials()?).await?;
    let dir = ModelDir::new(&args.model_dir);
    let deadline = Instant::now() + Duration::from_secs_f64(args.seconds.max(0.0));
    let (mut seen, mut latencies) = (BTreeSet::new(), Vec::new());
    while Instant::now() < deadline && !args.until_file.as_ref().is_some_and(|f| f.exists()) {
        if let Ok(status) = serving.status().await {
            let now = unix_ms();
            if status.version > 0 && seen.insert(status.version) {
                let manifest = dir.manifest(status.version).with_context(|| format!("version {}", status.version))?;
                latencies.push(now.saturating_sub(manifest.created_unix_ms));
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let published = dir.list()?.into_iter().filter(|v| v.manifest.as_ref().is_ok_and(|m| m.held.is_none())).count();
    latencies.sort_unstable();
    let out = serde_json::json!({
        "versions_seen": latencies.len(),
        "versions_published": published,
        "p50_ms": quantile(&latencies, 0.5),
        "p99_ms": quantile(&latencies, 0.99),
        "max_ms": latencies.last(),
    });
    println!("{out}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_take_the_nearest_rank() {
        let xs: Vec<u64> = (1..=100).collect();
        assert_eq!((quantile(&xs, 0.5), quantile(&xs, 0.99), quantile(&xs, 1.0)), (Some(50), Some(99), Some(100)));
        assert_eq!((quantile(&[7], 0.99), quantile(&[], 0.5)), (Some(7), None));
    }
}
