//! One worker's training loop and batch prediction, against ps-servers through `PsClient`.
//!
//! Pipeline: batches arrive already parsed (a reader thread parses ahead); the rows of batch t+1
//! are pulled while batch t computes; a batch's gradients are pushed without waiting, with at most
//! one push in flight (the next push waits for the previous, which bounds memory and staleness).
//! Each batch is predicted before it is trained on (progressive validation).
//!
//! Tables: `{prefix}.w` (dim 1, the job's sparse optimizer, zeros) holds linear weights and the
//! bias; FM adds `{prefix}.v` (dim k, the embedding optimizer, N(0, init_stddev)).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ember_client::{ClientError, Clock, PsClient};
use ember_core::job::{JobSpec, ModelKind};
use ember_core::{Initializer, TableSpec};
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinHandle;

use crate::features::Example;
use crate::model::{FmModel, IndexedBatch};

/// Why training stopped.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A ps-server call failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The model kind is not built yet.
    #[error("model {0:?} is not supported by this worker yet")]
    Unsupported(ModelKind),
    /// A compute task panicked (a bug).
    #[error("compute task failed: {0}")]
    Task(String),
}

/// The tables a model lives in.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelTables {
    /// Linear weights and bias, dim 1.
    pub linear: String,
    /// Embeddings, dim k (FM).
    pub embedding: Option<String>,
    /// The model.
    pub model: FmModel,
}

impl ModelTables {
    /// The tables of `job`'s model, with their specs, named under `prefix`.
    pub fn for_job(job: &JobSpec, prefix: &str) -> Result<(Self, Vec<TableSpec>), TrainError> {
        let seed = job.training.seed;
        let linear = TableSpec::sparse(format!("{prefix}.w"), 1, job.optimizer.sparse)
            .with_initializer(Initializer::Zeros, seed);
        match job.model.kind {
            ModelKind::Lr => {
                Ok((Self { linear: linear.name.clone(), embedding: None, model: FmModel { k: 0 } }, vec![linear]))
            }
            ModelKind::Fm => {
                let k = job.model.embedding_dim;
                let init = Initializer::Normal { mean: 0.0, stddev: job.model.init_stddev };
                let emb =
                    TableSpec::sparse(format!("{prefix}.v"), k, job.optimizer.embedding).with_initializer(init, seed);
                let tables = Self {
                    linear: linear.name.clone(),
                    embedding: Some(emb.name.clone()),
                    model: FmModel { k: k as usize },
                };
                Ok((tables, vec![linear, emb]))
            }
            other => Err(TrainError::Unsupported(other)),
        }
    }
}

/// Counters shared by all workers of a job, read by progress reporting.
#[derive(Debug, Default)]
pub struct Progress {
    /// Examples trained.
    pub examples: AtomicU64,
    /// Sum of progressive logloss, in micro-units.
    pub loss_micros: AtomicU64,
}

/// What one worker did.
#[derive(Debug, Clone, Default)]
pub struct WorkerStats {
    /// Examples trained.
    pub examples: u64,
    /// Batches trained.
    pub batches: u64,
    /// Key and value bytes received by pulls.
    pub bytes_pulled: u64,
    /// Key and gradient bytes sent by pushes.
    pub bytes_pushed: u64,
    /// Progressive validation: each example's prediction before it was trained on.
    pub progressive_probs: Vec<f32>,
    /// Labels matching `progressive_probs`.
    pub progressive_labels: Vec<f32>,
}

/// A queue of parsed batches shared by the workers of one process.
pub type BatchQueue = Arc<Mutex<mpsc::Receiver<Vec<Example>>>>;

struct Pulled {
    w: Vec<f32>,
    v: Vec<f32>,
    clock_w: Clock,
    clock_v: Clock,
}

async fn pull_rows(client: PsClient, tables: ModelTables, keys: Vec<u64>) -> Result<Pulled, ClientError> {
    let w = client.pull(&tables.linear, &keys);
    match &tables.embedding {
        None => {
            let w = w.await?;
            Ok(Pulled { w: w.values, v: Vec::new(), clock_w: w.clock, clock_v: Clock::default() })
        }
        Some(emb) => {
            let (w, v) = tokio::try_join!(w, client.pull(emb, &keys))?;
            Ok(Pulled { w: w.values, v: v.values, clock_w: w.clock, clock_v: v.clock })
        }
    }
}

fn payload_bytes(keys: usize, tables: &ModelTables) -> u64 {
    let k = if tables.embedding.is_some() { tables.model.k } else { 0 };
    let tables_count = 1 + usize::from(tables.embedding.is_some());
    (keys * 8 * tables_count + keys * (1 + k) * 4) as u64
}

/// Trains on batches from `queue` until it closes.
pub async fn train(
    client: PsClient,
    tables: ModelTables,
    queue: BatchQueue,
    progress: Arc<Progress>,
) -> Result<WorkerStats, TrainError> {
    let mut stats = WorkerStats::default();
    let next_batch = || async { queue.lock().await.recv().await };
    let start = |examples: Vec<Example>| {
        let batch = IndexedBatch::new(&examples);
        let pull = tokio::spawn(pull_rows(client.clone(), tables.clone(), batch.keys.clone()));
        (batch, pull)
    };
    let mut pending: Option<(IndexedBatch, JoinHandle<Result<Pulled, ClientError>>)> = next_batch().await.map(start);
    let mut push_in_flight: Option<JoinHandle<Result<(), ClientError>>> = None;
    while let Some((batch, pull)) = pending.take() {
        // Start the next batch's pull before computing this one.
        pending = next_batch().await.map(start);
        let rows = pull.await.map_err(|e| TrainError::Task(e.to_string()))??;
        stats.bytes_pulled += payload_bytes(batch.keys.len(), &tables);
        let model = tables.model;
        let (batch, probs, grads, rows) = tokio::task::spawn_blocking(move || {
            let (probs, grads) = model.train_batch(&batch, &rows.w, &rows.v);
            (batch, probs, grads, rows)
        })
        .await
        .map_err(|e| TrainError::Task(e.to_string()))?;
        let loss = ember_core::eval::logloss(&probs, &batch.labels) * batch.len() as f64;
        progress.loss_micros.fetch_add((loss * 1e6) as u64, Ordering::Relaxed);
        progress.examples.fetch_add(batch.len() as u64, Ordering::Relaxed);
        stats.examples += batch.len() as u64;
        stats.batches += 1;
        stats.progressive_probs.extend_from_slice(&probs);
        stats.progressive_labels.extend_from_slice(&batch.labels);
        stats.bytes_pushed += payload_bytes(batch.keys.len(), &tables);
        if let Some(previous) = push_in_flight.take() {
            previous.await.map_err(|e| TrainError::Task(e.to_string()))??;
        }
        let (client, tables) = (client.clone(), tables.clone());
        push_in_flight = Some(tokio::spawn(async move {
            let w = client.push(&tables.linear, &batch.keys, &grads.w, &rows.clock_w);
            match &tables.embedding {
                None => w.await.map(|_| ()),
                Some(emb) => tokio::try_join!(w, client.push(emb, &batch.keys, &grads.v, &rows.clock_v)).map(|_| ()),
            }
        }));
    }
    if let Some(last) = push_in_flight {
        last.await.map_err(|e| TrainError::Task(e.to_string()))??;
    }
    Ok(stats)
}

/// Predicts `examples` with read-only lookups (nothing is created on the servers).
pub async fn predict(client: &PsClient, tables: &ModelTables, examples: &[Example]) -> Result<Vec<f32>, TrainError> {
    let batch = IndexedBatch::new(examples);
    let w = client.lookup(&tables.linear, &batch.keys).await?;
    let v = match &tables.embedding {
        Some(emb) => client.lookup(emb, &batch.keys).await?.values,
        None => Vec::new(),
    };
    Ok(tables.model.predict(&batch, &w.values, &v))
}
