//! `ember gen-data`: synthetic Criteo-format data from a hidden model (see `ember_worker::synth`).

use std::fs::File;
use std::io::BufWriter;
use std::path::PathBuf;

use anyhow::Context;
use ember_worker::synth::{generate, SynthConfig};

/// Arguments of `ember gen-data`.
#[derive(Debug, clap::Args)]
pub struct GenDataArgs {
    /// Rows to write.
    #[arg(long)]
    rows: u64,
    /// Output TSV.
    #[arg(long)]
    out: PathBuf,
    /// Seed of the hidden model and the sampling.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also write each row's true click probability here, one per line.
    #[arg(long)]
    oracle: Option<PathBuf>,
}

/// Writes the data (and oracle) files.
pub fn run(args: GenDataArgs) -> anyhow::Result<()> {
    let create = |p: &PathBuf| File::create(p).with_context(|| format!("creating {}", p.display()));
    let mut out = BufWriter::with_capacity(1 << 20, create(&args.out)?);
    let mut oracle = args.oracle.as_ref().map(create).transpose()?.map(|f| BufWriter::with_capacity(1 << 20, f));
    let summary = generate(
        SynthConfig { rows: args.rows, seed: args.seed },
        &mut out,
        oracle.as_mut().map(|o| o as &mut dyn std::io::Write),
    )
    .with_context(|| format!("writing {}", args.out.display()))?;
    println!("wrote {} rows to {} ({:.1}% positive)", summary.rows, args.out.display(), 100.0 * summary.positive_rate);
    Ok(())
}
