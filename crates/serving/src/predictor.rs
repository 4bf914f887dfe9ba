//! One request, start to finish, against one model version.
//!
//! samples -> examples (the version's schema, hashed exactly as training hashed) -> one
//! deduplicated key list -> rows of each sparse table (cache, then lookups) -> the forward pass
//! on a blocking thread. The predictor also warms new versions up before they are swapped in,
//! with requests it recorded (the real mix of fields and keys) or synthetic ones.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ember_core::SplitMix64;
use ember_model::features::{Example, Feature};
use ember_model::model::IndexedBatch;
use ember_model::{FieldKind, SparseLayout};
use parking_lot::Mutex;

use crate::manager::{LoadedModel, ModelManager};
use crate::rows::{RowSource, TableRows};
use crate::{ServingConfig, ServingError};

/// One sample of a request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SampleIn {
    /// Raw values by field name.
    pub fields: Vec<(String, String)>,
    /// Or raw values by position, one per field of the model (empty when `fields` is used).
    pub row: Vec<String>,
    /// Features the caller hashed.
    pub hashed: Vec<Feature>,
    /// The request's id for the prediction log (empty: made by the node).
    pub request_id: String,
}

/// A request's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// The version that answered.
    pub version: u64,
    /// One probability per sample.
    pub probabilities: Vec<f32>,
    /// Distinct keys no ps-server had.
    pub lookup_misses: u64,
    /// With a prediction log: each sample's id as logged.
    pub request_ids: Vec<String>,
}

/// Answers requests; warms up new versions.
pub struct Predictor {
    manager: Arc<ModelManager>,
    rows: Arc<RowSource>,
    max_samples: usize,
    warmup_requests: usize,
    recorded: Mutex<VecDeque<Arc<Vec<SampleIn>>>>,
    requests: AtomicU64,
    freshness: crate::Freshness,
    log: Option<Arc<crate::log::PredictionLog>>,
}

impl Predictor {
    /// A predictor over `manager`'s versions and `rows` (shared by every model of a node).
    pub fn new(
        manager: Arc<ModelManager>,
        rows: Arc<RowSource>,
        config: &ServingConfig,
        log: Option<Arc<crate::log::PredictionLog>>,
    ) -> Self {
        Self {
            manager,
            rows,
            max_samples: config.max_samples,
            warmup_requests: config.warmup_requests,
            recorded: Mutex::new(VecDeque::new()),
            requests: AtomicU64::new(0),
            freshness: config.freshness,
            log,
        }
    }

    /// Logs each sample of an answered request; returns their ids.
    fn log(&self, m: &LoadedModel, samples: &[SampleIn]) -> Vec<String> {
        let Some(log) = &self.log else { return Vec::new() };
        let time_ms = ember_core::unix_ms();
        let fields = m.manifest.schema.fields();
        samples
            .iter()
            .map(|s| {
                let request_id = if s.request_id.is_empty() { log.next_id() } else { s.request_id.clone() };
                let cells: Option<Vec<&str>> = if !s.row.is_empty() {
                    Some(s.row.iter().map(String::as_str).collect())
                } else if !s.fields.is_empty() {
                    let value = |name: &str| s.fields.iter().find(|(n, _)| n == name).map_or("", |(_, v)| v.as_str());
                    Some(fields.iter().map(|f| value(&f.name)).collect())
                } else {
                    None
                };
                match cells {
                    Some(cells) => log.log(crate::log::Record {
                        request_id: request_id.clone(),
                        time_ms,
                        model_version: m.version(),
                        features: cells.join("\t"),
                    }),
                    None => log.unloggable(),
                }
                request_id
            })
            .collect()
    }

    /// The sparse state `m` predicts with: 0 (the latest rows), or `m`'s own published state
    /// when the node is pinned, `m` was rolled back to, or the request named `m`'s version
    /// (`named`). Only replicas hold published states, and only of versions that took
    /// checkpoints.
    fn sparse_version(&self, m: &LoadedModel, named: bool) -> u64 {
        let own = self.rows.versioned() && !m.manifest.sparse_checkpoints.is_empty();
        let pinned = named || self.freshness == crate::Freshness::Pinned || self.manager.rolled_back(m.version());
        if own && pinned {
            m.version()
        } else {
            0
        }
    }

    /// The model versions.
    pub fn manager(&self) -> &ModelManager {
        &self.manager
    }

    /// The current version's model name, once one is loaded.
    pub fn name(&self) -> Option<String> {
        self.manager.current().map(|m| m.manifest.name.clone())
    }

    /// Predicts `samples` with version `version` (0: the current one; else one held in memory).
    pub async fn predict(&self, version: u64, samples: Vec<SampleIn>) -> Result<Prediction, ServingError> {
        let current = self.manager.current().ok_or(ServingError::NoModel)?;
        let (m, named) = if version == 0 || version == current.version() {
            (current, false)
        } else {
            let held = self.manager.kept(version).ok_or_else(|| ServingError::UnknownVersion {
                model: current.manifest.name.clone(),
                version,
                kept: self.manager.kept_versions(),
            })?;
            (held, true)
        };
        if samples.len() > self.max_samples {
            return Err(ServingError::InvalidArgument(format!(
                "{} samples in one request; at most {}",
                samples.len(),
                self.max_samples
            )));
        }
        metrics::counter!("ember_serving_samples_total").increment(samples.len() as u64);
        let n = self.requests.fetch_add(1, Ordering::Relaxed);
        let mut prediction = self.predict_with(&m, &samples, named).await?;
        prediction.request_ids = self.log(&m, &samples);
        // A sample of real traffic for warming up the next version: the first requests, then
        // one in 64 (copying every request would cost more than it teaches).
        if self.warmup_requests > 0 && (n < self.warmup_requests as u64 || n.is_multiple_of(64)) {
            let mut recorded = self.recorded.lock();
            if recorded.len() == self.warmup_requests {
                recorded.pop_front();
            }
            recorded.push_back(Arc::new(samples));
        }
        Ok(prediction)
    }

    async fn predict_with(
        &self,
        m: &Arc<LoadedModel>,
        samples: &[SampleIn],
        named: bool,
    ) -> Result<Prediction, ServingError> {
        let examples = samples
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let schema = &m.manifest.schema;
                let example = if s.row.is_empty() {
                    schema.example(s.fields.iter().map(|(k, v)| (k.as_str(), v.as_str())), &s.hashed)
                } else if s.fields.is_empty() {
                    schema.example_from_row(&s.row, &s.hashed)
                } else {
                    return Err(ServingError::InvalidArgument(format!("sample {i}: give fields or row, not both")));
                };
                example.map_err(|e| ServingError::InvalidArgument(format!("sample {i}: {e}")))
            })
            .collect::<Result<Vec<Example>, _>>()?;
        if examples.is_empty() {
            return Ok(Prediction {
                version: m.version(),
                probabilities: Vec::new(),
                lookup_misses: 0,
                request_ids: Vec::new(),
            });
        }
        let batch = IndexedBatch::new(&examples);
        let sparse = self.sparse_version(m, named);
        let (w, v) = if matches!(m.manifest.tables.layout(), SparseLayout::Joined(_)) {
            let mut rows = self.rows.rows(&m.linear, &batch.keys, sparse).await?;
            let (w, v) = m.manifest.tables.split_rows(std::mem::take(&mut rows.values));
            rows.values = v;
            (TableRows { values: w, misses: rows.misses, cache_hits: rows.cache_hits }, Some(rows))
        } else {
            tokio::try_join!(self.rows.rows(&m.linear, &batch.keys, sparse), async {
                match &m.embedding {
                    Some(spec) => self.rows.rows(spec, &batch.keys, sparse).await.map(Some),
                    None => Ok(None),
                }
            })?
        };
        let lookup_misses = w.misses.max(v.as_ref().map_or(0, |v| v.misses));
        let model = Arc::clone(m);
        let probabilities = tokio::task::spawn_blocking(move || {
            model.compute(&batch, &w.values, v.as_ref().map_or(&[][..], |v| &v.values))
        })
        .await
        .map_err(|e| ServingError::Compute(e.to_string()))??;
        Ok(Prediction { version: m.version(), probabilities, lookup_misses, request_ids: Vec::new() })
    }

    /// Loads, warms up and swaps in the version the model directory names, if it is new.
    /// Returns the version swapped in.
    pub async fn refresh(&self) -> Result<Option<u64>, ServingError> {
        let Some(version) = self.manager.wanted().await? else { return Ok(None) };
        let started = Instant::now();
        let result = async {
            let model = self.manager.get_or_load(version).await?;
            self.warm_up(&model).await?;
            Ok::<_, ServingError>(model)
        }
        .await;
        match result {
            Ok(model) => {
                self.manager.swap_in(model);
                metrics::histogram!("ember_serving_swap_seconds").record(started.elapsed().as_secs_f64());
                Ok(Some(version))
            }
            Err(ServingError::SparseNotReady(v)) => {
                // The replicas are still reading this version's checkpoints: try at the next look.
                tracing::info!(version = v, "waiting for the replicas to hold this version's sparse state");
                Ok(None)
            }
            Err(e) => {
                self.manager.mark_failed(version, &e);
                Err(e)
            }
        }
    }

    /// Runs recorded requests (or synthetic ones) through `model` end to end.
    async fn warm_up(&self, model: &Arc<LoadedModel>) -> Result<(), ServingError> {
        let recorded: Vec<Arc<Vec<SampleIn>>> = self.recorded.lock().iter().cloned().collect();
        let mut rng = SplitMix64::new(model.version());
        for i in 0..self.warmup_requests {
            let samples = match recorded.get(i) {
                Some(r) => Arc::clone(r),
                None => Arc::new(synthetic_samples(model, 64, &mut rng)),
            };
            match self.predict_with(model, &samples, false).await {
                // Recorded traffic may predate a schema change; only the model's own failures count.
                Err(ServingError::InvalidArgument(_)) if i < recorded.len() => continue,
                Err(e) => return Err(e),
                Ok(_) => {}
            }
        }
        Ok(())
    }
}

/// `n` samples with random values for every named field (hashed features for schema-less models).
pub fn synthetic_samples(model: &LoadedModel, n: usize, rng: &mut SplitMix64) -> Vec<SampleIn> {
    let fields = model.manifest.schema.fields();
    (0..n)
        .map(|_| {
            if fields.is_empty() {
                let hashed = (0..8).map(|f| Feature { field: f, id: rng.next_u64(), value: 1.0 }).collect();
                return SampleIn { hashed, ..Default::default() };
            }
            let fields = fields
                .iter()
                .map(|f| {
                    let value = match f.kind {
                        FieldKind::Categorical => format!("{:08x}", rng.next_u64() as u32),
                        FieldKind::Integer | FieldKind::Numeric => (rng.next_u64() % 1000).to_string(),
                    };
                    (f.name.clone(), value)
                })
                .collect();
            SampleIn { fields, ..Default::default() }
        })
        .collect()
}

/// The loaded model, as `ModelStatus` (gRPC) and `GET /v1/models/NAME` (REST) show it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelStatus {
    /// Version.
    pub version: u64,
    /// Model name (the job's).
    pub name: String,
    /// Rows trained when it was published.
    pub rows_trained: u64,
    /// Input fields: (name, field id, `categorical` / `integer` / `numeric`).
    pub fields: Vec<(String, u32, &'static str)>,
    /// Sparse tables it reads.
    pub tables: Vec<String>,
    /// Versions kept loaded (for rollback).
    pub kept_versions: Vec<u64>,
    /// The data format its inputs came in.
    pub data_format: String,
}

impl Predictor {
    /// The loaded model's status.
    pub fn status(&self) -> Result<ModelStatus, ServingError> {
        let m = self.manager().current().ok_or(ServingError::NoModel)?;
        let kind = |k| match k {
            ember_model::FieldKind::Categorical => "categorical",
            ember_model::FieldKind::Integer => "integer",
            ember_model::FieldKind::Numeric => "numeric",
        };
        Ok(ModelStatus {
            version: m.version(),
            name: m.manifest.name.clone(),
            rows_trained: m.manifest.rows_trained,
            fields: m.manifest.schema.fields().iter().map(|f| (f.name.clone(), f.field, kind(f.kind))).collect(),
            tables: m.manifest.tables.sparse_names().into_iter().map(String::from).collect(),
            kept_versions: self.manager().kept_versions(),
            data_format: format!("{:?}", m.manifest.data_format).to_lowercase(),
        })
    }
}

/// Follows the model directory every `interval` until aborted.
pub async fn watch(predictor: Arc<Predictor>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = predictor.refresh().await {
            tracing::warn!(error = %e, "checking the model directory");
        }
    }
}
