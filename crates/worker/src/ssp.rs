//! A worker's SSP clock: steps finished, reported to the ps-server keeping its group's clocks.
//!
//! After each step (its push applied) the worker's clock moves on. If the slowest worker it last
//! heard of is within the bound, the report goes out in the background and the worker carries on;
//! otherwise it waits on the server until the slowest has caught up to `clock - bound`. So the
//! clock server is on a step's critical path only when the worker has to wait anyway.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ember_client::{ClientError, PsClient};
use ember_proto::v1;

/// How long one wait on the server lasts before the worker asks again.
const WAIT_MS: u32 = 5_000;

/// One worker's clock in one group.
#[derive(Debug)]
pub struct SspClock {
    client: PsClient,
    group: String,
    worker: String,
    bound: u64,
    clock: AtomicU64,
    /// The smallest clock of the group as last heard.
    known_min: Arc<AtomicU64>,
}

impl SspClock {
    /// Joins `group` as `worker`, so the others wait for this worker from now on. A worker
    /// joining a group already under way starts at the slowest member's clock (not at 0, which
    /// would hold everyone back until it caught up).
    pub async fn join(client: PsClient, group: &str, worker: &str, bound: u32) -> Result<Self, ClientError> {
        let mut clock = Self {
            client,
            group: group.to_string(),
            worker: worker.to_string(),
            bound: u64::from(bound),
            clock: AtomicU64::new(0),
            known_min: Arc::new(AtomicU64::new(0)),
        };
        // Leaving a group one is not in changes nothing and reads the others' minimum.
        let others = clock.client.worker_clock(clock.request(0, true, 0)).await?;
        let start = if others.workers == 0 { 0 } else { others.min_clock };
        clock.clock = AtomicU64::new(start);
        let reply = clock.client.worker_clock(clock.request(start, false, 0)).await?;
        clock.known_min.store(reply.min_clock, Ordering::Release);
        Ok(clock)
    }

    fn request(&self, clock: u64, leave: bool, wait_for: u64) -> v1::WorkerClockRequest {
        v1::WorkerClockRequest {
            group: self.group.clone(),
            worker: self.worker.clone(),
            clock,
            leave,
            wait_for,
            wait_ms: WAIT_MS,
        }
    }

    /// Marks one more step finished; returns once this worker may start the next one.
    pub async fn step_done(&self) -> Result<(), ClientError> {
        let clock = self.clock.fetch_add(1, Ordering::AcqRel) + 1;
        let needed = clock.saturating_sub(self.bound);
        if self.known_min.load(Ordering::Acquire) >= needed {
            let (client, request, known) =
                (self.client.clone(), self.request(clock, false, 0), Arc::clone(&self.known_min));
            tokio::spawn(async move {
                match client.worker_clock(request).await {
                    Ok(reply) => {
                        known.fetch_max(reply.min_clock, Ordering::AcqRel);
                    }
                    Err(e) => tracing::warn!(%e, "reporting the SSP clock failed"),
                }
            });
            return Ok(());
        }
        loop {
            let reply = self.client.worker_clock(self.request(clock, false, needed)).await?;
            self.known_min.fetch_max(reply.min_clock, Ordering::AcqRel);
            if reply.min_clock >= needed {
                return Ok(());
            }
        }
    }

    /// Leaves the group: the others no longer wait for this worker.
    pub async fn leave(&self) -> Result<(), ClientError> {
        let clock = self.clock.load(Ordering::Acquire);
        self.client.worker_clock(self.request(clock, true, 0)).await.map(drop)
    }
}
