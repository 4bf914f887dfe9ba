//! The scheduler client, and [`Membership`]: register once, then heartbeat in the background,
//! registering again if the scheduler forgot us (lease expired, or the scheduler restarted).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::{ClientError, Credentials, ShardMap, Transport};
use ember_proto::v1::{self, scheduler_client};

/// A typed client of the scheduler.
#[derive(Debug, Clone)]
pub struct SchedulerClient {
    inner: scheduler_client::SchedulerClient<Transport>,
    endpoint: String,
    credentials: Credentials,
}

impl SchedulerClient {
    /// Connects to the scheduler at `endpoint` (`host:port` or a URI) with `credentials`.
    pub async fn connect(endpoint: &str, credentials: &Credentials) -> Result<Self, ClientError> {
        let channel = credentials.channel(endpoint).await?;
        // Reports carry every hold-out prediction (8 bytes a row): 4 MiB, tonic's default, was
        // 520k rows, and `ember train --test-predictions` failed past it.
        let inner = scheduler_client::SchedulerClient::new(channel)
            .max_encoding_message_size(256 << 20)
            .max_decoding_message_size(256 << 20);
        Ok(Self { inner, endpoint: endpoint.to_string(), credentials: credentials.clone() })
    }

    /// The credentials this client calls with (a worker reaches the ps-servers with them too).
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    fn err(&self) -> impl Fn(tonic::Status) -> ClientError + '_ {
        move |status| ClientError::Rpc { endpoint: self.endpoint.clone(), status }
    }

    /// Registers; returns (member id, lease).
    pub async fn register(&self, role: v1::Role, address: &str) -> Result<(String, Duration), ClientError> {
        let req = v1::RegisterRequest { role: role as i32, address: address.to_string() };
        let r = self.inner.clone().register(req).await.map_err(self.err())?.into_inner();
        Ok((r.member_id, Duration::from_millis(r.lease_ms.max(100))))
    }

    /// Renews a lease; returns the shard map version.
    pub async fn heartbeat(&self, member_id: &str) -> Result<u64, ClientError> {
        let req = v1::HeartbeatRequest { member_id: member_id.to_string() };
        Ok(self.inner.clone().heartbeat(req).await.map_err(self.err())?.into_inner().shard_map_version)
    }

    /// The current shard map and its version.
    pub async fn shard_map(&self) -> Result<(u64, ShardMap), ClientError> {
        let r = self.inner.clone().get_shard_map(v1::GetShardMapRequest {}).await.map_err(self.err())?.into_inner();
        let map = ShardMap::from_parts(r.endpoints, r.owners).ok_or_else(|| ClientError::Protocol {
            endpoint: self.endpoint.clone(),
            reason: "shard map with an owner outside its endpoints".into(),
        })?;
        Ok((r.version, map))
    }

    /// Submits a job file's text; returns the job id.
    pub async fn submit(&self, job_toml: String) -> Result<String, ClientError> {
        let r = self.inner.clone().submit_job(v1::SubmitJobRequest { job_toml }).await.map_err(self.err())?;
        Ok(r.into_inner().job_id)
    }

    /// One job's status, or every job's.
    pub async fn status(&self, job_id: Option<&str>) -> Result<Vec<v1::JobInfo>, ClientError> {
        let req = v1::JobStatusRequest { job_id: job_id.unwrap_or_default().to_string() };
        Ok(self.inner.clone().job_status(req).await.map_err(self.err())?.into_inner().jobs)
    }

    /// Stops a follow job: it takes no new file, trains what it found and ends.
    pub async fn stop(&self, job_id: &str) -> Result<(), ClientError> {
        let req = v1::StopJobRequest { job_id: job_id.to_string() };
        self.inner.clone().stop_job(req).await.map_err(self.err())?;
        Ok(())
    }

    /// Rolls a follow job back (see the `Rollback` RPC).
    pub async fn rollback(&self, req: v1::RollbackRequest) -> Result<v1::RollbackResponse, ClientError> {
        Ok(self.inner.clone().rollback(req).await.map_err(self.err())?.into_inner())
    }

    /// The next work item for `member_id`, if one is ready.
    pub async fn next_work(&self, member_id: &str) -> Result<Option<v1::WorkItem>, ClientError> {
        let req = v1::NextWorkRequest { member_id: member_id.to_string() };
        Ok(self.inner.clone().next_work(req).await.map_err(self.err())?.into_inner().item)
    }

    /// Reports a finished work item.
    pub async fn report(&self, report: v1::ReportWorkRequest) -> Result<(), ClientError> {
        self.inner.clone().report_work(report).await.map_err(self.err())?;
        Ok(())
    }

    /// A job's report (JSON text) and, when asked for, its hold-out predictions and labels in
    /// data order.
    pub async fn report_of(
        &self,
        job_id: &str,
        with_test_predictions: bool,
    ) -> Result<(String, Vec<f32>, Vec<f32>), ClientError> {
        let req = v1::JobReportRequest { job_id: job_id.to_string(), with_test_predictions };
        let r = self.inner.clone().job_report(req).await.map_err(self.err())?.into_inner();
        let f32s = |bytes: &[u8]| {
            ember_core::codec::f32s_from_le(bytes).ok_or_else(|| ClientError::Protocol {
                endpoint: self.endpoint.clone(),
                reason: "test predictions are not whole f32s".into(),
            })
        };
        Ok((r.json.clone(), f32s(&r.test_predictions)?, f32s(&r.test_labels)?))
    }

    /// Has the scheduler checkpoint every ps-server now, recorded with `job_id` if not empty.
    pub async fn checkpoint(&self, full: bool, job_id: &str) -> Result<v1::ClusterCheckpoint, ClientError> {
        let request = v1::ClusterCheckpointRequest { full, job_id: job_id.to_string() };
        let reply = self.inner.clone().checkpoint(request).await.map_err(self.err())?.into_inner();
        reply.checkpoint.ok_or_else(|| ClientError::Protocol {
            endpoint: self.endpoint.clone(),
            reason: "empty checkpoint reply".into(),
        })
    }
}

/// A registration kept alive by a background heartbeat task.
#[derive(Debug)]
pub struct Membership {
    id: Arc<Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Membership {
    /// Registers as `role` at `address` and starts heartbeating every third of the lease.
    pub async fn join(client: SchedulerClient, role: v1::Role, address: String) -> Result<Self, ClientError> {
        let (first, lease) = client.register(role, &address).await?;
        let id = Arc::new(Mutex::new(first));
        let shared = Arc::clone(&id);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(lease / 3);
            loop {
                tick.tick().await;
                let current = shared.lock().map(|g| g.clone()).unwrap_or_default();
                match client.heartbeat(&current).await {
                    Ok(_) => {}
                    Err(e) if e.code() == Some(tonic::Code::NotFound) => match client.register(role, &address).await {
                        Ok((new_id, _)) => {
                            tracing::warn!(old = %current, new = %new_id, "scheduler forgot this member; registered again");
                            if let Ok(mut g) = shared.lock() {
                                *g = new_id;
                            }
                        }
                        Err(e) => tracing::warn!(%e, "re-registering failed; will retry"),
                    },
                    Err(e) => tracing::warn!(%e, "heartbeat failed; will retry"),
                }
            }
        });
        Ok(Self { id, task })
    }

    /// The current member id (it changes if the member had to register again).
    pub fn id(&self) -> String {
        self.id.lock().map(|g| g.clone()).unwrap_or_default()
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.task.abort();
    }
}
