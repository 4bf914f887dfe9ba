//! `ember.v1.ParameterServer` handlers: decode, call the store, map the error, record metrics.
//!
//! Store calls run under `spawn_blocking`: a 4096-key push is a few hundred microseconds of CPU,
//! long enough to stall other connections if it ran on an async worker thread.

use std::sync::Arc;
use std::time::Instant;

use ember_core::TableSpec;
use ember_proto::v1::parameter_server_server::ParameterServer;
use ember_proto::v1::{self, DenseValues};
use ember_proto::{f32s_to_bytes, ConvertError};
use ember_store::{CheckpointKind, Checkpointer, DensePush, Store, StoreError};
use metrics::{counter, gauge, histogram};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::clocks::ClockBoard;
use crate::error::status_of;
use crate::gauges::record_table_gauges;
use crate::requests::{check_tables, encoding_of, pull_reply, push_reply};
use ember_core::Refusal;

/// The service over one store.
#[derive(Debug, Clone)]
pub struct PsService {
    store: Arc<Store>,
    checkpoints: Option<Arc<Checkpointer>>,
    clocks: Arc<ClockBoard>,
}

/// Longest a `WorkerClock` call waits before answering (the worker asks again).
const MAX_CLOCK_WAIT_MS: u32 = 10_000;

/// Rows per `Export` message: 16k rows of dim 16 is 1 MiB of values.
const EXPORT_CHUNK_ROWS: usize = 16_384;

impl PsService {
    /// A service answering from `store`, without checkpoints.
    pub fn new(store: Arc<Store>) -> Self {
        Self { store, checkpoints: None, clocks: Arc::default() }
    }

    /// Lets `Checkpoint` write through `checkpoints`.
    pub fn with_checkpoints(mut self, checkpoints: Option<Arc<Checkpointer>>) -> Self {
        self.checkpoints = checkpoints;
        self
    }

    /// Runs `f` on the blocking pool and maps its error.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, Status> {
        self.blocking_in("store", f).await
    }

    /// [`Self::blocking`] inside a trace span `name` (child of the request's span; `apply` for
    /// pushes).
    async fn blocking_in<T: Send + 'static>(
        &self,
        name: &'static str,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, Status> {
        let store = Arc::clone(&self.store);
        let span = ember_proto::trace::span(name);
        match tokio::task::spawn_blocking(move || span.in_scope(|| f(&store))).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => {
                if let StoreError::NonFinite { table, .. } = &err {
                    counter!("ember_ps_rejected_nonfinite_total", "table" => table.clone()).increment(1);
                }
                Err(status_of(&err))
            }
            Err(join) => Err(status_of(&Refusal::internal(format!("store task failed: {join}")))),
        }
    }
}

/// The metrics label of a refusal, from the one vocabulary.
fn code_label(status: &Status) -> &'static str {
    ember_proto::error::code_of(status).label()
}

/// Records the request's metrics and wraps the reply.
fn observe<T>(
    method: &'static str,
    keys: usize,
    started: Instant,
    result: Result<T, Status>,
) -> Result<Response<T>, Status> {
    let code = result.as_ref().map_or_else(code_label, |_| "ok");
    counter!("ember_ps_requests_total", "method" => method, "code" => code).increment(1);
    counter!("ember_ps_keys_total", "method" => method).increment(keys as u64);
    histogram!("ember_ps_request_duration_seconds", "method" => method).record(started.elapsed().as_secs_f64());
    result.map(Response::new)
}

#[tonic::async_trait]
impl ParameterServer for PsService {
    async fn create_table(
        &self,
        req: Request<v1::CreateTableRequest>,
    ) -> Result<Response<v1::CreateTableResponse>, Status> {
        let started = Instant::now();
        let req = req.into_inner();
        let spec: Result<TableSpec, Status> =
            req.spec.ok_or(ConvertError::Missing("spec")).and_then(TableSpec::try_from).map_err(|e| status_of(&e));
        let result = match spec {
            Ok(spec) => {
                let initial = req.initial_values;
                self.blocking(move |s| s.create_table(spec, Some(&initial))).await
            }
            Err(status) => Err(status),
        };
        observe("create_table", 0, started, result.map(|created| v1::CreateTableResponse { created }))
    }

    async fn list_tables(
        &self,
        _req: Request<v1::ListTablesRequest>,
    ) -> Result<Response<v1::ListTablesResponse>, Status> {
        let tables = self.store.list_tables().into_iter().map(Into::into).collect();
        observe("list_tables", 0, Instant::now(), Ok(v1::ListTablesResponse { tables }))
    }

    async fn drop_table(&self, req: Request<v1::DropTableRequest>) -> Result<Response<v1::DropTableResponse>, Status> {
        let started = Instant::now();
        let name = req.into_inner().table;
        let result = self.blocking(move |s| s.drop_table(&name)).await;
        observe("drop_table", 0, started, result.map(|()| v1::DropTableResponse {}))
    }

    async fn pull(&self, req: Request<v1::PullRequest>) -> Result<Response<v1::PullResponse>, Status> {
        let started = Instant::now();
        let req = req.into_inner();
        let keys = req.keys.len();
        let result = self.blocking(move |s| s.pull(&req.table, &req.keys)).await.map(pull_reply);
        observe("pull", keys, started, result)
    }

    async fn lookup(&self, req: Request<v1::LookupRequest>) -> Result<Response<v1::LookupResponse>, Status> {
        let started = Instant::now();
        let req = req.into_inner();
        let keys = req.keys.len();
        let result = self.blocking(move |s| s.lookup(&req.table, &req.keys)).await.map(|rows| v1::LookupResponse {
            dim: rows.dim,
            values: f32s_to_bytes(rows.values),
            version: rows.version,
            missing: rows.missing,
        });
        observe("lookup", keys, started, result)
    }

    async fn push(&self, req: Request<v1::PushRequest>) -> Result<Response<v1::PushResponse>, Status> {
        let started = Instant::now();
        let req = req.into_inner();
        let keys = req.keys.len();
        let (table, gradient_version) = (req.table.clone(), req.version);
        let encoding = encoding_of(req.encoding)?;
        let result = self
            .blocking_in("apply", move |s| {
                s.push_versioned(&req.table, &req.keys, encoding, &req.gradients, Some(gradient_version))
            })
            .await
            .map(|out| push_reply(&table, out));
        observe("push", keys, started, result)
    }

    async fn pull_tables(
        &self,
        req: Request<v1::PullTablesRequest>,
    ) -> Result<Response<v1::PullTablesResponse>, Status> {
        let started = Instant::now();
        let req = req.into_inner();
        if req.tables.is_empty() {
            return observe("pull_tables", 0, started, Err(status_of(&Refusal::invalid("no tables to pull"))));
        }
        let max_keys = self.store.config().max_batch_keys;
        if let Err(status) = check_tables(req.tables.iter().map(String::as_str), req.keys.len(), max_keys) {
            return observe("pull_tables", 0, started, Err(status));
        }
        let keys = req.keys.len() * req.tables.len();
        let result = self
            .blocking(move |s| {
                req.tables
                    .iter()
                    .map(|table| s.pull(table, &req.keys).map(pull_reply))
                    .collect::<Result<Vec<_>, StoreError>>()
            })
            .await;
        observe("pull_tables", keys, started, result.map(|tables| v1::PullTablesResponse { tables }))
    }

    async fn push_tables(
        &self,
        req: Request<v1::PushTablesRequest>,
    ) -> Result<Response<v1::PushTablesResponse>, Status> {
        let started = Instant::now();
        let req = req.into_inner();
        if req.tables.is_empty() {
            return observe("push_tables", 0, started, Err(status_of(&Refusal::invalid("no tables to push"))));
        }
        let max_keys = self.store.config().max_batch_keys;
        if let Err(status) = check_tables(req.tables.iter().map(|t| t.table.as_str()), req.keys.len(), max_keys) {
            return observe("push_tables", 0, started, Err(status));
        }
        let keys = req.keys.len() * req.tables.len();
        let encodings = req.tables.iter().map(|t| encoding_of(t.encoding)).collect::<Result<Vec<_>, _>>();
        let encodings = match encodings {
            Ok(e) => e,
            Err(status) => return observe("push_tables", keys, started, Err(status)),
        };
        let result = self
            .blocking_in("apply", move |s| {
                req.tables
                    .iter()
                    .zip(encodings)
                    .map(|(t, encoding)| {
                        let out = s.push_versioned(&t.table, &req.keys, encoding, &t.gradients, Some(t.version))?;
                        Ok(push_reply(&t.table, out))
                    })
                    .collect::<Result<Vec<_>, StoreError>>()
            })
            .await;
        observe("push_tables", keys, started, result.map(|tables| v1::PushTablesResponse { tables }))
    }

    async fn pull_dense(&self, req: Request<v1::PullDenseRequest>) -> Result<Response<v1::PullDenseResponse>, Status> {
        let started = Instant::now();
        let names = req.into_inner().names;
        if let Err(status) = check_tables(names.iter().map(String::as_str), 0, 0) {
            return observe("pull_dense", 0, started, Err(status));
        }
        let result = self
            .blocking(move |s| {
                names
                    .into_iter()
                    .map(|name| {
                        let (values, version) = s.pull_dense(&name)?;
                        Ok(DenseValues { name, values: f32s_to_bytes(values), version })
                    })
                    .collect::<Result<Vec<_>, StoreError>>()
            })
            .await;
        observe("pull_dense", 0, started, result.map(|tables| v1::PullDenseResponse { tables }))
    }

    async fn push_dense(&self, req: Request<v1::PushDenseRequest>) -> Result<Response<v1::PushDenseResponse>, Status> {
        let started = Instant::now();
        let grads = req.into_inner().gradients;
        if let Err(status) = check_tables(grads.iter().map(|g| g.name.as_str()), 0, 0) {
            return observe("push_dense", 0, started, Err(status));
        }
        let encodings = grads.iter().map(|g| encoding_of(g.encoding)).collect::<Result<Vec<_>, Status>>()?;
        let result = self
            .blocking_in("apply", move |s| {
                let parts: Vec<DensePush> = grads
                    .iter()
                    .zip(encodings)
                    .map(|(g, encoding)| DensePush {
                        name: &g.name,
                        encoding,
                        bytes: &g.gradients,
                        version: Some(g.version),
                    })
                    .collect();
                let outcomes = s.push_dense_versioned(&parts)?;
                for (part, out) in parts.iter().zip(&outcomes) {
                    histogram!("ember_ps_push_staleness", "table" => part.name.to_string())
                        .record(out.staleness as f64);
                    if out.rows_rejected > 0 {
                        counter!("ember_ps_rejected_nonfinite_total", "table" => part.name.to_string()).increment(1);
                    }
                }
                Ok(outcomes)
            })
            .await
            .map(|outcomes| v1::PushDenseResponse {
                versions: outcomes.iter().map(|o| o.version).collect(),
                staleness: outcomes.iter().map(|o| o.staleness).collect(),
            });
        observe("push_dense", 0, started, result)
    }

    async fn flush_pending(
        &self,
        _req: Request<v1::FlushPendingRequest>,
    ) -> Result<Response<v1::FlushPendingResponse>, Status> {
        let started = Instant::now();
        let result = self.blocking(|s| s.flush_pending()).await;
        observe("flush_pending", 0, started, result.map(|tables| v1::FlushPendingResponse { tables }))
    }

    async fn worker_clock(
        &self,
        req: Request<v1::WorkerClockRequest>,
    ) -> Result<Response<v1::WorkerClockResponse>, Status> {
        let req = req.into_inner();
        let view = self
            .clocks
            .update(&req.group, &req.worker, req.clock, req.leave, Instant::now())
            .map_err(|e| status_of(&Refusal::invalid(e.0)))?;
        let view = if req.wait_for > 0 && view.min_clock < req.wait_for {
            let timeout = std::time::Duration::from_millis(u64::from(req.wait_ms.min(MAX_CLOCK_WAIT_MS)));
            self.clocks.wait(&req.group, req.wait_for, timeout).await
        } else {
            view
        };
        Ok(Response::new(v1::WorkerClockResponse { min_clock: view.min_clock, workers: view.workers }))
    }

    async fn delete_keys(
        &self,
        req: Request<v1::DeleteKeysRequest>,
    ) -> Result<Response<v1::DeleteKeysResponse>, Status> {
        let started = Instant::now();
        let req = req.into_inner();
        let keys = req.keys.len();
        let result = self.blocking(move |s| s.delete_keys(&req.table, &req.keys)).await;
        observe("delete_keys", keys, started, result.map(|deleted| v1::DeleteKeysResponse { deleted }))
    }

    async fn restore(&self, req: Request<v1::RestoreRequest>) -> Result<Response<v1::RestoreResponse>, Status> {
        let id = req.into_inner().id;
        crate::rollback::restore(self.checkpoints.clone(), Arc::clone(&self.store), id).await.map(Response::new)
    }

    async fn checkpoint(
        &self,
        req: Request<v1::CheckpointRequest>,
    ) -> Result<Response<v1::CheckpointResponse>, Status> {
        let Some(checkpoints) = self.checkpoints.clone() else {
            return Err(status_of(&Refusal::precondition(
                "this ps-server runs without --data-dir: it cannot checkpoint",
            )));
        };
        let req = req.into_inner();
        let kind = if req.full { CheckpointKind::Full } else { CheckpointKind::Incremental };
        let store = Arc::clone(&self.store);
        let span = ember_proto::trace::span("checkpoint");
        let result = tokio::task::spawn_blocking(move || span.in_scope(|| checkpoints.write(&store, kind, req.label)))
            .await
            .map_err(|e| status_of(&Refusal::internal(format!("checkpoint task failed: {e}"))))?;
        match result {
            Ok(info) => {
                let kind = info.kind.as_str();
                counter!("ember_ps_checkpoints_total", "kind" => kind, "outcome" => "ok").increment(1);
                histogram!("ember_ps_checkpoint_seconds", "kind" => kind).record(info.seconds);
                gauge!("ember_ps_checkpoint_bytes", "kind" => kind).set(info.bytes as f64);
                tracing::info!(
                    id = info.id,
                    kind,
                    rows = info.rows,
                    bytes = info.bytes,
                    seconds = info.seconds,
                    "checkpoint written"
                );
                Ok(Response::new(crate::rollback::checkpoint_reply(&info)))
            }
            Err(e) => {
                counter!("ember_ps_checkpoints_total", "kind" => kind.as_str(), "outcome" => "error").increment(1);
                tracing::error!(error = %e, "checkpoint failed; the previous one is still usable");
                Err(status_of(&e))
            }
        }
    }

    type ExportStream = ReceiverStream<Result<v1::ExportChunk, Status>>;

    async fn export(&self, req: Request<v1::ExportRequest>) -> Result<Response<Self::ExportStream>, Status> {
        let table = self.store.sparse(&req.into_inner().table).map_err(|e| status_of(&e))?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            // Cold records first, then DRAM rows: for a key in both, the DRAM row comes last
            // (the client keeps the last). Each chunk is sent after its shard lock is released.
            let dim = table.dim() as u32;
            let scanned = table.snapshot(&|_| true, EXPORT_CHUNK_ROWS, &mut |rows| {
                let chunk = v1::ExportChunk { dim, keys: rows.keys, values: f32s_to_bytes(rows.values) };
                tx.blocking_send(Ok(chunk)).is_ok()
            });
            if let Err(e) = scanned {
                let _ = tx.blocking_send(Err(status_of(&e)));
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type ReadCheckpointsStream = ReceiverStream<Result<v1::DeltaBatch, Status>>;

    async fn read_checkpoints(
        &self,
        req: Request<v1::ReadCheckpointsRequest>,
    ) -> Result<Response<Self::ReadCheckpointsStream>, Status> {
        crate::chain::read(self.checkpoints.clone(), req.into_inner()).map(Response::new)
    }

    type SubscribeDeltasStream = ReceiverStream<Result<v1::DeltaBatch, Status>>;

    async fn subscribe_deltas(
        &self,
        req: Request<v1::SubscribeDeltasRequest>,
    ) -> Result<Response<Self::SubscribeDeltasStream>, Status> {
        let subscription = crate::deltas::Subscription::new(req.into_inner(), &self.store)?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(crate::deltas::run(Arc::clone(&self.store), subscription, tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn cut_deltas(&self, _req: Request<v1::CutDeltasRequest>) -> Result<Response<v1::CutDeltasResponse>, Status> {
        let clock = self.store.deltas();
        Ok(Response::new(v1::CutDeltasResponse { stream_id: clock.stream_id(), seq: clock.cut() }))
    }

    async fn stats(&self, _req: Request<v1::StatsRequest>) -> Result<Response<v1::StatsResponse>, Status> {
        let started = Instant::now();
        let result = self.blocking(|s| Ok((s.stats(), s.config().max_batch_keys))).await.map(|(stats, max)| {
            record_table_gauges(&stats);
            let tables = stats
                .into_iter()
                .map(|t| v1::TableStats {
                    spec: Some(t.spec.into()),
                    rows: t.counters.rows,
                    version: t.counters.version,
                    bytes: t.counters.bytes,
                    row_updates: t.counters.row_updates,
                    rejected_nonfinite: t.counters.rejected_nonfinite,
                    admitted: t.counters.admitted,
                    filtered: t.counters.filtered,
                    dropped: t.counters.dropped,
                    evicted: t.counters.evicted,
                    hot_rows: t.counters.rows,
                    cold_rows: t.counters.tier.cold_rows,
                    hot_hits: t.counters.tier.hot_hits,
                    cold_hits: t.counters.tier.cold_hits,
                    promoted: t.counters.tier.promoted,
                    demoted: t.counters.tier.demoted,
                })
                .collect();
            v1::StatsResponse { tables, max_batch_keys: max as u64 }
        });
        observe("stats", 0, started, result)
    }
}
