//! The Ember scheduler: membership, the shard map, jobs and data assignment.
//!
//! Layout:
//! - [`state`]: every decision, in plain Rust with the clock passed in (unit-tested without a
//!   network or sleeps).
//! - [`plan`]: splitting a job's files into line-aligned byte ranges.
//! - `actions`: what decisions set off outside the state (checkpoints, versions) and the
//!   listings of follow sources.
//! - [`publish`]: a model version from the dense tables the ps-servers hold, into a model dir.
//! - [`report`]: a job's figures from the workers' reports, and the JSON report built from them.
//! - [`service`]: the `ember.v1.Scheduler` gRPC adapter (decode, lock, call, map the error).
//!
//! The state sits behind one mutex: every operation is short and nothing awaits under it.
//! Planning (file scans) runs before the lock is taken, and a persister task writes the state's
//! snapshots off the lock, at most every [`PERSIST_EVERY`].

mod actions;
pub mod plan;
pub mod publish;
pub mod report;
mod rollback;
pub mod service;
pub mod state;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ember_proto::v1::scheduler_server::SchedulerServer;
use parking_lot::Mutex;
use tonic::transport::server::TcpIncoming;

pub use service::SchedulerService;
pub use state::{SchedulerError, State};

/// How a scheduler runs.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Where jobs are persisted.
    pub state_dir: PathBuf,
    /// Members that do not heartbeat within this are forgotten.
    pub lease: Duration,
    /// Where job data may be read from.
    pub data_roots: ember_model::DataRoots,
    /// TLS and role tokens of the scheduler's port.
    pub security: ember_proto::tls::ServerSecurity,
    /// What the scheduler shows ps-servers (an admin token in a cluster with tokens).
    pub credentials: ember_client::Credentials,
}

/// Opens the state under the config's state dir and serves it on `listener` until `shutdown`
/// resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: SchedulerConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let lease = config.lease;
    let mut builder = config.security.server_builder()?;
    let state = State::open(&config.state_dir, lease, 1024)?.with_data_roots(config.data_roots);
    let state = Arc::new(Mutex::new(state));
    let reaper = {
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(lease / 4);
            loop {
                tick.tick().await;
                state.lock().expire(Instant::now());
            }
        })
    };
    let persister = tokio::spawn(persist_every(Arc::clone(&state), PERSIST_EVERY));
    let follower = tokio::spawn(actions::follow_sources(Arc::clone(&state), config.credentials.clone()));
    let (health, health_service) = tonic_health_reporter().await;
    let service = SchedulerService::new(Arc::clone(&state), config.credentials);
    let result = builder
        .add_service(health_service)
        .add_service(SchedulerServer::new(service).max_decoding_message_size(256 << 20))
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), shutdown)
        .await;
    drop(health);
    reaper.abort();
    persister.abort();
    follower.abort();
    // What the last interval changed.
    let last = state.lock().snapshot();
    if let Some(snapshot) = last {
        tokio::task::spawn_blocking(move || snapshot.write()).await??;
    }
    result.map_err(Into::into)
}

/// How often the persister writes a changed state.
pub const PERSIST_EVERY: Duration = Duration::from_millis(200);

/// Writes the state's snapshot whenever it changed, at most every `every`, off the lock.
async fn persist_every(state: Arc<Mutex<State>>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let snapshot = state.lock().snapshot();
        if let Some(snapshot) = snapshot {
            match tokio::task::spawn_blocking(move || snapshot.write()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "persisting the scheduler state; trying again");
                    state.lock().mark_dirty();
                }
                Err(e) => tracing::error!(error = %e, "persisting task"),
            }
        }
    }
}

async fn tonic_health_reporter() -> (
    tonic_health::server::HealthReporter,
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter.set_serving::<SchedulerServer<SchedulerService>>().await;
    (reporter, service)
}
