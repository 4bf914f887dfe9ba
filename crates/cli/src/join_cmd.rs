//! `ember join`: prediction logs joined with click events into labelled rows for a `follow` job
//! (the loop is `ember_worker::join::run`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

/// Arguments of `ember join`.
#[derive(Debug, clap::Args)]
pub struct JoinArgs {
    /// Prediction logs: JSON lines `{"request_id", "time_ms", "features"}` (what serving saw).
    #[arg(long)]
    predictions: PathBuf,
    /// Click events: JSON lines `{"request_id", "time_ms"}`, a file per time bucket named as the
    /// predictions' file of that bucket.
    #[arg(long)]
    labels: PathBuf,
    /// Where labelled rows go (`part-NNNNNN.tsv`, renamed into place): a follow job's directory.
    #[arg(long)]
    out: PathBuf,
    /// How long a prediction waits for its click (event time); then it is a negative.
    #[arg(long, default_value_t = 60.0)]
    window_seconds: f64,
    /// Predictions held at most; past it the oldest closes early (counted as overflowed).
    #[arg(long, default_value_t = 1_000_000)]
    max_open: usize,
    /// How often the directories are listed, in milliseconds.
    #[arg(long, default_value_t = 200)]
    poll_ms: u64,
    /// End once no new bucket has arrived for this long (default: run until SIGINT/SIGTERM).
    #[arg(long)]
    idle_seconds: Option<f64>,
}

/// Runs the join until idle or a signal; prints its figures as one JSON line.
pub async fn run(args: JoinArgs) -> anyhow::Result<()> {
    let seconds = |s: f64, what: &str| {
        anyhow::ensure!(s.is_finite() && s >= 0.0, "--{what} must be a number of seconds >= 0");
        Ok(Duration::from_secs_f64(s))
    };
    let config = ember_worker::join::run::JoinConfig {
        predictions: args.predictions,
        labels: args.labels,
        out: args.out,
        window_ms: seconds(args.window_seconds, "window-seconds")?.as_millis() as u64,
        max_open: args.max_open,
        poll: Duration::from_millis(args.poll_ms.max(1)),
        idle: args.idle_seconds.map(|s| seconds(s, "idle-seconds")).transpose()?,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let signal = Arc::clone(&stop);
    tokio::spawn(async move {
        crate::observability::shutdown_signal().await;
        signal.store(true, Ordering::Relaxed);
    });
    let stats = tokio::task::spawn_blocking(move || ember_worker::join::run::run(&config, &stop))
        .await
        .context("the join task")?
        .context("joining")?;
    println!("{}", serde_json::to_string(&stats)?);
    Ok(())
}
