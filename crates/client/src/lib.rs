//! Typed clients for Ember's services.
//!
//! Layout:
//! - [`shard_map`]: which server owns which virtual slot (`slot = mix64(key) % num_slots`).
//! - [`ps`]: [`PsClient`], the parameter-server client: splits a batch per server, fans the parts
//!   out concurrently, and reassembles rows in request order.
//! - [`scheduler`]: the scheduler client and [`Membership`] (register + heartbeat leases).
//! - [`serving`]: the serving client (predictions, model status).
//! - [`raw`]: calls with raw message bytes (probes and tests of servers' decoding).
//!
//! Invariants: a caller never sees a partial result (one failed part fails the call); rows come
//! back in the order of the keys asked for, duplicates included.

mod error;
pub mod ps;
pub mod raw;
pub mod scheduler;
pub mod serving;
pub mod shard_map;

pub use error::ClientError;
pub use ps::{Clock, DensePushed, PsClient, PulledRows, PushResult, RetryPolicy, TableGradients};
pub use scheduler::{Membership, SchedulerClient};
pub use serving::ServingClient;
pub use shard_map::ShardMap;

/// A tonic endpoint for `addr` (`host:port` or a URI), with Nagle off: every client's connect
/// starts here.
pub(crate) fn endpoint(addr: &str) -> Result<tonic::transport::Endpoint, ClientError> {
    let uri = if addr.contains("://") { addr.to_string() } else { format!("http://{addr}") };
    tonic::transport::Endpoint::from_shared(uri)
        .map(|e| e.tcp_nodelay(true))
        .map_err(|source| ClientError::Connect { endpoint: addr.to_string(), source })
}
