//! gRPC health checks: is a server up and serving a given service.

use std::time::Duration;

use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::{ClientError, Credentials};

/// Whether `addr` answers a health check for `service` (e.g. `ember.v1.ParameterServer`) with
/// SERVING within `timeout`: connect, TLS and the check included.
pub async fn is_serving(addr: &str, credentials: &Credentials, service: &str, timeout: Duration) -> Result<(), String> {
    let check = async {
        let channel = credentials.channel(addr).await.map_err(|e: ClientError| e.to_string())?;
        let reply = HealthClient::new(channel)
            .check(HealthCheckRequest { service: service.to_string() })
            .await
            .map_err(|s| format!("health check: {}", s.message()))?;
        match reply.into_inner().status() {
            ServingStatus::Serving => Ok(()),
            other => Err(format!("{service} is {other:?}")),
        }
    };
    match tokio::time::timeout(timeout, check).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}
