//! The `ember.v1.Replica` gRPC service: decode, call [`Replica`], map the error. Health reports
//! SERVING once the replica is ready (every training server's stream followed to its head once).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ember_core::HasCode;
use ember_proto::v1::replica_server::{Replica as ReplicaRpc, ReplicaServer};
use ember_proto::{f32s_to_bytes, v1};
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use crate::{Replica, ReplicaConfig, ReplicaError};

/// Most keys in one lookup.
pub const MAX_KEYS: usize = 1 << 20;

/// The gRPC adapter over a [`Replica`].
#[derive(Debug)]
pub struct ReplicaService {
    replica: Arc<Replica>,
}

impl ReplicaService {
    /// Serves `replica`.
    pub fn new(replica: Arc<Replica>) -> Self {
        Self { replica }
    }
}

#[tonic::async_trait]
impl ReplicaRpc for ReplicaService {
    async fn lookup(&self, req: Request<v1::ReplicaLookupRequest>) -> Result<Response<v1::LookupResponse>, Status> {
        let started = Instant::now();
        let req = req.into_inner();
        let result = if req.keys.len() > MAX_KEYS {
            Err(ReplicaError::InvalidArgument(format!("{} keys in one lookup; at most {MAX_KEYS}", req.keys.len())))
        } else {
            self.replica.lookup(&req.table, &req.keys, req.version)
        };
        let code = match &result {
            Ok(_) => "ok",
            Err(e) => e.code().label(),
        };
        metrics::counter!("ember_replica_lookups_total", "code" => code).increment(1);
        metrics::histogram!("ember_replica_lookup_seconds").record(started.elapsed().as_secs_f64());
        let rows = result.map_err(|e| e.status())?;
        Ok(Response::new(v1::LookupResponse {
            dim: rows.dim as u32,
            values: f32s_to_bytes(rows.values),
            version: 0,
            missing: rows.missing,
        }))
    }

    async fn status(
        &self,
        _req: Request<v1::ReplicaStatusRequest>,
    ) -> Result<Response<v1::ReplicaStatusResponse>, Status> {
        let r = &self.replica;
        let sources = r
            .sources()
            .iter()
            .map(|s| {
                let p = s.progress();
                v1::ReplicaSource {
                    endpoint: s.endpoint.clone(),
                    stream_id: p.stream_id,
                    watermark: p.watermark,
                    connected: p.connected,
                    rounds: p.rounds,
                }
            })
            .collect();
        let mut tables: Vec<v1::ReplicaTableStatus> = Vec::new();
        for source in r.sources() {
            for (name, held) in source.tables() {
                let view = held.table.view();
                let at = match tables.iter().position(|t| t.name == name) {
                    Some(i) => i,
                    None => {
                        tables.push(v1::ReplicaTableStatus {
                            name,
                            dim: held.table.dim() as u32,
                            ..Default::default()
                        });
                        tables.len() - 1
                    }
                };
                tables[at].segment_rows += view.segment_rows() as u64;
                tables[at].overlay_rows += view.overlay_rows() as u64;
            }
        }
        Ok(Response::new(v1::ReplicaStatusResponse {
            num_slots: r.num_slots(),
            slots: r.slots().to_vec(),
            map_version: r.map_version(),
            ready: r.ready(),
            sources,
            tables,
            versions: r.versions(),
        }))
    }
}

/// Serves `ember.v1.Replica` and `grpc.health.v1` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    replica: Arc<Replica>,
    config: &ReplicaConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ReplicaError> {
    let mut builder = config.security.server_builder()?;
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_not_serving::<ReplicaServer<ReplicaService>>().await;
    let watched = Arc::clone(&replica);
    let health_task = tokio::spawn(async move {
        while !watched.ready() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::info!("caught up with every training server; serving lookups");
        health.set_serving::<ReplicaServer<ReplicaService>>().await;
    });
    let service = ReplicaServer::new(ReplicaService::new(replica))
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);
    let result = builder
        .add_service(health_service)
        .add_service(service)
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), shutdown)
        .await;
    health_task.abort();
    Ok(result?)
}
