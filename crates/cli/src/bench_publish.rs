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
                // In microseconds, as `bench::percentile` takes them.
                let ms = now.saturating_sub(manifest.created_unix_ms);
                latencies.push(u32::try_from(ms.saturating_mul(1000)).unwrap_or(u32::MAX));
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let published = dir.list()?.into_iter().filter(|v| v.manifest.as_ref().is_ok_and(|m| m.held.is_none())).count();
    latencies.sort_unstable();
    let ms = |q: f64| (!latencies.is_empty()).then(|| crate::bench::percentile(&latencies, q));
    let out = serde_json::json!({
        "versions_seen": latencies.len(),
        "versions_published": published,
        "p50_ms": ms(0.5),
        "p99_ms": ms(0.99),
        "max_ms": ms(1.0),
    });
    println!("{out}");
    Ok(())
}
