//! `ember gen-data`: synthetic Criteo-format data from a hidden model (see `ember_worker::synth`),
//! or, with `--stream`, a directory of time-ordered windows from a drifting model
//! (`ember_worker::synth::stream`).

use std::fs::File;
use std::io::BufWriter;
use std::path::PathBuf;

use anyhow::Context;
use ember_worker::synth::stream::{write_stream, StreamSpec};
use ember_worker::synth::{generate, SynthConfig};

/// Arguments of `ember gen-data`.
#[derive(Debug, clap::Args)]
pub struct GenDataArgs {
    /// Rows to write (per window, with --stream).
    #[arg(long)]
    rows: u64,
    /// Output TSV (a directory, with --stream).
    #[arg(long)]
    out: PathBuf,
    /// Write a stream: --windows files of --rows rows each, in time order, from a hidden model
    /// that drifts over them.
    #[arg(long)]
    stream: bool,
    /// Windows of the stream.
    #[arg(long, default_value_t = 30, requires = "stream")]
    windows: u64,
    /// Share of the hidden model's weights that drift over the stream (0..=1).
    #[arg(long, default_value_t = 0.3, requires = "stream")]
    drift: f32,
    /// How far the large categorical fields' ids slide per window (new ids appear, old fade).
    #[arg(long, default_value_t = 2_000, requires = "stream")]
    id_shift: u64,
    /// Flip the labels of these windows, e.g. `12..14` (inclusive): a poisoned source.
    #[arg(long, requires = "stream", value_parser = parse_range)]
    poison: Option<(u64, u64)>,
    /// Time of the stream's first row, in seconds since the epoch.
    #[arg(long, default_value_t = 1_800_000_000, requires = "stream")]
    start_time: u64,
    /// Length of a window, in seconds.
    #[arg(long, default_value_t = 60, requires = "stream")]
    window_seconds: u64,
    /// Write prediction logs and click events (to be joined) instead of labelled rows.
    #[arg(long, requires = "stream")]
    serving_log: bool,
    /// Seconds from a prediction to its click event.
    #[arg(long, default_value_t = 30, requires = "serving_log")]
    label_delay_seconds: u64,
    /// Seed of the hidden model and the sampling.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also write each row's true click probability here, one per line (--stream writes its
    /// oracle files under --out).
    #[arg(long, conflicts_with = "stream")]
    oracle: Option<PathBuf>,
}

fn parse_range(text: &str) -> Result<(u64, u64), String> {
    let bad = || format!("{text:?} is not a window range like 12..14");
    let (a, b) = text.split_once("..").ok_or_else(bad)?;
    let (a, b): (u64, u64) = (a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?);
    if a > b {
        return Err(format!("{text:?} is an empty range"));
    }
    Ok((a, b))
}

/// Writes the data (and oracle) files.
pub fn run(args: GenDataArgs) -> anyhow::Result<()> {
    if args.stream {
        let spec = StreamSpec {
            windows: args.windows,
            rows_per_window: args.rows,
            seed: args.seed,
            drift: args.drift,
            id_shift: args.id_shift,
            poisoned: args.poison,
            start_ms: args.start_time.saturating_mul(1000),
            window_ms: args.window_seconds.saturating_mul(1000),
            serving_log: args.serving_log,
            label_delay_ms: args.label_delay_seconds.saturating_mul(1000),
        };
        let summary = write_stream(&args.out, &spec).with_context(|| format!("writing {}", args.out.display()))?;
        println!(
            "wrote {} windows of {} rows to {} ({:.1}% positive)",
            args.windows,
            args.rows,
            args.out.display(),
            100.0 * summary.positives as f64 / summary.rows.max(1) as f64
        );
        return Ok(());
    }
    let create = |p: &PathBuf| File::create(p).with_context(|| format!("creating {}", p.display()));
    let mut out = BufWriter::with_capacity(1 << 20, create(&args.out)?);
    let mut oracle = args.oracle.as_ref().map(create).transpose()?.map(|f| BufWriter::with_capacity(1 << 20, f));
    let summary = generate(
        SynthConfig { rows: args.rows, seed: args.seed, window: None },
        &mut out,
        oracle.as_mut().map(|o| o as &mut dyn std::io::Write),
    )
    .with_context(|| format!("writing {}", args.out.display()))?;
    println!("wrote {} rows to {} ({:.1}% positive)", summary.rows, args.out.display(), 100.0 * summary.positive_rate);
    Ok(())
}
