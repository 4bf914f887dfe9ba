//! `ember serve`, `ember predict` and `ember model`: the serving side of the CLI.

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use ember_client::{HedgePolicy, ReplicaSet, ServingClient};
use ember_core::eval::{auc, logloss};
use ember_core::job::{DataFormat, DataSpec};
use ember_model::ModelDir;
use ember_proto::v1;
use ember_serving::{Freshness, LookupFailure, Serving, ServingConfig, SparseSource};
use ember_worker::reader::{open_lines, LineParser};

use crate::observability;
use crate::security::{ClientSecurityArgs, ServerSecurityArgs};
use crate::store_cmds::Targets;

impl ServeArgs {
    /// What clap cannot say about flags that depend on each other.
    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.freshness == "latest" || !self.replicas.is_empty(),
            "--freshness {} needs --replicas (only replicas hold published versions' rows)",
            self.freshness
        );
        Ok(())
    }

    /// `--check-config`: what this node would start with, every file it names loaded, nothing
    /// bound or read from the model directories.
    pub fn check(&self) -> anyhow::Result<String> {
        self.validate()?;
        let rows = if self.replicas.is_empty() {
            self.targets.describe()
        } else {
            format!("replicas {} ({})", self.replicas.join(","), self.freshness)
        };
        let dirs: Vec<String> = self.model_dir.iter().map(|d| d.display().to_string()).collect();
        Ok(format!(
            "serve: listen {}, models {}, rows from {rows}; {}; {}",
            self.listen,
            dirs.join(","),
            self.security.summary()?,
            self.trace.summary()
        ))
    }
}

/// Arguments of `ember serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// gRPC address to listen on (port 0 picks one; the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// A model directory training publishes into; repeat it to serve several models (requests
    /// then name their model).
    #[arg(long, required = true)]
    model_dir: Vec<PathBuf>,
    /// Where sparse rows come from without --replicas: the training servers.
    #[command(flatten)]
    targets: Targets,
    /// Read-only embedding replicas (`ember replica`) to look rows up in, comma-separated; the
    /// training servers then get no lookups from serving. One of --ps, --scheduler, --replicas.
    #[arg(long, value_delimiter = ',', group = "Targets")]
    replicas: Vec<String>,
    /// Send a backup lookup to another replica after this many milliseconds (default: the
    /// replica group's recent p95 latency, at least --hedge-floor-ms).
    #[arg(long)]
    hedge_ms: Option<u64>,
    /// With --replicas: `latest` (training's updates reach predictions within a second; a version
    /// rolled back to reads its own published rows) or `pinned` (every version reads only its own
    /// published rows; the replicas need --model-dir).
    #[arg(long, default_value = "latest", value_parser = ["latest", "pinned"])]
    freshness: String,
    /// Shortest p95-based backup delay, in milliseconds.
    #[arg(long, default_value_t = 1.0)]
    hedge_floor_ms: f64,
    /// Also answer TF-Serving-style REST on this address.
    #[arg(long)]
    http_listen: Option<SocketAddr>,
    /// Serve Prometheus metrics on this address.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// How long a looked-up row is cached (0 turns the cache off).
    #[arg(long, default_value_t = 500)]
    cache_ttl_ms: u64,
    /// Most rows cached per table.
    #[arg(long, default_value_t = 1 << 20)]
    cache_rows: usize,
    /// A lookup slower than this fails.
    #[arg(long, default_value_t = 500)]
    lookup_timeout_ms: u64,
    /// On a failed lookup: fail the request (`fail`) or use initializer values (`initializer`).
    #[arg(long, default_value = "fail", value_parser = ["fail", "initializer"])]
    on_lookup_failure: String,
    /// Model versions kept in memory for instant rollback.
    #[arg(long, default_value_t = 3)]
    keep_versions: usize,
    /// How often the model directory is checked, in milliseconds.
    #[arg(long, default_value_t = 200)]
    poll_ms: u64,
    /// Most samples per request.
    #[arg(long, default_value_t = 4096)]
    max_samples: usize,
    /// Log every answered sample (request id, time, version, raw features) as JSON lines in
    /// this directory, one file per time bucket, for `ember join`.
    #[arg(long)]
    prediction_log: Option<PathBuf>,
    /// Length of a prediction-log bucket (its file is renamed into place a second after it ends).
    #[arg(long, default_value_t = 60.0)]
    prediction_log_bucket_seconds: f64,
    #[command(flatten)]
    security: ServerSecurityArgs,
    /// Trace export (`--otlp-endpoint`).
    #[command(flatten)]
    pub trace: crate::otlp::TraceArgs,
}

/// Runs a serving node until SIGINT/SIGTERM.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    args.validate()?;
    let (security, credentials) = (args.security.server()?, args.security.credentials()?);
    if let Some(addr) = args.metrics_listen {
        let bound = observability::serve_metrics(addr, &security).await?;
        println!("ember serve metrics on {}://{bound}/metrics", crate::https::scheme(&security));
    }
    let config = ServingConfig {
        poll_interval: Duration::from_millis(args.poll_ms.max(10)),
        keep_versions: args.keep_versions,
        max_samples: args.max_samples,
        cache_ttl: Duration::from_millis(args.cache_ttl_ms),
        cache_rows: args.cache_rows,
        lookup_timeout: Duration::from_millis(args.lookup_timeout_ms.max(1)),
        on_lookup_failure: if args.on_lookup_failure == "initializer" {
            LookupFailure::Initializer
        } else {
            LookupFailure::Fail
        },
        freshness: if args.freshness == "pinned" { Freshness::Pinned } else { Freshness::Latest },
        security: security.clone(),
        prediction_log: args
            .prediction_log
            .clone()
            .map(|dir| (dir, Duration::from_secs_f64(args.prediction_log_bucket_seconds.max(1.0)))),
        ..ServingConfig::default()
    };
    let rows: SparseSource = if args.replicas.is_empty() {
        args.targets.client(&credentials).await?.into()
    } else {
        let policy = HedgePolicy {
            fixed: args.hedge_ms.map(Duration::from_millis),
            floor: Duration::from_secs_f64(args.hedge_floor_ms.max(0.0) / 1e3),
            ..HedgePolicy::default()
        };
        let set = ReplicaSet::connect(&args.replicas, &credentials, policy, Duration::from_secs(1)).await?;
        if let Err(e) = set.wait_ready(Duration::from_secs(30)).await {
            tracing::warn!(error = %e, "starting anyway: lookups fail until a replica holds each slot");
        }
        set.into()
    };
    let dirs = args.model_dir.iter().map(ModelDir::new).collect();
    let serving = Serving::start(dirs, rows, config.clone()).await.context("starting the prediction log")?;
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    if let Some(addr) = args.http_listen {
        let http = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        println!("ember serve http on {}", http.local_addr()?);
        let app = ember_serving::http::router(std::sync::Arc::clone(&serving.models));
        tokio::spawn(async move {
            if let Err(err) = crate::https::serve(http, app, &security, observability::shutdown_signal()).await {
                tracing::error!(%err, "http endpoint stopped");
            }
        });
    }
    println!("ember serve listening on {}", listener.local_addr()?);
    ember_serving::grpc::serve(
        listener,
        std::sync::Arc::clone(&serving.models),
        config,
        observability::shutdown_signal(),
    )
    .await?;
    Ok(())
}

/// Arguments of `ember predict`.
#[derive(Debug, clap::Args)]
pub struct PredictArgs {
    /// The serving node.
    #[arg(long)]
    serving: String,
    /// Samples in the model's training format (Criteo TSV, CSV with a header, libsvm, libffm).
    #[arg(long)]
    data: PathBuf,
    /// One probability per line.
    #[arg(long)]
    out: PathBuf,
    /// Samples per request.
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// CSV: the label column (others not in the model are ignored).
    #[arg(long, default_value = "label")]
    label_column: String,
    /// The model to ask (needed when the node serves several).
    #[arg(long, default_value = "")]
    model: String,
    #[command(flatten)]
    security: ClientSecurityArgs,
}

/// Predictions of a data file's rows through a serving node.
pub struct FilePredictions {
    /// One per row.
    pub probs: Vec<f32>,
    /// The rows' labels.
    pub labels: Vec<f32>,
    /// Model versions that answered.
    pub versions: Vec<u64>,
}

/// Turns data lines of the model's format into wire samples and labels.
pub(crate) struct SampleReader {
    format: DataFormat,
    names: Vec<String>,
    csv_header: Option<Vec<String>>,
    label_column: String,
    parser: Option<LineParser>,
}

impl SampleReader {
    pub(crate) fn new(status: &v1::ModelStatusResponse, label_column: &str) -> anyhow::Result<Self> {
        let format = match status.data_format.as_str() {
            "criteo" => DataFormat::Criteo,
            "csv" => DataFormat::Csv,
            "libsvm" => DataFormat::Libsvm,
            "libffm" => DataFormat::Libffm,
            other => anyhow::bail!("the served model's data format {other:?} is unknown to this build"),
        };
        let parser = matches!(format, DataFormat::Libsvm | DataFormat::Libffm).then(|| {
            let spec = DataSpec { test_split: 0.0, max_bad_ratio: 1.0, ..DataSpec::of(format, None) };
            LineParser::new(&spec, &[]).expect("sparse formats need no header")
        });
        Ok(Self {
            format,
            names: status.fields.iter().map(|f| f.name.clone()).collect(),
            csv_header: None,
            label_column: label_column.to_string(),
            parser,
        })
    }

    /// `Ok(None)` for a header line.
    pub(crate) fn sample(&mut self, line: &str) -> Result<Option<(v1::Sample, f32)>, String> {
        let mut sample = v1::Sample::default();
        match self.format {
            DataFormat::Criteo => {
                let cols: Vec<&str> = line.split('\t').collect();
                if cols.len() != 1 + self.names.len() {
                    return Err(format!(
                        "expected {} tab-separated columns, found {}",
                        1 + self.names.len(),
                        cols.len()
                    ));
                }
                let label = cols[0].parse::<f32>().map_err(|_| format!("label {:?} is not a number", cols[0]))?;
                // Criteo's columns are the model's fields in order: send them by position.
                sample.row = cols[1..].iter().map(|c| c.to_string()).collect();
                Ok(Some((sample, label)))
            }
            DataFormat::Csv => {
                let Some(header) = &self.csv_header else {
                    self.csv_header = Some(line.split(',').map(|s| s.trim().to_string()).collect());
                    return Ok(None);
                };
                let mut label = None;
                for (name, cell) in header.iter().zip(line.split(',')) {
                    if *name == self.label_column {
                        label = Some(if cell.trim() == "1" { 1.0 } else { 0.0 });
                    } else if self.names.contains(name) && !cell.trim().is_empty() {
                        sample.fields.insert(name.clone(), cell.trim().to_string());
                    }
                }
                Ok(Some((sample, label.ok_or_else(|| format!("no {:?} column", self.label_column))?)))
            }
            DataFormat::Libsvm | DataFormat::Libffm => {
                let parser = self.parser.as_ref().ok_or("no parser")?;
                let ex = parser.parse(line)?;
                sample.hashed = ex
                    .features
                    .iter()
                    .map(|f| v1::HashedFeature { field: f.field, id: f.id, value: f.value })
                    .collect();
                Ok(Some((sample, ex.label)))
            }
        }
    }
}

/// Sends data rows `skip..skip+take` of `path` through `client` in requests of `batch` samples.
pub async fn predict_file(
    client: &ServingClient,
    path: &Path,
    skip: u64,
    take: u64,
    batch: usize,
    label_column: &str,
    model: &str,
) -> anyhow::Result<FilePredictions> {
    let status = client.model_status(model).await.context("asking the serving node for its model")?;
    let mut reader = SampleReader::new(&status, label_column)?;
    let mut out = FilePredictions { probs: Vec::new(), labels: Vec::new(), versions: Vec::new() };
    let mut pending: Vec<(v1::Sample, u64)> = Vec::new();
    let mut row = 0u64;
    let send = |pending: Vec<(v1::Sample, u64)>| async move {
        let first_line = pending.first().map_or(0, |p| p.1);
        let samples: Vec<v1::Sample> = pending.into_iter().map(|p| p.0).collect();
        client
            .predict(model, samples)
            .await
            .with_context(|| format!("predicting the batch starting at line {first_line}"))
    };
    for (i, line) in open_lines(path)?.lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        let line_no = i as u64 + 1;
        // Rows are numbered as the training reader numbers them: every line but a CSV header.
        if !(i == 0 && reader.format == DataFormat::Csv) {
            row += 1;
            if row <= skip {
                continue;
            }
            if row > skip.saturating_add(take) {
                break;
            }
        }
        let Some((sample, label)) =
            reader.sample(&line).map_err(|e| anyhow::anyhow!("{}:{line_no}: {e}", path.display()))?
        else {
            continue;
        };
        out.labels.push(label);
        pending.push((sample, line_no));
        if pending.len() == batch.max(1) {
            let r = send(std::mem::take(&mut pending)).await?;
            out.probs.extend(r.probabilities);
            out.versions.push(r.version);
        }
    }
    if !pending.is_empty() {
        let r = send(pending).await?;
        out.probs.extend(r.probabilities);
        out.versions.push(r.version);
    }
    out.versions.dedup();
    Ok(out)
}

/// Runs `ember predict`.
pub async fn predict(args: PredictArgs) -> anyhow::Result<()> {
    let client = ServingClient::connect(&args.serving, &args.security.credentials()?).await?;
    let p = predict_file(&client, &args.data, 0, u64::MAX, args.batch, &args.label_column, &args.model).await?;
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(&args.out).with_context(|| format!("creating {}", args.out.display()))?,
    );
    for prob in &p.probs {
        writeln!(out, "{prob}")?;
    }
    out.flush()?;
    let has_both = p.labels.iter().any(|l| *l > 0.5) && p.labels.iter().any(|l| *l < 0.5);
    if has_both {
        println!(
            "{} rows: AUC {:.4}, logloss {:.4} (model versions {:?})",
            p.probs.len(),
            auc(&p.probs, &p.labels),
            logloss(&p.probs, &p.labels),
            p.versions
        );
    } else {
        println!("{} rows predicted (model versions {:?})", p.probs.len(), p.versions);
    }
    Ok(())
}

/// `ember model ...`.
#[derive(Debug, clap::Subcommand)]
pub enum ModelCommand {
    /// List the versions in a model directory.
    List {
        /// The model directory.
        #[arg(long)]
        model_dir: PathBuf,
        /// One JSON object per version.
        #[arg(long)]
        json: bool,
    },
    /// Point serving at an older kept version (until the next publish).
    Rollback {
        /// The model directory.
        #[arg(long)]
        model_dir: PathBuf,
        /// The version to serve.
        #[arg(long)]
        to: u64,
    },
}

/// Runs `ember model ...`.
pub fn model(cmd: ModelCommand) -> anyhow::Result<()> {
    match cmd {
        ModelCommand::List { model_dir, json } => {
            let dir = ModelDir::new(&model_dir);
            let versions = dir.list()?;
            anyhow::ensure!(!versions.is_empty(), "no model versions in {}", model_dir.display());
            for ember_model::registry::ListedVersion { version, manifest, current } in versions {
                match (manifest, json) {
                    (Ok(m), true) => println!(
                        "{}",
                        serde_json::json!({
                            "version": version, "current": current, "name": m.name, "job": m.job,
                            "rows_trained": m.rows_trained, "created_unix_ms": m.created_unix_ms,
                            "checkpoint": m.checkpoint, "dense_values": m.dense_values, "held": m.held,
                        })
                    ),
                    (Ok(m), false) => println!(
                        "{}{version:>6}  {}  rows {}  checkpoint {}  created {}{}",
                        if current { "*" } else { " " },
                        m.name,
                        m.rows_trained,
                        m.checkpoint.map_or("-".into(), |c| c.to_string()),
                        m.created_unix_ms,
                        m.held.as_ref().map(|r| format!("  HELD: {r}")).unwrap_or_default()
                    ),
                    (Err(e), true) => {
                        println!(
                            "{}",
                            serde_json::json!({ "version": version, "current": current, "error": e.to_string() })
                        )
                    }
                    (Err(e), false) => println!("{}{version:>6}  unreadable: {e}", if current { "*" } else { " " }),
                }
            }
            Ok(())
        }
        ModelCommand::Rollback { model_dir, to } => {
            ModelDir::new(&model_dir).rollback(to).with_context(|| format!("rolling back to version {to}"))?;
            println!("model version {to} is current in {}", model_dir.display());
            Ok(())
        }
    }
}
