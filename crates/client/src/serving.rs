//! The serving client: predictions and model status from a serving node.

use ember_proto::v1::{self, serving_client};
use tonic::transport::Channel;

use crate::ClientError;

/// A typed client of a serving node. Cheap to clone (one HTTP/2 connection, multiplexed).
#[derive(Debug, Clone)]
pub struct ServingClient {
    inner: serving_client::ServingClient<Channel>,
    endpoint: String,
}

impl ServingClient {
    /// Connects to the serving node at `endpoint` (`host:port` or a URI).
    pub async fn connect(endpoint: &str) -> Result<Self, ClientError> {
        let channel = crate::endpoint(endpoint)?
            .connect()
            .await
            .map_err(|source| ClientError::Connect { endpoint: endpoint.to_string(), source })?;
        let inner = serving_client::ServingClient::new(channel)
            .max_encoding_message_size(64 << 20)
            .max_decoding_message_size(64 << 20);
        Ok(Self { inner, endpoint: endpoint.to_string() })
    }

    /// Predicts `samples` with model `model` (empty: whichever the node serves).
    pub async fn predict(&self, model: &str, samples: Vec<v1::Sample>) -> Result<v1::PredictResponse, ClientError> {
        let req = v1::PredictRequest { model: model.to_string(), samples };
        self.inner
            .clone()
            .predict(req)
            .await
            .map(|r| r.into_inner())
            .map_err(|status| ClientError::Rpc { endpoint: self.endpoint.clone(), status })
    }

    /// The loaded model's status.
    pub async fn status(&self) -> Result<v1::ModelStatusResponse, ClientError> {
        self.inner
            .clone()
            .model_status(v1::ModelStatusRequest {})
            .await
            .map(|r| r.into_inner())
            .map_err(|status| ClientError::Rpc { endpoint: self.endpoint.clone(), status })
    }
}
