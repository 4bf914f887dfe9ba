//! The read-only embedding replica (`ember replica`): serving's source of sparse rows, so
//! predictions never read the ps-servers that are training (docs/serving.md).
//!
//! A replica holds a set of slots of the key space. For every training ps-server it follows that
//! server's row-delta stream (`SubscribeDeltas`, filtered to its slots), applies each round whole
//! into per-(server, table) [`ember_store::replica::ReplicaTable`]s (immutable memory-mapped
//! segments plus in-memory overlays), compacts overlays into new segments in the background, and
//! answers `ember.v1.Replica/Lookup`.
//!
//! Layout:
//! - [`state`]: what the replica holds and the lookup path.
//! - [`follow`]: one task per training server: subscribe, read rounds, apply them whole, resume
//!   from the last applied watermark after a break.
//! - [`persist`]: the per-server manifest (stream, watermark, segment per table), written after a
//!   compaction and read at start, so a restart maps its segments and resumes the stream instead
//!   of loading a snapshot.
//! - [`versions`]: published versions' sparse states, read from the checkpoint chains their
//!   publishes took, so a lookup can ask for version V exactly.
//! - [`maintain`]: the compaction thread.
//! - [`grpc`]: the thin gRPC adapter and health.
//!
//! Invariants: rows of one training server live only in that server's tables (a reset of one
//! server's stream never touches another's rows); a lookup reads immutable views and never waits
//! on ingestion or compaction; the replica reports ready (health SERVING) only after every
//! server's stream has been followed to its head once since start.
//!
//! Metrics: `ember_replica_rounds_total`, `ember_replica_rows_applied_total`,
//! `ember_replica_stream_breaks_total`, `ember_replica_lookups_total{code}`,
//! `ember_replica_lookup_seconds`, `ember_replica_compactions_total`,
//! `ember_replica_watermark{source}`, `ember_replica_segment_rows`, `ember_replica_overlay_rows`.

pub mod error;
pub mod follow;
pub mod grpc;
pub mod maintain;
pub mod persist;
pub mod state;
pub mod versions;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ember_client::PsClient;
pub use error::ReplicaError;
pub use state::{Replica, Rows};

/// Tunables of a replica.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// Where segments and manifests live (kept across restarts).
    pub dir: PathBuf,
    /// Slots held (of the ps-servers' shard map's slot count); None: every slot.
    pub slots: Option<Vec<u32>>,
    /// Version of the slot assignment, reported in FailedPrecondition (0: given by flags).
    pub map_version: u64,
    /// The model directory whose published versions' sparse states are held (None: only the
    /// latest rows).
    pub model_dir: Option<PathBuf>,
    /// Published versions' sparse states kept.
    pub keep_versions: usize,
    /// The training servers' round interval asked for.
    pub interval: Duration,
    /// A table is compacted once it has this many overlay layers.
    pub compact_layers: usize,
    /// How often the compaction thread looks.
    pub compact_every: Duration,
    /// Largest gRPC message, in bytes.
    pub max_message_bytes: usize,
    /// TLS and role tokens of the gRPC port (off by default).
    pub security: ember_proto::tls::ServerSecurity,
}

impl Default for ReplicaConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("ember-replica"),
            slots: None,
            map_version: 0,
            model_dir: None,
            keep_versions: 3,
            interval: Duration::from_millis(200),
            compact_layers: 16,
            compact_every: Duration::from_millis(500),
            max_message_bytes: 64 << 20,
            security: ember_proto::tls::ServerSecurity::default(),
        }
    }
}

/// Runs a replica of `client`'s servers on `listener` until `shutdown` resolves: restores what
/// the last run left in `config.dir`, follows every server, compacts in the background, and
/// compacts once more on the way out so the next start resumes from here.
pub async fn run(
    listener: tokio::net::TcpListener,
    client: PsClient,
    config: ReplicaConfig,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ReplicaError> {
    let replica = Arc::new(Replica::open(&config, client.shard_map())?);
    let followers: Vec<_> = (0..client.endpoints().len())
        .map(|source| tokio::spawn(follow::follow(Arc::clone(&replica), client.clone(), source, config.interval)))
        .collect();
    let versions = config.model_dir.as_ref().map(|dir| {
        let models = ember_model::ModelDir::new(dir);
        let every = Duration::from_millis(200);
        tokio::spawn(versions::follow_versions(
            Arc::clone(&replica),
            client.clone(),
            models,
            config.keep_versions,
            every,
        ))
    });
    let compactor = maintain::Compactor::spawn(Arc::clone(&replica), config.compact_layers, config.compact_every)?;
    let served = grpc::serve(listener, Arc::clone(&replica), &config, shutdown).await;
    for f in followers.iter().chain(&versions) {
        f.abort();
    }
    let last = tokio::task::spawn_blocking(move || compactor.stop()).await;
    served?;
    match last {
        Ok(result) => result,
        Err(e) => Err(ReplicaError::Internal(format!("the compaction thread failed: {e}"))),
    }
}
