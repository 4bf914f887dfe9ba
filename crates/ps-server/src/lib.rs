//! The parameter server: a thin gRPC adapter over [`ember_store::Store`].
//!
//! Layout:
//! - [`service`]: the `ember.v1.ParameterServer` handlers: decode, call the store off the async
//!   runtime, map the error, record metrics. No logic of their own.
//! - [`deltas`]: the `SubscribeDeltas` stream of changed rows that read-only replicas follow.
//! - [`clocks`]: SSP clocks of workers' groups, for the `WorkerClock` rpc.
//! - [`gauges`]: per-table gauges from a stats snapshot.
//! - [`error`]: the one place store and conversion errors become gRPC status codes.
//! - [`serve`]: runs the service plus `grpc.health.v1` on a listener until a shutdown future
//!   resolves, then drains in-flight requests.
//! - [`run`]: a standalone server's whole life (store, restore, serve, register, checkpoint
//!   timer, final checkpoint): what `ember ps` calls.
//!
//! Metrics (names are the contract with dashboards, see docs/operations.md):
//! `ember_ps_requests_total{method,code}`, `ember_ps_keys_total{method}`,
//! `ember_ps_request_duration_seconds{method}`, `ember_ps_table_rows{table}`,
//! `ember_ps_table_bytes{table}`, `ember_ps_rejected_nonfinite_total{table}`,
//! `ember_ps_push_staleness{table}`, `ember_ps_checkpoints_total{kind,outcome}`,
//! `ember_ps_checkpoint_seconds{kind}`, `ember_ps_checkpoint_bytes{kind}`,
//! `ember_ps_feature_policy_rows{table,what}` (admitted, filtered, dropped, evicted),
//! `ember_ps_tier{table,what}` (hot and cold rows, hits, promotions, demotions),
//! `ember_ps_hot_bytes`, `ember_ps_dram_budget_bytes`, `ember_ps_cold_tier_memory_bytes{what}`
//! (RocksDB's index and filter blocks and write buffers: DRAM outside the budget),
//! `ember_ps_delta_subscribers`, `ember_ps_delta_rows_total{kind}` (changed, deleted, snapshot),
//! `ember_ps_cold_tier_backlog{what}` (RocksDB's running flushes and compactions, L0 files,
//! write throttling).

pub mod chain;
pub mod clocks;
pub mod deltas;
pub mod error;
pub mod gauges;
mod requests;
pub mod rollback;
pub mod run;
pub mod service;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ember_proto::http2;
use ember_proto::tls::ServerSecurity;
use ember_proto::v1::parameter_server_server::ParameterServerServer;
use ember_store::{Checkpointer, Store};
use tonic::transport::server::TcpIncoming;

pub use error::status_of;
pub use run::{run, PsConfig, RunError, Started};
pub use service::PsService;

/// Tunables of a ps-server, and where it writes checkpoints.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Largest request or response message, in bytes.
    pub max_message_bytes: usize,
    /// How often table gauges (rows, bytes) are refreshed.
    pub gauge_interval: Duration,
    /// Checkpoint writer (`None`: the server has no data dir and refuses `Checkpoint`).
    pub checkpoints: Option<Arc<Checkpointer>>,
    /// How often tables' eviction rules run (they also run before every checkpoint).
    pub evict_interval: Duration,
    /// TLS and role tokens (both off by default).
    pub security: ServerSecurity,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: 64 << 20,
            gauge_interval: Duration::from_secs(5),
            checkpoints: None,
            evict_interval: Duration::from_secs(60),
            security: ServerSecurity::default(),
        }
    }
}

/// Serves `store` on `listener` until `shutdown` resolves, then stops accepting and lets in-flight
/// requests finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    store: Arc<Store>,
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let builder = config.security.server_builder()?;
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<ParameterServerServer<PsService>>().await;
    let service =
        ParameterServerServer::new(PsService::new(Arc::clone(&store)).with_checkpoints(config.checkpoints.clone()))
            .max_decoding_message_size(config.max_message_bytes)
            .max_encoding_message_size(config.max_message_bytes);
    let gauges = tokio::spawn(refresh_gauges(Arc::clone(&store), config.gauge_interval));
    let maintenance = tokio::spawn(maintain(Arc::clone(&store), config.evict_interval));
    let budget = store.dram_budget().map(|_| spawn_budget_keeper(Arc::clone(&store)));
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let result = builder
        .initial_stream_window_size(http2::STREAM_WINDOW)
        .initial_connection_window_size(http2::CONNECTION_WINDOW)
        .max_frame_size(http2::MAX_FRAME)
        .add_service(health_service)
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    gauges.abort();
    maintenance.abort();
    if let Some((stop, thread)) = budget {
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = thread.join();
    }
    result
}

/// A thread that demotes rows whenever the hot tier is over the DRAM budget. A plain thread, not
/// a blocking task: it runs for the server's life and does disk writes.
fn spawn_budget_keeper(store: Arc<Store>) -> (Arc<std::sync::atomic::AtomicBool>, std::thread::JoinHandle<()>) {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = Arc::clone(&stop);
    let thread = std::thread::Builder::new()
        .name("ember-tier".into())
        .spawn(move || {
            if let Some(budget) = store.dram_budget() {
                metrics::gauge!("ember_ps_dram_budget_bytes").set(budget as f64);
            }
            let mut last_memory_report = std::time::Instant::now();
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                match store.enforce_budget() {
                    Ok(0) => std::thread::sleep(Duration::from_millis(20)),
                    Ok(demoted) => tracing::debug!(demoted, "demoted rows to the cold tier"),
                    Err(e) => {
                        tracing::error!(error = %e, "demotion failed; retrying in 1 s");
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
                metrics::gauge!("ember_ps_hot_bytes").set(store.hot_bytes() as f64);
                if last_memory_report.elapsed() >= Duration::from_secs(1) {
                    last_memory_report = std::time::Instant::now();
                    if let Ok((readers, memtables)) = store.cold_tier_memory() {
                        metrics::gauge!("ember_ps_cold_tier_memory_bytes", "what" => "table_readers")
                            .set(readers as f64);
                        metrics::gauge!("ember_ps_cold_tier_memory_bytes", "what" => "write_buffers")
                            .set(memtables as f64);
                    }
                    if let Ok(backlog) = store.cold_tier_backlog() {
                        for (what, v) in [
                            ("running", backlog.running),
                            ("l0_files", backlog.l0_files),
                            ("writes_throttled", u64::from(backlog.writes_throttled)),
                        ] {
                            metrics::gauge!("ember_ps_cold_tier_backlog", "what" => what).set(v as f64);
                        }
                    }
                }
            }
        })
        .expect("spawning a thread at server start");
    (stop, thread)
}

/// Keeps the store's clock on the wall clock (row TTLs in seconds read it) and runs eviction.
async fn maintain(store: Arc<Store>, evict_every: Duration) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_evict = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        store.tick();
        if last_evict.elapsed() >= evict_every {
            last_evict = tokio::time::Instant::now();
            let store = Arc::clone(&store);
            // Eviction scans every row: off the async workers, one shard lock at a time.
            match tokio::task::spawn_blocking(move || store.evict()).await {
                Ok(Ok(0)) => {}
                Ok(Ok(evicted)) => tracing::info!(evicted, "evicted rows"),
                Ok(Err(e)) => tracing::error!(error = %e, "eviction failed; retried at the next interval"),
                Err(e) => tracing::error!(error = %e, "eviction task failed"),
            }
        }
    }
}

async fn refresh_gauges(store: Arc<Store>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let store = Arc::clone(&store);
        // Stats take every shard lock briefly: keep that off the async workers.
        if let Ok(stats) = tokio::task::spawn_blocking(move || store.stats()).await {
            gauges::record_table_gauges(&stats);
        }
    }
}
