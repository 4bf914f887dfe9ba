//! `ember demo`: the main job end to end on one machine. It generates synthetic Criteo-format data
//! (unless `--data` is given), trains DeepFM on an embedded cluster (ps-servers and workers in this
//! process, real gRPC on loopback), shows progress, prints the hold-out metrics beside the data's
//! oracle, and writes the JSON report and a PNG of the training curves into its workdir.

use std::path::PathBuf;

use anyhow::Context;
use ember_core::JobSpec;

use crate::train::{summary, train_embedded, write_report};

/// Arguments of `ember demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Where data, report and plot go.
    #[arg(long, default_value = ".ember-demo")]
    workdir: PathBuf,
    /// Train on this Criteo TSV instead of generated data.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Rows of synthetic data to generate.
    #[arg(long, default_value_t = 200_000)]
    rows: u64,
}

/// The demo trains examples/criteo-deepfm.toml on 2 ps-servers and one worker. (Two workers train
/// faster but reach a lower AUC on this data: DeepFM's dense layers are pulled a batch ahead and
/// pushed by both workers, so their gradients are stale; see docs/training.md. Staleness-aware modes
/// come with the sync issue.)
const DEMO_JOB: &str = include_str!("../../../examples/criteo-deepfm.toml");

/// Runs the demo.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.workdir).with_context(|| format!("creating {}", args.workdir.display()))?;
    let (data, oracle) = match args.data {
        Some(data) => (data, None),
        None => {
            let data = args.workdir.join("synth.tsv");
            let oracle = args.workdir.join("synth.oracle");
            println!("generating {} rows of synthetic Criteo-format data into {}", args.rows, data.display());
            let mut out = std::io::BufWriter::new(std::fs::File::create(&data)?);
            let mut o = std::io::BufWriter::new(std::fs::File::create(&oracle)?);
            ember_worker::synth::generate(
                ember_worker::synth::SynthConfig { rows: args.rows, seed: 1 },
                &mut out,
                Some(&mut o),
            )?;
            (data, Some(oracle))
        }
    };
    let mut job = JobSpec::from_toml(DEMO_JOB).context("examples/criteo-deepfm.toml")?;
    job.name = "demo-deepfm".into();
    job.data.paths = vec![data.display().to_string()];
    job.cluster.ps = 2;
    job.cluster.workers = 1;
    println!(
        "training DeepFM (k=8, MLP 312-256-128-1) on {} with {} ps-servers and {} worker(s) (gRPC on loopback)",
        data.display(),
        job.cluster.ps,
        job.cluster.workers
    );
    let report = train_embedded(&job, true, oracle.as_deref()).await?;
    println!("{}", summary(&report));
    println!(
        "  {} rows trained in {:.1}s, {} test rows, {:.1} MB pushed, {:.1} MB pulled, {} bad lines",
        report.rows_trained,
        report.train_seconds,
        report.test_rows,
        report.bytes_pushed as f64 / 1e6,
        report.bytes_pulled as f64 / 1e6,
        report.bad_lines
    );
    let report_path = args.workdir.join("report.json");
    write_report(&report, &report_path)?;
    let plot_path = args.workdir.join("curves.png");
    let labelled = crate::plot::training_curves(&report.curve, "DeepFM", &plot_path)?;
    if !labelled {
        println!("  (no TrueType font found: the plot has no labels; install fonts-dejavu-core)");
    }
    println!("report: {}\nplot:   {}", report_path.display(), plot_path.display());
    Ok(())
}
