//! The serving node: predictions for raw samples from the current published model version.
//!
//! Layout:
//! - [`cache`]: a bounded, sharded cache of looked-up rows with a TTL (fresh training updates
//!   reach predictions within the TTL).
//! - [`rows`]: a request's sparse rows: cache first, then one read-only `Lookup` per table for
//!   the misses, with a timeout; on failure either fail fast or use the initializer's values.
//! - [`manager`]: watches the model directory, loads and warms a new version off the request
//!   path, swaps it in atomically, keeps the last K versions, follows rollbacks.
//! - [`models`]: the node's models, one predictor per model directory, picked by name.
//! - [`predictor`]: one request: samples -> examples (hashed as training hashed them) -> rows ->
//!   the model's forward pass, all against one model version.
//! - [`grpc`] and [`http`]: thin adapters (`ember.v1.Serving`, and TF Serving's REST shape
//!   `POST /v1/models/{name}:predict`).
//!
//! Invariants: a request is answered by exactly one model version (it holds an `Arc` of it for
//! its whole life, so a swap never mixes versions and the old version is freed when the last
//! in-flight request drops it); nothing here creates rows on the ps-servers.
//!
//! Metrics: `ember_serving_requests_total{api,code}`, `ember_serving_request_seconds{api}`,
//! `ember_serving_samples_total`, `ember_serving_cache_total{result}` (hit, miss),
//! `ember_serving_lookup_misses_total`, `ember_serving_lookup_failures_total{action}`,
//! `ember_serving_model_version`, `ember_serving_model_loads_total{outcome}`,
//! `ember_serving_swap_seconds`.

pub mod cache;
pub mod error;
pub mod grpc;
pub mod http;
pub mod log;
pub mod manager;
pub mod models;
pub mod predictor;
pub mod rows;

use std::sync::Arc;
use std::time::Duration;

pub use error::ServingError;
pub use manager::{LoadedModel, ModelManager};
pub use models::Models;
pub use predictor::{Prediction, Predictor, SampleIn};
pub use rows::{LookupFailure, RowSource, SparseSource};

/// Counts a request and its latency under its API and outcome.
pub(crate) fn record<T>(api: &'static str, started: std::time::Instant, result: &Result<T, ServingError>) {
    let code = match result {
        Ok(_) => "ok",
        Err(e) => e.label(),
    };
    metrics::counter!("ember_serving_requests_total", "api" => api, "code" => code).increment(1);
    metrics::histogram!("ember_serving_request_seconds", "api" => api).record(started.elapsed().as_secs_f64());
}

/// Which sparse rows a model version predicts with, when rows come from replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// The latest rows (training's updates reach predictions within a second), except after a
    /// rollback: a version older than the newest published one reads its own sparse state.
    Latest,
    /// Always the version's own sparse state: only what was published reaches predictions.
    Pinned,
}

/// Tunables of a serving node.
#[derive(Debug, Clone)]
pub struct ServingConfig {
    /// How often the model directory is checked for a new current version.
    pub poll_interval: Duration,
    /// Versions held in memory (the current one included) for instant rollback.
    pub keep_versions: usize,
    /// Most samples in one request.
    pub max_samples: usize,
    /// How long a cached row is used before it is looked up again.
    pub cache_ttl: Duration,
    /// Most rows cached per table.
    pub cache_rows: usize,
    /// A lookup slower than this fails.
    pub lookup_timeout: Duration,
    /// What a failed lookup does.
    pub on_lookup_failure: LookupFailure,
    /// Which sparse rows a version predicts with (when reading replicas).
    pub freshness: Freshness,
    /// Requests a new version answers before it is swapped in (recorded ones first, synthetic
    /// ones when too few were recorded).
    pub warmup_requests: usize,
    /// Largest gRPC message, in bytes.
    pub max_message_bytes: usize,
    /// TLS and role tokens of the gRPC port (off by default).
    pub security: ember_proto::tls::ServerSecurity,
    /// Log every answered sample here, in buckets of this length (`log`); off by default.
    pub prediction_log: Option<(std::path::PathBuf, Duration)>,
}

impl Default for ServingConfig {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_millis(200),
            keep_versions: 3,
            max_samples: 4096,
            cache_ttl: Duration::from_millis(500),
            cache_rows: 1 << 20,
            lookup_timeout: Duration::from_millis(500),
            on_lookup_failure: LookupFailure::Fail,
            freshness: Freshness::Latest,
            warmup_requests: 8,
            max_message_bytes: 16 << 20,
            security: ember_proto::tls::ServerSecurity::default(),
            prediction_log: None,
        }
    }
}

/// A running serving node's core: its models and the tasks that follow their directories.
pub struct Serving {
    /// Answers requests.
    pub models: Arc<Models>,
    watchers: Vec<tokio::task::JoinHandle<()>>,
}

impl Serving {
    /// Loads the current version of each of `dirs` (if any) and starts following them. Every
    /// model reads its sparse rows from `rows` (one cache shared by all).
    pub async fn start(
        dirs: Vec<ember_model::ModelDir>,
        rows: impl Into<SparseSource>,
        config: ServingConfig,
    ) -> std::io::Result<Self> {
        let rows = Arc::new(RowSource::new(rows.into(), &config));
        let log = match &config.prediction_log {
            Some((dir, bucket)) => Some(Arc::new(log::PredictionLog::start(dir.clone(), *bucket)?)),
            None => None,
        };
        let mut predictors = Vec::with_capacity(dirs.len());
        let mut watchers = Vec::with_capacity(dirs.len());
        for dir in dirs {
            let root = dir.root().display().to_string();
            let manager = Arc::new(ModelManager::new(dir, config.keep_versions));
            let predictor = Arc::new(Predictor::new(Arc::clone(&manager), Arc::clone(&rows), &config, log.clone()));
            if let Err(e) = predictor.refresh().await {
                tracing::warn!(dir = %root, error = %e, "no model loaded at start; it answers Unavailable until one is");
            }
            watchers.push(tokio::spawn(predictor::watch(Arc::clone(&predictor), config.poll_interval)));
            predictors.push(predictor);
        }
        Ok(Self { models: Arc::new(Models::new(predictors)), watchers })
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        for w in &self.watchers {
            w.abort();
        }
    }
}
