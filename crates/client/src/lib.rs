//! Typed clients for Ember's services.
//!
//! Layout:
//! - [`shard_map`]: which server owns which virtual slot (`slot = mix64(key) % num_slots`).
//! - [`ps`]: [`PsClient`], the parameter-server client: splits a batch per server, fans the parts
//!   out concurrently, and reassembles rows in request order.
//! - [`scheduler`]: the scheduler client and [`Membership`] (register + heartbeat leases).
//! - [`replica`]: [`ReplicaSet`], lookups against read-only replicas with backup requests.
//! - [`serving`]: the serving client (predictions, model status).
//! - [`Credentials`]: TLS and a role token for every connection the clients make.
//! - [`health`]: is a server up and serving (the scheduler's check of a registering ps).
//! - [`raw`]: calls with raw message bytes (probes and tests of servers' decoding).
//!
//! Invariants: a caller never sees a partial result (one failed part fails the call); rows come
//! back in the order of the keys asked for, duplicates included.

mod credentials;
mod error;
pub mod health;
pub mod ps;
pub mod raw;
pub mod replica;
pub mod scheduler;
pub mod serving;
pub mod shard_map;

pub use credentials::{BearerToken, Credentials, Transport};
pub use error::ClientError;
pub use ps::{Clock, DensePushed, PsClient, PulledRows, PushResult, RetryPolicy, TableGradients};
pub use replica::{replica_status, HedgePolicy, ReplicaSet, ReplicaStats};
pub use scheduler::{Membership, SchedulerClient};
pub use serving::ServingClient;
pub use shard_map::ShardMap;
