//! `ember.v1.Scheduler` handlers: decode, call [`State`] under its lock, map the error.

use std::sync::Arc;
use std::time::Instant;

use ember_client::Credentials;
use ember_core::Refusal;
use ember_model::ModelTables;
use ember_proto::auth;
use ember_proto::v1::{self, scheduler_server::Scheduler};
use parking_lot::Mutex;
use tonic::{Request, Response, Status};

use crate::actions;
use crate::plan::Phase;
use crate::report::{ItemStats, TableReport, Window};
use crate::state::{unix_ms, CheckpointRecord, ItemReport, JobState, Role, SchedulerError, State};

/// The service over the shared state.
#[derive(Clone)]
pub struct SchedulerService {
    state: Arc<Mutex<State>>,
    /// What the scheduler shows ps-servers when it checks, checkpoints and publishes from them.
    credentials: Credentials,
}

impl SchedulerService {
    /// A service over `state`, calling ps-servers with `credentials`.
    pub fn new(state: Arc<Mutex<State>>, credentials: Credentials) -> Self {
        Self { state, credentials }
    }
}

/// How long a registering ps-server has to answer a health check before it is refused.
const REGISTER_CHECK: std::time::Duration = std::time::Duration::from_secs(5);

/// Checks a ps-server's address before it enters the shard map: `host:port` that answers a
/// health check for the parameter-server service. A fake or mistyped registration used to
/// stay in the map and fail every later job.
async fn check_ps_address(address: &str, credentials: &Credentials) -> Result<(), Status> {
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| refuse(Refusal::invalid(format!("ps address {address:?} is not host:port"))))?;
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || b".-_[]:".contains(&b));
    if !host_ok || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(refuse(Refusal::invalid(format!("ps address {address:?} is not host:port"))));
    }
    ember_client::health::is_serving(address, credentials, "ember.v1.ParameterServer", REGISTER_CHECK).await.map_err(
        |e| refuse(Refusal::precondition(format!("ps address {address:?} does not answer as a ps-server: {e}"))),
    )
}

/// A scheduler error's status, through the one vocabulary (`SchedulerError: HasCode`).
pub fn status_of(err: &(impl ember_core::HasCode + ?Sized)) -> Status {
    ember_proto::error::status(err)
}

/// The status of a refusal the service makes itself.
fn refuse(refusal: Refusal) -> Status {
    status_of(&refusal)
}

fn f32s(bytes: &[u8], what: &str) -> Result<Vec<f32>, Status> {
    ember_core::codec::f32s_from_le(bytes)
        .ok_or_else(|| refuse(Refusal::invalid(format!("{what}: {} bytes is not a whole number of f32", bytes.len()))))
}

fn checkpoint_info(r: &CheckpointRecord) -> v1::ClusterCheckpoint {
    v1::ClusterCheckpoint {
        label: r.label,
        full: r.full,
        ids: r.ids.clone(),
        unix_ms: r.unix_ms,
        error: r.error.clone().unwrap_or_default(),
    }
}

/// A worker's figures for an item, as the state keeps them.
fn item_stats(s: v1::TrainStats) -> ItemStats {
    ItemStats {
        bytes_pulled: s.bytes_pulled,
        bytes_pushed: s.bytes_pushed,
        sparse_bytes_pushed: s.sparse_bytes_pushed,
        dense_bytes_pushed: s.dense_bytes_pushed,
        bytes_pushed_by_table: s.bytes_pushed_by_table.into_iter().collect(),
        staleness: ember_core::sync::StalenessHistogram {
            counts: s.staleness_counts,
            sum: s.staleness_sum,
            max: s.staleness_max,
        },
        clock_wait_seconds: s.clock_wait_seconds,
        windows: s
            .windows
            .into_iter()
            .map(|w| Window { rows: w.rows, loss_sum: w.loss_sum, auc: w.auc, end_unix_ms: w.end_unix_ms })
            .collect(),
    }
}

/// Per-table figures from every ps-server's `Stats`, summed by table (sparse tables of `job_id`
/// only; a table is named by its job, so one job's report never counts another's rows).
async fn table_reports(
    state: &Mutex<State>,
    credentials: &Credentials,
    job_id: &str,
) -> Result<Vec<TableReport>, String> {
    let (_, endpoints, owners) = state.lock().shard_map();
    let Some(map) = ember_client::ShardMap::from_parts(endpoints, owners) else { return Ok(Vec::new()) };
    let client = ember_client::PsClient::connect(map, credentials).await.map_err(|e| e.to_string())?;
    let mut tables: std::collections::BTreeMap<String, TableReport> = Default::default();
    for server in client.stats().await.map_err(|e| e.to_string())? {
        for t in server.tables {
            let Some(spec) = t.spec else { continue };
            if spec.kind != v1::TableKind::Sparse as i32 || !ModelTables::belongs_to(&spec.name, job_id) {
                continue;
            }
            let r = tables
                .entry(spec.name.clone())
                .or_insert_with(|| TableReport { name: spec.name, ..Default::default() });
            r.rows += t.rows;
            r.bytes += t.bytes;
            r.admitted += t.admitted;
            r.filtered += t.filtered;
            r.dropped += t.dropped;
            r.evicted += t.evicted;
        }
    }
    Ok(tables.into_values().collect())
}

fn job_state(s: JobState) -> v1::JobState {
    match s {
        JobState::Training => v1::JobState::Training,
        JobState::Evaluating => v1::JobState::Evaluating,
        JobState::Succeeded => v1::JobState::Succeeded,
        JobState::Failed => v1::JobState::Failed,
    }
}

#[tonic::async_trait]
impl Scheduler for SchedulerService {
    async fn register(&self, req: Request<v1::RegisterRequest>) -> Result<Response<v1::RegisterResponse>, Status> {
        let caller = auth::role_of(&req);
        let req = req.into_inner();
        let role = match v1::Role::try_from(req.role) {
            Ok(v1::Role::Ps) => Role::Ps,
            Ok(v1::Role::Worker) => Role::Worker,
            _ => return Err(refuse(Refusal::invalid(format!("role {} is not ps or worker", req.role)))),
        };
        if req.address.len() > 512 {
            return Err(refuse(Refusal::invalid("an address or name is at most 512 bytes")));
        }
        if role == Role::Ps {
            // A ps-server enters the map every job routes by: admins only, and only one that
            // answers at the address it gives.
            if caller != auth::Role::Admin {
                return Err(refuse(Refusal::denied(format!(
                    "role {} may not register a ps-server (admin only)",
                    caller.as_str()
                ))));
            }
            check_ps_address(&req.address, &self.credentials).await?;
        }
        let mut state = self.state.lock();
        let member_id = state.register(role, req.address, Instant::now());
        tracing::info!(%member_id, "registered");
        Ok(Response::new(v1::RegisterResponse { member_id, lease_ms: state.lease().as_millis() as u64 }))
    }

    async fn heartbeat(&self, req: Request<v1::HeartbeatRequest>) -> Result<Response<v1::HeartbeatResponse>, Status> {
        let version =
            self.state.lock().heartbeat(&req.into_inner().member_id, Instant::now()).map_err(|e| status_of(&e))?;
        Ok(Response::new(v1::HeartbeatResponse { shard_map_version: version }))
    }

    async fn get_shard_map(
        &self,
        _req: Request<v1::GetShardMapRequest>,
    ) -> Result<Response<v1::ShardMapResponse>, Status> {
        let (version, endpoints, owners) = self.state.lock().shard_map();
        if endpoints.is_empty() {
            return Err(status_of(&SchedulerError::NoPs));
        }
        Ok(Response::new(v1::ShardMapResponse { version, endpoints, owners }))
    }

    async fn submit_job(&self, req: Request<v1::SubmitJobRequest>) -> Result<Response<v1::SubmitJobResponse>, Status> {
        let toml = req.into_inner().job_toml;
        let state = Arc::clone(&self.state);
        // Planning reads the data files: off the async workers, and without the lock, so
        // heartbeats and reports go on while a large job is planned.
        let roots = self.state.lock().data_roots().clone();
        let job_id = tokio::task::spawn_blocking(move || {
            let planned = crate::state::plan_job(toml, &roots)?;
            let (id, snapshot) = {
                let mut state = state.lock();
                let id = state.add_job(planned, Instant::now())?;
                (id, state.force_snapshot())
            };
            // Durable before it is answered, written without the lock.
            if let Err(e) = snapshot.write() {
                // Refused, so not run either.
                state.lock().withdraw(&id);
                return Err(e);
            }
            Ok(id)
        })
        .await
        .map_err(|e| refuse(Refusal::internal(e.to_string())))?
        .map_err(|e| status_of(&e))?;
        tracing::info!(%job_id, "job submitted");
        Ok(Response::new(v1::SubmitJobResponse { job_id }))
    }

    async fn job_status(&self, req: Request<v1::JobStatusRequest>) -> Result<Response<v1::JobStatusResponse>, Status> {
        let id = req.into_inner().job_id;
        let now_ms = unix_ms();
        let state = self.state.lock();
        let jobs = state.jobs((!id.is_empty()).then_some(id.as_str())).map_err(|e| status_of(&e))?;
        let jobs = jobs
            .into_iter()
            .map(|j| {
                let (done, total) = j.items_progress();
                let lag = if j.stream.is_some() { j.lag(now_ms) } else { (0, 0.0) };
                v1::JobInfo {
                    job_id: j.id.clone(),
                    name: j.name.clone(),
                    state: job_state(j.state) as i32,
                    items_total: total,
                    items_done: done,
                    rows_trained: j.rows_trained,
                    bad_lines: j.bad_lines,
                    progressive_logloss: j.progressive_logloss(),
                    test_auc: j.test_auc.unwrap_or(f64::NAN),
                    test_logloss: j.test_logloss.unwrap_or(f64::NAN),
                    test_rows: j.test_rows(),
                    error: j.error.clone().unwrap_or_default(),
                    elapsed_seconds: j.elapsed_seconds,
                    checkpoints: j.checkpoints.iter().map(checkpoint_info).collect(),
                    published: j
                        .published
                        .iter()
                        .map(|(version, rows_trained)| v1::PublishedVersion {
                            version: *version,
                            rows_trained: *rows_trained,
                        })
                        .collect(),
                    rows_to_train: j.rows_to_train,
                    recent_auc: j.stats.curve.last().map_or(f64::NAN, |p| p.window_auc),
                    recent_logloss: j.stats.curve.last().map_or(f64::NAN, |p| p.window_logloss),
                    recent_examples_per_sec: j.stats.curve.last().map_or(0.0, |p| p.examples_per_sec),
                    follow: j.stream.is_some(),
                    files_found: j.stream.as_ref().map_or(0, |s| s.files_found),
                    rows_found: j.stream.as_ref().map_or(0, |s| s.rows_found),
                    lag_rows: lag.0,
                    lag_seconds: lag.1,
                    stopping: j.stream.as_ref().is_some_and(|s| s.stopping),
                    held: j
                        .held
                        .iter()
                        .map(|h| v1::HeldVersion {
                            version: h.version,
                            rows_trained: h.rows_trained,
                            reason: h.reason.clone(),
                            unix_ms: h.unix_ms,
                        })
                        .collect(),
                }
            })
            .collect();
        Ok(Response::new(v1::JobStatusResponse { jobs }))
    }

    async fn next_work(&self, req: Request<v1::NextWorkRequest>) -> Result<Response<v1::NextWorkResponse>, Status> {
        let member = req.into_inner().member_id;
        let assignment = self.state.lock().next_work(&member, Instant::now()).map_err(|e| status_of(&e))?;
        let item = assignment.map(|a| v1::WorkItem {
            job_id: a.job_id,
            item_id: a.item_id,
            job_toml: a.job_toml,
            phase: match a.range.phase {
                Phase::Train => v1::WorkPhase::Train,
                Phase::Test => v1::WorkPhase::Test,
            } as i32,
            path: a.range.path.display().to_string(),
            start: a.range.start,
            end: a.range.end,
            first_line: a.range.first_line,
            window_rows: a.window_rows,
            line_range: a.range.lines,
        });
        Ok(Response::new(v1::NextWorkResponse { item }))
    }

    async fn report_work(
        &self,
        req: Request<v1::ReportWorkRequest>,
    ) -> Result<Response<v1::ReportWorkResponse>, Status> {
        let r = req.into_inner();
        let (probs, labels) = (f32s(&r.predictions, "predictions")?, f32s(&r.labels, "labels")?);
        if probs.len() != labels.len() {
            return Err(refuse(Refusal::invalid(format!("{} predictions for {} labels", probs.len(), labels.len()))));
        }
        let report = ItemReport {
            rows: r.rows,
            bad_lines: r.bad_lines,
            bad_line_samples: r.bad_line_samples,
            loss_sum: r.loss_sum,
            probs,
            labels,
            error: (!r.error.is_empty()).then_some(r.error),
            stats: r.stats.map(item_stats).unwrap_or_default(),
        };
        let due = self
            .state
            .lock()
            .report(&r.member_id, &r.job_id, r.item_id, report, Instant::now())
            .map_err(|e| status_of(&e))?;
        actions::act(&self.state, &self.credentials, &r.job_id, due);
        Ok(Response::new(v1::ReportWorkResponse {}))
    }

    async fn job_report(&self, req: Request<v1::JobReportRequest>) -> Result<Response<v1::JobReportResponse>, Status> {
        let req = req.into_inner();
        let (mut report, (probs, labels)) = {
            let state = self.state.lock();
            let job = state.jobs(Some(&req.job_id)).map_err(|e| status_of(&e))?[0];
            let ps = state.shard_map().1.len() as u32;
            let predictions = if req.with_test_predictions { job.test_predictions() } else { Default::default() };
            (job.report(ps, unix_ms()), predictions)
        };
        // The servers' figures when the report is asked for; a server that does not answer
        // leaves them out rather than failing the report.
        match table_reports(&self.state, &self.credentials, &req.job_id).await {
            Ok(tables) => report.tables = tables,
            Err(e) => tracing::warn!(error = %e, "table figures for a report"),
        }
        let json = serde_json::to_string(&report).map_err(|e| refuse(Refusal::internal(e.to_string())))?;
        Ok(Response::new(v1::JobReportResponse {
            json,
            test_predictions: bytemuck::cast_slice(&probs).to_vec().into(),
            test_labels: bytemuck::cast_slice(&labels).to_vec().into(),
        }))
    }

    async fn stop_job(&self, req: Request<v1::StopJobRequest>) -> Result<Response<v1::StopJobResponse>, Status> {
        let job_id = req.into_inner().job_id;
        let due = self.state.lock().stop_job(&job_id).map_err(|e| status_of(&e))?;
        tracing::info!(%job_id, "job stopping: no new file is taken");
        actions::act(&self.state, &self.credentials, &job_id, due);
        Ok(Response::new(v1::StopJobResponse {}))
    }

    async fn rollback(&self, req: Request<v1::RollbackRequest>) -> Result<Response<v1::RollbackResponse>, Status> {
        let r = crate::rollback::rollback(&self.state, &self.credentials, req.into_inner())
            .await
            .map_err(|e| status_of(&e))?;
        Ok(Response::new(v1::RollbackResponse {
            label: r.label,
            from_rows: r.from_rows,
            requeued: r.requeued,
            skipped_rows: r.skipped_rows,
            version: r.version.unwrap_or(0),
        }))
    }

    async fn checkpoint(
        &self,
        req: Request<v1::ClusterCheckpointRequest>,
    ) -> Result<Response<v1::ClusterCheckpointResponse>, Status> {
        let req = req.into_inner();
        let (label, position) = if req.job_id.is_empty() {
            (0, None)
        } else {
            self.state.lock().checkpoint_point(&req.job_id).map_err(|e| status_of(&e))?
        };
        let mut record = actions::checkpoint_cluster(&self.state, &self.credentials, req.full, label).await;
        record.position = position;
        if !req.job_id.is_empty() {
            self.state.lock().record_checkpoint(&req.job_id, record.clone()).map_err(|e| status_of(&e))?;
        }
        if let Some(error) = &record.error {
            return Err(refuse(Refusal::unavailable(format!("checkpoint failed: {error}"))));
        }
        Ok(Response::new(v1::ClusterCheckpointResponse { checkpoint: Some(checkpoint_info(&record)) }))
    }
}
