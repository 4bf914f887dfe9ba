//! One worker's training loop and batch prediction, against ps-servers through `PsClient`.
//!
//! Pipeline: batches arrive already parsed (a reader thread parses ahead). With pull-ahead
//! (`async` only) the rows of batch t+1 are pulled while batch t computes, and a batch's
//! gradients are pushed without waiting, with at most one push in flight (the next push waits for
//! the previous, which bounds memory and staleness). The pull of batch t+1 starts once the push
//! of batch t-1 has landed (it waits in its own task, so the loop does not), which keeps a lone
//! worker's staleness at most 1. At 2, DeepFM's embeddings made its Criteo-slice test AUC swing
//! from 0.54 to 0.76 between runs (docs/benchmarks.md, "Bounded pull-ahead"). Each batch is
//! predicted before it is trained on (progressive validation).
//!
//! Without pull-ahead (every other mode) a worker pulls a batch's rows only after its
//! previous push has landed, so it never computes on parameters older than its own last step; a
//! worker with an [`SspClock`] also waits for the clock to allow the step, so the bound holds
//! exactly. Every push's staleness, as the servers measured it, goes into the stats.
//!
//! The tables are [`ModelTables`]'s. Dense parameters are pulled with every batch and their
//! gradients pushed with its sparse ones.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tracing::Instrument;

use ember_client::{ClientError, Clock, PsClient};
use ember_core::codec::Compression;
use ember_core::eval::{auc, logloss};
use ember_core::job::CompressionSpec;
use ember_core::sync::StalenessHistogram;
use tokio::sync::{mpsc, oneshot, Mutex};
use tokio::task::JoinHandle;

use ember_model::tables::SparseLayout;
pub use ember_model::tables::{Model, ModelTables, TableToCreate};

use crate::compress::Residuals;
use crate::model::{Grads, IndexedBatch, Layer};
use crate::ssp::SspClock;

/// Why training stopped.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A ps-server call failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The dense compute failed, or a compute task panicked (a bug).
    #[error("compute failed: {0}")]
    Compute(String),
    /// The servers returned dense tables of unexpected sizes.
    #[error("dense table {name} has {got} values, the model needs {want}")]
    DenseShape {
        /// Table.
        name: String,
        /// Values received.
        got: usize,
        /// Values expected.
        want: usize,
    },
}

/// Progress of one stretch of training, shared with whoever follows it: examples trained and
/// progressive validation cut into windows of about `window_rows` rows (the job's curve points).
#[derive(Debug, Default)]
pub struct Progress {
    /// Examples trained.
    pub examples: AtomicU64,
    window_rows: usize,
    windows: std::sync::Mutex<Windows>,
}

#[derive(Debug, Default)]
struct Windows {
    probs: Vec<f32>,
    labels: Vec<f32>,
    done: Vec<Window>,
}

/// A window of progressive validation: rows predicted before they were trained on.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// Rows in the window.
    pub rows: u64,
    /// Their summed logloss.
    pub loss_sum: f64,
    /// Their AUC (NaN with one class).
    pub auc: f64,
    /// When its last batch was trained, Unix ms.
    pub end_unix_ms: u64,
}

impl Windows {
    fn cut(&mut self) {
        if self.probs.is_empty() {
            return;
        }
        let end_unix_ms = ember_core::unix_ms();
        self.done.push(Window {
            rows: self.probs.len() as u64,
            loss_sum: logloss(&self.probs, &self.labels) * self.probs.len() as f64,
            auc: auc(&self.probs, &self.labels),
            end_unix_ms,
        });
        self.probs.clear();
        self.labels.clear();
    }
}

impl Progress {
    /// Progress that cuts windows of `window_rows` rows (0: one window per stretch).
    pub fn with_windows(window_rows: u64) -> Self {
        Self { window_rows: usize::try_from(window_rows).unwrap_or(usize::MAX), ..Default::default() }
    }

    fn record(&self, probs: &[f32], labels: &[f32]) {
        self.examples.fetch_add(probs.len() as u64, Ordering::Relaxed);
        if let Ok(mut w) = self.windows.lock() {
            w.probs.extend_from_slice(probs);
            w.labels.extend_from_slice(labels);
            if self.window_rows > 0 && w.probs.len() >= self.window_rows {
                w.cut();
            }
        }
    }

    /// The windows so far, the partial last one included; the next window starts empty. A
    /// partial window under half the size joins the one before it (its logloss exactly, its AUC
    /// weighted by rows): an item's last few rows alone would make a noisy curve point.
    pub fn take_windows(&self) -> Vec<Window> {
        self.windows
            .lock()
            .map(|mut w| {
                let short = !w.probs.is_empty() && w.probs.len() * 2 < self.window_rows;
                w.cut();
                let mut done = std::mem::take(&mut w.done);
                if short && done.len() >= 2 {
                    if let Some(last) = done.pop() {
                        if let Some(prev) = done.last_mut() {
                            let rows = prev.rows + last.rows;
                            if last.auc.is_finite() {
                                prev.auc = (prev.auc * prev.rows as f64 + last.auc * last.rows as f64) / rows as f64;
                            }
                            prev.rows = rows;
                            prev.loss_sum += last.loss_sum;
                            prev.end_unix_ms = last.end_unix_ms;
                        }
                    }
                }
                done
            })
            .unwrap_or_default()
    }
}

/// What one worker did.
#[derive(Debug, Clone, Default)]
pub struct WorkerStats {
    /// Examples trained.
    pub examples: u64,
    /// Key and value bytes received by pulls.
    pub bytes_pulled: u64,
    /// Key and gradient bytes sent by pushes.
    pub bytes_pushed: u64,
    /// Gradient bytes of sparse pushes as sent (after compression).
    pub sparse_bytes_pushed: u64,
    /// Gradient bytes of dense pushes as sent (after compression).
    pub dense_bytes_pushed: u64,
    /// Gradient bytes as sent, per table.
    pub bytes_pushed_by_table: std::collections::BTreeMap<String, u64>,
    /// Progressive validation: each example's prediction before it was trained on.
    pub progressive_probs: Vec<f32>,
    /// Labels matching `progressive_probs`.
    pub progressive_labels: Vec<f32>,
    /// Staleness of every push (per server part and per dense table), as the servers measured.
    pub staleness: StalenessHistogram,
    /// Seconds this worker spent in its SSP clock after its steps (waiting for slower workers,
    /// or, at bound 0, for the clock server's answer).
    pub clock_wait_seconds: f64,
}

impl WorkerStats {
    fn add_pushed(&mut self, pushed: Pushed) {
        self.sparse_bytes_pushed += pushed.sparse_bytes;
        self.dense_bytes_pushed += pushed.dense_bytes;
        for (table, bytes) in pushed.by_table {
            *self.bytes_pushed_by_table.entry(table).or_default() += bytes;
        }
        for tau in pushed.staleness {
            self.staleness.record(tau);
        }
    }
}

/// How a worker trains besides the model: gradient codecs and, under SSP, its clock.
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// Codecs of sparse and dense gradients.
    pub compression: CompressionSpec,
    /// The worker's SSP clock (`ssp` and `sync` modes).
    pub ssp: Option<Arc<SspClock>>,
    /// Pull the next batch's rows while this one computes ([`SyncSpec::pull_ahead`]); ignored
    /// under an SSP clock, whose bound must hold exactly.
    ///
    /// [`SyncSpec::pull_ahead`]: ember_core::sync::SyncSpec::pull_ahead
    pub pull_ahead: bool,
}

/// A queue of parsed batches shared by the workers of one process.
///
/// Batches are indexed by the producer (a reader thread), off the training loop's critical path.
pub type BatchQueue = Arc<Mutex<mpsc::Receiver<IndexedBatch>>>;

struct Pulled {
    w: Vec<f32>,
    v: Vec<f32>,
    dense: Vec<Layer>,
    /// The versions the sparse rows were read at.
    clock: Clock,
    dense_versions: Vec<u64>,
}

/// The one sparse table a worker trains, as [`ModelTables::for_job`] lays it out: rows
/// `[w, v_1..v_k]` (k = 0 for LR). Separate linear and embedding tables only exist in model
/// versions published before joined rows, which are served, never trained.
fn trained_table(tables: &ModelTables) -> Result<&str, TrainError> {
    match tables.layout() {
        SparseLayout::Linear(t) | SparseLayout::Joined(t) => Ok(t),
        SparseLayout::Separate { linear, embedding } => Err(TrainError::Compute(format!(
            "separate tables {linear} and {embedding}: workers train joined rows only"
        ))),
    }
}

fn to_layers(tables: &ModelTables, pulled: Vec<(Vec<f32>, u64)>) -> Result<(Vec<Layer>, Vec<u64>), TrainError> {
    let (values, versions): (Vec<Vec<f32>>, Vec<u64>) = pulled.into_iter().unzip();
    let layers = tables.dense_layers(values).map_err(|(name, got, want)| TrainError::DenseShape { name, got, want })?;
    Ok((layers, versions))
}

async fn pull_rows(
    client: PsClient,
    tables: ModelTables,
    keys: Vec<u64>,
    read_only: bool,
) -> Result<Pulled, TrainError> {
    let table = trained_table(&tables)?;
    let sparse = async {
        if read_only {
            client.lookup(table, &keys).await
        } else {
            client.pull(table, &keys).await
        }
    };
    let names = tables.dense_names();
    let dense = async {
        if names.is_empty() {
            Ok(Vec::new())
        } else {
            client.pull_dense(&names).await
        }
    };
    let (rows, dense) = tokio::try_join!(sparse, dense)?;
    let (dense, dense_versions) = to_layers(&tables, dense)?;
    let (w, v) = tables.split_rows(rows.values);
    Ok(Pulled { w, v, dense, clock: rows.clock, dense_versions })
}

fn payload_bytes(keys: usize, tables: &ModelTables) -> u64 {
    (keys * 8 + keys * tables.row_width() * 4 + tables.model.dense_values() * 4) as u64
}

/// Forward and backward of one batch: probabilities, sparse gradients, dense gradients.
fn compute(model: &Model, batch: &IndexedBatch, rows: &Pulled) -> Result<(Vec<f32>, Grads, Vec<Layer>), TrainError> {
    model.train_batch(batch, &rows.w, &rows.v, &rows.dense).map_err(TrainError::Compute)
}

/// What one batch's push sent, and the staleness the servers measured.
#[derive(Debug, Default)]
struct Pushed {
    sparse_bytes: u64,
    dense_bytes: u64,
    staleness: Vec<u64>,
    by_table: Vec<(String, u64)>,
}

#[allow(clippy::too_many_arguments)]
async fn push_grads(
    client: PsClient,
    tables: ModelTables,
    keys: Vec<u64>,
    grads: Grads,
    dense: Vec<Layer>,
    rows: Pulled,
    compression: CompressionSpec,
    residuals: Arc<std::sync::Mutex<Residuals>>,
) -> Result<Pushed, TrainError> {
    let (sparse_codec, dense_codec) = (compression.sparse, compression.dense);
    // Pushes are serialized (one in flight per worker), so taking the residuals out and putting
    // them back afterwards cannot race with another push of this worker.
    let (mut rs, mut rd) = match residuals.lock() {
        Ok(mut r) => {
            let rs = if sparse_codec == Compression::None { Vec::new() } else { r.sparse.gather(&keys) };
            (rs, std::mem::take(&mut r.dense))
        }
        Err(_) => Default::default(),
    };
    let table = trained_table(&tables)?;
    let row_grads = tables.joined_grads(&grads);
    let sparse = client.push_encoded(table, &keys, &row_grads, &rows.clock, sparse_codec, &mut rs);
    let names = tables.dense_names();
    let d = async {
        let parts: Vec<(&str, &[f32], u64)> = dense
            .iter()
            .flat_map(|l| [&l.w[..], &l.b[..]])
            .zip(&names)
            .zip(&rows.dense_versions)
            .map(|((g, n), v)| (*n, g, *v))
            .collect();
        if parts.is_empty() {
            return Ok((Vec::new(), 0));
        }
        if dense_codec != Compression::None && rd.len() != parts.len() {
            rd = parts.iter().map(|p| vec![0f32; p.1.len()]).collect();
        }
        client.push_dense_encoded(&parts, dense_codec, &mut rd).await
    };
    let ((sparse, sparse_bytes), (d, d_bytes)) = tokio::try_join!(sparse, d)?;
    if let Ok(mut r) = residuals.lock() {
        if sparse_codec != Compression::None {
            r.sparse.scatter(&keys, &rs);
        }
        r.dense = rd;
    }
    let staleness = sparse.staleness.into_iter().chain(d.iter().map(|p| p.staleness)).collect();
    let mut by_table = vec![(table.to_string(), sparse_bytes)];
    let dense_parts = dense.iter().flat_map(|l| [l.w.len(), l.b.len()]);
    for (name, len) in names.iter().zip(dense_parts) {
        by_table.push((name.to_string(), ember_core::codec::encoded_len(dense_codec, len) as u64));
    }
    Ok(Pushed { sparse_bytes, dense_bytes: d_bytes, staleness, by_table })
}

/// Trains on batches from `queue` until it closes, pushing gradients encoded as `options` says
/// and, with an SSP clock, stepping in bounded lockstep with the other workers.
pub async fn train(
    client: PsClient,
    tables: ModelTables,
    queue: BatchQueue,
    progress: Arc<Progress>,
    options: TrainOptions,
) -> Result<WorkerStats, TrainError> {
    let TrainOptions { compression, ssp, pull_ahead } = options;
    let pull_ahead = pull_ahead && ssp.is_none();
    let mut stats = WorkerStats::default();
    let residuals = Arc::new(std::sync::Mutex::new(Residuals::new(tables.row_width())));
    let next_batch = || async { queue.lock().await.recv().await };
    // `after` resolves when the push this pull must see has landed (or failed: the loop reports
    // that failure when it awaits the push itself).
    let start = |batch: IndexedBatch, after: Option<oneshot::Receiver<()>>| {
        // A trace per pull and per push (sampled at the root): the servers' spans are its children.
        let pull = pull_rows(client.clone(), tables.clone(), batch.keys.clone(), false)
            .instrument(ember_proto::trace::client_span("pull"));
        let pull = tokio::spawn(async move {
            if let Some(landed) = after {
                let _ = landed.await;
            }
            pull.await
        });
        (batch, pull)
    };
    let mut pending: Option<(IndexedBatch, JoinHandle<Result<Pulled, TrainError>>)> =
        next_batch().await.map(|b| start(b, None));
    let mut push_in_flight: Option<JoinHandle<Result<Pushed, TrainError>>> = None;
    let mut push_landed: Option<oneshot::Receiver<()>> = None;
    let task_err = |e: tokio::task::JoinError| TrainError::Compute(e.to_string());
    while let Some((batch, pull)) = pending.take() {
        // Start the next batch's pull before computing this one; otherwise the next pull must see
        // this step's push (and, under SSP, wait for the clock).
        if pull_ahead {
            let after = push_landed.take();
            pending = next_batch().await.map(|b| start(b, after));
        }
        let rows = pull.await.map_err(task_err)??;
        stats.bytes_pulled += payload_bytes(batch.keys.len(), &tables);
        let model = tables.model.clone();
        let (batch, rows, result) = tokio::task::spawn_blocking(move || {
            let result = compute(&model, &batch, &rows);
            (batch, rows, result)
        })
        .await
        .map_err(task_err)?;
        let (probs, grads, dense) = result?;
        progress.record(&probs, &batch.labels);
        stats.examples += batch.len() as u64;
        stats.progressive_probs.extend_from_slice(&probs);
        stats.progressive_labels.extend_from_slice(&batch.labels);
        stats.bytes_pushed += payload_bytes(batch.keys.len(), &tables);
        if let Some(previous) = push_in_flight.take() {
            stats.add_pushed(previous.await.map_err(task_err)??);
        }
        let residuals = Arc::clone(&residuals);
        let push = push_grads(client.clone(), tables.clone(), batch.keys, grads, dense, rows, compression, residuals)
            .instrument(ember_proto::trace::client_span("push"));
        if pull_ahead {
            let (landed, wait) = oneshot::channel();
            push_landed = Some(wait);
            push_in_flight = Some(tokio::spawn(async move {
                let pushed = push.await;
                let _ = landed.send(());
                pushed
            }));
        } else {
            stats.add_pushed(push.await?);
            if let Some(clock) = &ssp {
                let waited = std::time::Instant::now();
                clock.step_done().await?;
                stats.clock_wait_seconds += waited.elapsed().as_secs_f64();
            }
            pending = next_batch().await.map(|b| start(b, None));
        }
    }
    if let Some(last) = push_in_flight {
        stats.add_pushed(last.await.map_err(task_err)??);
    }
    Ok(stats)
}

/// Predicts a batch with read-only lookups (nothing is created on the servers).
pub async fn predict(client: &PsClient, tables: &ModelTables, batch: IndexedBatch) -> Result<Vec<f32>, TrainError> {
    let rows = pull_rows(client.clone(), tables.clone(), batch.keys.clone(), true).await?;
    let model = tables.model.clone();
    tokio::task::spawn_blocking(move || {
        model.predict(&batch, &rows.w, &rows.v, &rows.dense).map_err(TrainError::Compute)
    })
    .await
    .map_err(|e| TrainError::Compute(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Windows are cut at the window size; an item's short tail joins the window before it,
    /// a long one stands alone, and nothing is lost either way.
    #[test]
    fn progress_cuts_windows_and_folds_a_short_tail_into_the_last() {
        let batch = |n: usize| (vec![0.25f32; n], (0..n).map(|i| (i % 2) as f32).collect::<Vec<f32>>());
        for (tail, want) in [(10usize, vec![100u64, 110]), (60, vec![100, 100, 60]), (0, vec![100, 100])] {
            let p = Progress::with_windows(100);
            for n in [50, 50, 50, 50] {
                let (probs, labels) = batch(n);
                p.record(&probs, &labels);
            }
            if tail > 0 {
                let (probs, labels) = batch(tail);
                p.record(&probs, &labels);
            }
            let windows = p.take_windows();
            assert_eq!(windows.iter().map(|w| w.rows).collect::<Vec<_>>(), want, "tail {tail}");
            let loss: f64 = windows.iter().map(|w| w.loss_sum).sum();
            let rows = (200 + tail) as f64;
            assert!((loss / rows - logloss(&[0.25, 0.25], &[0.0, 1.0])).abs() < 1e-6, "tail {tail}: {loss}");
            assert_eq!(p.examples.load(Ordering::Relaxed), 200 + tail as u64);
            assert!(p.take_windows().is_empty(), "taken");
        }
    }
}
