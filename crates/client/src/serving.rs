//! The serving client: predictions and model status from a serving node.

use crate::{ClientError, Credentials, Transport};
use ember_proto::v1::{self, serving_client};

/// A typed client of a serving node. Cheap to clone (one HTTP/2 connection, multiplexed).
#[derive(Debug, Clone)]
pub struct ServingClient {
    inner: serving_client::ServingClient<Transport>,
    endpoint: String,
}

impl ServingClient {
    /// Connects to the serving node at `endpoint` (`host:port` or a URI) with `credentials`.
    pub async fn connect(endpoint: &str, credentials: &Credentials) -> Result<Self, ClientError> {
        let channel = credentials.channel(endpoint).await?;
        let inner = serving_client::ServingClient::new(channel)
            .max_encoding_message_size(64 << 20)
            .max_decoding_message_size(64 << 20);
        Ok(Self { inner, endpoint: endpoint.to_string() })
    }

    /// Predicts `samples` with the current version of model `model` (empty: the node's only model).
    pub async fn predict(&self, model: &str, samples: Vec<v1::Sample>) -> Result<v1::PredictResponse, ClientError> {
        self.predict_version(model, 0, samples).await
    }

    /// Predicts `samples` with version `version` of model `model` (0: the current one).
    pub async fn predict_version(
        &self,
        model: &str,
        version: u64,
        samples: Vec<v1::Sample>,
    ) -> Result<v1::PredictResponse, ClientError> {
        let req = v1::PredictRequest { model: model.to_string(), samples, version };
        self.inner
            .clone()
            .predict(req)
            .await
            .map(|r| r.into_inner())
            .map_err(|status| ClientError::Rpc { endpoint: self.endpoint.clone(), status })
    }

    /// The loaded model's status (the node's only model).
    pub async fn status(&self) -> Result<v1::ModelStatusResponse, ClientError> {
        self.model_status("").await
    }

    /// Model `model`'s status (empty: the node's only model).
    pub async fn model_status(&self, model: &str) -> Result<v1::ModelStatusResponse, ClientError> {
        self.inner
            .clone()
            .model_status(v1::ModelStatusRequest { model: model.to_string() })
            .await
            .map(|r| r.into_inner())
            .map_err(|status| ClientError::Rpc { endpoint: self.endpoint.clone(), status })
    }
}
