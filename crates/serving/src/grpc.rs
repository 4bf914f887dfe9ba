//! The `ember.v1.Serving` gRPC service: decode, pick the model, call its predictor, map the error.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ember_model::features::Feature;
use ember_proto::v1::serving_server::{Serving as ServingRpc, ServingServer};
use ember_proto::v1::{self};
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use crate::predictor::{ModelStatus, SampleIn};
use crate::Models;
use crate::ServingConfig;

/// The gRPC adapter over a node's [`Models`].
pub struct ServingService {
    models: Arc<Models>,
}

/// A wire sample as the predictor's.
pub fn sample_of(s: v1::Sample) -> SampleIn {
    SampleIn {
        fields: s.fields.into_iter().collect(),
        row: s.row,
        hashed: s.hashed.into_iter().map(|h| Feature { field: h.field, id: h.id, value: h.value }).collect(),
        request_id: s.request_id,
    }
}

/// The loaded model's status as a wire message.
fn status_message(s: ModelStatus) -> v1::ModelStatusResponse {
    v1::ModelStatusResponse {
        version: s.version,
        name: s.name,
        rows_trained: s.rows_trained,
        fields: s
            .fields
            .into_iter()
            .map(|(name, field, kind)| v1::InputFieldInfo { name, field, kind: kind.into() })
            .collect(),
        tables: s.tables,
        kept_versions: s.kept_versions,
        data_format: s.data_format,
    }
}

#[tonic::async_trait]
impl ServingRpc for ServingService {
    async fn predict(&self, req: Request<v1::PredictRequest>) -> Result<Response<v1::PredictResponse>, Status> {
        let started = Instant::now();
        let req = req.into_inner();
        let samples = req.samples.into_iter().map(sample_of).collect();
        let result = self.models.predict(&req.model, req.version, samples).await;
        crate::record("grpc", started, &result);
        let p = result.map_err(|e| e.status())?;
        Ok(Response::new(v1::PredictResponse {
            version: p.version,
            probabilities: p.probabilities,
            tasks: 1,
            lookup_misses: p.lookup_misses,
            request_ids: p.request_ids,
        }))
    }

    async fn model_status(
        &self,
        req: Request<v1::ModelStatusRequest>,
    ) -> Result<Response<v1::ModelStatusResponse>, Status> {
        let status = self.models.pick(&req.into_inner().model).and_then(|p| p.status());
        status.map(|s| Response::new(status_message(s))).map_err(|e| e.status())
    }
}

/// Serves `ember.v1.Serving` and `grpc.health.v1` on `listener` until `shutdown` resolves.
/// Health reports SERVING once every model has a version loaded.
pub async fn serve(
    listener: tokio::net::TcpListener,
    models: Arc<Models>,
    config: ServingConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let mut builder = config.security.server_builder()?;
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_not_serving::<ServingServer<ServingService>>().await;
    let watched = Arc::clone(&models);
    let health_task = tokio::spawn(async move {
        let mut serving = false;
        loop {
            let loaded = watched.all_loaded();
            if loaded != serving {
                serving = loaded;
                if loaded {
                    health.set_serving::<ServingServer<ServingService>>().await;
                } else {
                    health.set_not_serving::<ServingServer<ServingService>>().await;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let service = ServingServer::new(ServingService { models })
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);
    let result = builder
        .add_service(health_service)
        .add_service(service)
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), shutdown)
        .await;
    health_task.abort();
    result
}
