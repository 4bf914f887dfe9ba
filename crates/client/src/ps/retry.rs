//! Retrying calls to a ps-server that is down (restarting, unreachable): the policy, and the
//! loop each server's part of a batch runs under it.

use std::time::Duration;

use super::PsClient;
use crate::ClientError;

/// How long calls to a server that is down (restarting, unreachable) are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Give up after this long without an answer.
    pub give_up_after: Duration,
    /// First wait; doubled after each failure up to `max_backoff`.
    pub initial_backoff: Duration,
    /// Longest wait between attempts.
    pub max_backoff: Duration,
}

impl RetryPolicy {
    /// No retries: the first failure is returned.
    pub const NONE: Self =
        Self { give_up_after: Duration::ZERO, initial_backoff: Duration::ZERO, max_backoff: Duration::ZERO };

    /// Training workers: ride out a ps-server restart (restore included) of up to `give_up_after`.
    pub fn patient(give_up_after: Duration) -> Self {
        Self { give_up_after, initial_backoff: Duration::from_millis(50), max_backoff: Duration::from_secs(2) }
    }
}

/// Whether a failed call may succeed if tried again: the server was unreachable or went away,
/// not a refusal of the request itself.
fn retriable(status: &tonic::Status) -> bool {
    matches!(status.code(), tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled)
}

impl PsClient {
    /// Runs `call` against `server`, retrying with backoff while it fails retriably and the
    /// policy's time lasts.
    pub(super) async fn retrying<T, F, Fut>(&self, server: usize, mut call: F) -> Result<T, ClientError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let started = tokio::time::Instant::now();
        let mut backoff = self.retry.initial_backoff;
        let mut attempts = 0u32;
        loop {
            match call().await {
                Ok(value) => {
                    if attempts > 0 {
                        tracing::info!(server = %self.map.endpoints()[server], attempts, "ps-server answers again");
                    }
                    return Ok(value);
                }
                Err(status) if retriable(&status) && started.elapsed() + backoff < self.retry.give_up_after => {
                    if attempts == 0 {
                        tracing::warn!(server = %self.map.endpoints()[server], error = %status.message(), "ps-server unreachable; retrying");
                    }
                    attempts += 1;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.retry.max_backoff);
                }
                Err(status) => return Err(self.rpc_err(server)(status)),
            }
        }
    }
}
