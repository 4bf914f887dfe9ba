//! `ember demo`: the main job end to end on one machine. It generates synthetic Criteo-format data
//! (unless `--data` is given), trains DeepFM on an embedded cluster (ps-servers and workers in this
//! process, real gRPC on loopback), shows progress, prints the hold-out metrics beside the data's
//! oracle, and writes the JSON report and a PNG of the training curves into its workdir. Training
//! publishes the model into WORKDIR/models, and publishing has the ps-servers checkpoint their rows
//! into WORKDIR/checkpoints first. The servers then stop; a new set restores those checkpoints
//! (the demo refuses to go on unless they are the ones the published version names). An embedding
//! replica follows the restored servers and reads the published version's sparse rows from the
//! checkpoints its publish took, and a serving node pinned to the published version (in this
//! process, real gRPC between all of them) answers the hold-out rows from the replica. The demo
//! prints its AUC beside the training evaluation's: equal AUCs show that the checkpoint and the
//! published version together are the trained model.

use std::path::PathBuf;

use anyhow::Context;
use ember_core::JobSpec;

use std::path::Path;
use std::sync::Arc;

use std::time::Duration;

use ember_client::{HedgePolicy, PsClient, ReplicaSet, ServingClient};
use ember_core::eval::{auc, logloss};
use ember_model::ModelDir;
use ember_replica::ReplicaConfig;
use ember_serving::{Freshness, Serving, ServingConfig};

use crate::cluster::{EmbeddedCluster, PsServers};
use crate::serve_cmds::predict_file;
use crate::train::{job_text, oracle_auc, train, write_report, Trained};

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

/// The demo trains examples/criteo-deepfm.toml on 2 ps-servers and one worker. (On 2 cores more
/// workers are not faster, and their pushes make each other's gradients stale: docs/benchmarks.md,
/// "Sync modes with 4 workers".)
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
                ember_worker::synth::SynthConfig { rows: args.rows, seed: 1, window: None },
                &mut out,
                Some(&mut o),
            )?;
            (data, Some(oracle))
        }
    };
    let models = args.workdir.join("models");
    let (text, job) = demo_job(&data, &models)?;
    println!(
        "training DeepFM (k=8, MLP 312-256-128-1) on {} with {} ps-servers and {} worker(s) (gRPC on loopback)",
        data.display(),
        job.cluster.ps,
        job.cluster.workers
    );
    // Training starts from nothing: the job cluster clears checkpoints of an earlier demo.
    let checkpoints = args.workdir.join("checkpoints");
    let ps = PsServers::Embedded { count: job.cluster.ps, checkpoints: Some(&checkpoints) };
    let mut run = train(&text, &job, ps, &args.workdir, true).await?;
    if let Some(oracle) = &oracle {
        run.report.oracle_test_auc = Some(oracle_auc(oracle, run.report.train_rows, &run.test_labels)?);
    }
    let report = &run.report;
    println!("{}", report.summary());
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
    write_report(report, &report_path)?;
    let plot_path = args.workdir.join("curves.png");
    let labelled = crate::plot::training_curves(&report.curve, "DeepFM", &plot_path)?;
    if !labelled {
        println!("  (no TrueType font found: the plot has no labels; install fonts-dejavu-core)");
    }
    let version = report.published.last().copied().context("training published no model version")?;
    let manifest = ModelDir::new(&models).load(version).context("reading the published version")?.manifest;
    let (restored, chains) = EmbeddedCluster::start_with_checkpoints(job.cluster.ps, Some(&checkpoints)).await?;
    let labels: Vec<Option<u64>> = chains.iter().map(|c| c.last().map(|c| c.label)).collect();
    let restored_rows: u64 = chains.iter().flatten().map(|c| c.rows).sum();
    let (bytes, seconds) = chains.iter().flatten().fold((0, 0f64), |(b, s), c| (b + c.bytes, s + c.seconds));
    let served = if manifest.checkpoint.is_some() && labels.iter().all(|l| *l == manifest.checkpoint) {
        println!(
            "checkpoint: version {version} was published with the ps checkpoint labeled {}; {} new ps-servers restored it ({restored_rows} rows, {:.1} MB) from {} in {seconds:.2}s",
            manifest.checkpoint.unwrap_or_default(),
            chains.len(),
            bytes as f64 / 1e6,
            checkpoints.display()
        );
        serve_hold_out(&restored, &models, &data, &run).await
    } else {
        Err(anyhow::anyhow!(
            "the servers restored checkpoints labeled {labels:?} from {}, but version {version} names {:?}",
            checkpoints.display(),
            manifest.checkpoint
        ))
    };
    // A serving or checkpoint error says more than a failed stop after it.
    let stopped = restored.stop().await;
    println!("{}", served?);
    stopped?;
    println!("report: {}\nplot:   {}", report_path.display(), plot_path.display());
    Ok(())
}

/// The demo's job: examples/criteo-deepfm.toml on `data` with 2 ps-servers and one worker,
/// publishing into `models`.
fn demo_job(data: &Path, models: &Path) -> anyhow::Result<(String, JobSpec)> {
    let mut doc: toml::Table = toml::from_str(DEMO_JOB).context("examples/criteo-deepfm.toml")?;
    doc.insert("name".into(), toml::Value::String("demo-deepfm".into()));
    let mut cluster = toml::Table::new();
    cluster.insert("ps".into(), toml::Value::Integer(2));
    cluster.insert("workers".into(), toml::Value::Integer(1));
    doc.insert("cluster".into(), toml::Value::Table(cluster));
    let data = data.display().to_string();
    job_text(&toml::to_string(&doc)?, Some(&data), Some(models), &std::env::current_dir()?)
}

/// Starts an embedding replica of `cluster`'s servers holding the published version's rows, and
/// a serving node pinned to that version reading the replica; sends the hold-out rows through it
/// over gRPC, and describes the result beside the training side's evaluation of the same rows.
async fn serve_hold_out(
    cluster: &EmbeddedCluster,
    models: &Path,
    data: &Path,
    run: &Trained,
) -> anyhow::Result<String> {
    let none = ember_client::Credentials::none();
    let client = PsClient::connect(cluster.shard_map(), &none).await?;
    let replica_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let replica_addr = replica_listener.local_addr()?.to_string();
    let replica_dir = models.with_file_name("replica");
    let replica_config =
        ReplicaConfig { dir: replica_dir, model_dir: Some(models.to_path_buf()), ..ReplicaConfig::default() };
    let (stop_replica, replica_stopped) = tokio::sync::oneshot::channel::<()>();
    let replica = tokio::spawn(ember_replica::run(replica_listener, client, replica_config, async {
        let _ = replica_stopped.await;
    }));
    let result = serve_from_replica(&replica_addr, models, data, run).await;
    let _ = stop_replica.send(());
    replica.await.context("replica task")??;
    result
}

/// The serving half of [`serve_hold_out`].
async fn serve_from_replica(replica: &str, models: &Path, data: &Path, run: &Trained) -> anyhow::Result<String> {
    let none = ember_client::Credentials::none();
    let set =
        ReplicaSet::connect(&[replica.to_string()], &none, HedgePolicy::default(), Duration::from_secs(1)).await?;
    set.wait_ready(Duration::from_secs(60)).await?;
    // Pinned serving swaps a version in once the replica holds its rows: wait for that here.
    let current = ModelDir::new(models).current()?.context("nothing was published")?;
    let started = std::time::Instant::now();
    while !replica_versions(replica).await?.contains(&current) {
        anyhow::ensure!(started.elapsed() < Duration::from_secs(60), "the replica never held version {current}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let config = ServingConfig { freshness: Freshness::Pinned, ..ServingConfig::default() };
    let serving = Serving::start(vec![ModelDir::new(models)], set, config.clone()).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(ember_serving::grpc::serve(listener, Arc::clone(&serving.models), config, async {
        let _ = stopped.await;
    }));
    let result = async {
        let serving_client = ServingClient::connect(&addr, &ember_client::Credentials::none()).await?;
        let r = &run.report;
        let started = std::time::Instant::now();
        let p = predict_file(&serving_client, data, r.train_rows, r.test_rows, 64, "label", "").await?;
        let seconds = started.elapsed().as_secs_f64();
        let max_diff = p.probs.iter().zip(&run.test_probs).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        Ok::<_, anyhow::Error>(format!(
            "serving (model version {:?} on {addr}, its sparse rows from the replica on {replica}): {} hold-out rows in {:.2}s as batches of 64, test AUC {:.4} (training evaluation {:.4}), logloss {:.4}; largest difference from training's predictions {:.1e}",
            p.versions,
            p.probs.len(),
            seconds,
            auc(&p.probs, &p.labels),
            r.test_auc.unwrap_or(f64::NAN),
            logloss(&p.probs, &p.labels),
            max_diff
        ))
    }
    .await;
    let _ = stop.send(());
    server.await.context("serving task")??;
    result
}

/// The published versions a replica holds.
async fn replica_versions(addr: &str) -> anyhow::Result<Vec<u64>> {
    Ok(ember_client::replica_status(addr, &ember_client::Credentials::none()).await?.versions)
}
