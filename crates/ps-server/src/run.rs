//! The life of a standalone ps-server, as `ember ps` runs it (mini-redis's `server::run`: the
//! binary parses arguments and calls this): open the store (with a RocksDB cold tier under a
//! DRAM budget), restore the newest intact checkpoint chain, serve, register with a scheduler,
//! checkpoint on a timer, and after shutdown write a final checkpoint.
//!
//! Invariants: the server serves before it registers (the scheduler health-checks a registering
//! ps-server at the address it gives); a failed final checkpoint is an error (the caller must not
//! exit 0 after losing the pushes since the previous one).

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ember_client::{ClientError, Credentials, Membership, SchedulerClient};
use ember_proto::tls::ServerSecurity;
use ember_store::{CheckpointError, CheckpointInfo, CheckpointKind, Checkpointer, IfNoIntactChain, Store, StoreConfig};

use crate::{serve, ServeConfig};

/// How a standalone ps-server runs.
#[derive(Debug, Clone)]
pub struct PsConfig {
    /// Durable state: checkpoints in `DATA_DIR/checkpoints`, the cold tier in `DATA_DIR/cold`.
    pub data_dir: PathBuf,
    /// The store's shards and key limit.
    pub store: StoreConfig,
    /// Bound on the DRAM tier, in bytes; rows beyond it go to RocksDB. `None`: all in DRAM.
    pub dram_budget: Option<u64>,
    /// A periodic checkpoint this often (`None`: only on request and at shutdown).
    pub checkpoint_every: Option<Duration>,
    /// Every this many periodic checkpoints, a full one.
    pub full_every: u64,
    /// How often tables' eviction rules run.
    pub evict_every: Duration,
    /// What to do when checkpoint files exist but none starts an intact chain.
    pub if_no_intact_chain: IfNoIntactChain,
    /// A scheduler to register with (and heartbeat), and the address to give it.
    pub scheduler: Option<(String, Option<String>)>,
    /// TLS and role tokens of the port.
    pub security: ServerSecurity,
    /// What the server shows the scheduler (an admin token where tokens are on).
    pub credentials: Credentials,
}

/// What a started server reports before it serves (the binary prints it).
#[derive(Debug, Clone)]
pub struct Started {
    /// The bound address.
    pub addr: SocketAddr,
    /// The checkpoint chain restored, oldest first (empty: started empty).
    pub restored: Vec<CheckpointInfo>,
}

/// Why a ps-server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The data dir could not be created.
    #[error("creating data dir {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The cold tier could not be opened (or this build has none).
    #[error("opening the cold tier {path}: {reason}")]
    ColdTier {
        /// Its directory.
        path: PathBuf,
        /// Cause.
        reason: String,
    },
    /// Restoring (or opening) the checkpoints failed.
    #[error("restoring checkpoints: {0}")]
    Restore(CheckpointError),
    /// The scheduler refused or could not be reached.
    #[error("registering with the scheduler: {0}")]
    Register(ClientError),
    /// The gRPC server failed.
    #[error("serving: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// The final checkpoint could not be written: the pushes since the previous one are lost.
    #[error("final checkpoint failed: updates since the previous checkpoint are lost: {0}")]
    FinalCheckpoint(CheckpointError),
    /// A task of the server panicked (a bug).
    #[error("a server task failed: {0}")]
    Task(String),
}

/// Opens the store of `config`: tiered when it has a DRAM budget.
fn open_store(config: &PsConfig) -> Result<Store, RunError> {
    let Some(budget) = config.dram_budget else { return Ok(Store::new(config.store.clone())) };
    let path = config.data_dir.join("cold");
    #[cfg(feature = "rocksdb")]
    {
        let cold = ember_store::tier::RocksCold::open_empty(&path)
            .map_err(|e| RunError::ColdTier { path: path.clone(), reason: e.0 })?;
        tracing::info!(budget, cold = %path.display(), "DRAM budget set; rows beyond it go to RocksDB");
        Ok(Store::tiered(config.store.clone(), Arc::new(cold), budget))
    }
    #[cfg(not(feature = "rocksdb"))]
    {
        let _ = budget;
        Err(RunError::ColdTier { path, reason: "this build has no RocksDB cold tier".into() })
    }
}

/// Runs a ps-server on `listener` until `shutdown` resolves, then writes a final checkpoint.
/// `ready` is called once restore is done and the server is registered and serving.
pub async fn run(
    listener: tokio::net::TcpListener,
    config: PsConfig,
    ready: impl FnOnce(&Started),
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let data_dir = config.data_dir.clone();
    std::fs::create_dir_all(&data_dir).map_err(|source| RunError::DataDir { path: data_dir.clone(), source })?;
    let addr = listener.local_addr().map_err(|source| RunError::DataDir { path: data_dir.clone(), source })?;
    let store = Arc::new(open_store(&config)?);
    let checkpoints = Arc::new(Checkpointer::open(data_dir.join("checkpoints")).map_err(RunError::Restore)?);
    let restored = restore(&store, &checkpoints, config.if_no_intact_chain).await?;
    tracing::info!(%addr, data_dir = %data_dir.display(), "ps-server serving");
    let serve_config = ServeConfig {
        checkpoints: Some(Arc::clone(&checkpoints)),
        evict_interval: config.evict_every,
        security: config.security.clone(),
        ..ServeConfig::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(serve(listener, Arc::clone(&store), serve_config, async {
        let _ = stopped.await;
    }));
    // Held for the server's life: its background task renews the lease.
    let _membership = match &config.scheduler {
        Some((scheduler, advertise)) => {
            let advertised = advertise.clone().unwrap_or_else(|| addr.to_string());
            let joined = async {
                let client = SchedulerClient::connect(scheduler, &config.credentials).await?;
                Membership::join(client, ember_proto::v1::Role::Ps, advertised).await
            };
            match joined.await {
                Ok(m) => {
                    tracing::info!(member = %m.id(), %scheduler, "registered with the scheduler");
                    Some(m)
                }
                Err(e) => {
                    let _ = stop.send(());
                    let _ = server.await;
                    return Err(RunError::Register(e));
                }
            }
        }
        None => None,
    };
    ready(&Started { addr, restored });
    let periodic = config.checkpoint_every.map(|every| {
        tokio::spawn(checkpoint_periodically(Arc::clone(&store), Arc::clone(&checkpoints), every, config.full_every))
    });
    let served = tokio::select! {
        () = shutdown => {
            let _ = stop.send(());
            server.await
        }
        ended = &mut server => ended,
    };
    if let Some(task) = periodic {
        task.abort();
    }
    served.map_err(|e| RunError::Task(e.to_string()))??;
    // A clean stop loses nothing: what changed since the last checkpoint is written now.
    let last = tokio::task::spawn_blocking(move || checkpoints.write(&store, CheckpointKind::Incremental, 0))
        .await
        .map_err(|e| RunError::Task(e.to_string()))?;
    let info = last.map_err(RunError::FinalCheckpoint)?;
    tracing::info!(id = info.id, rows = info.rows, "final checkpoint written; ps-server stopped");
    Ok(())
}

async fn restore(
    store: &Arc<Store>,
    checkpoints: &Arc<Checkpointer>,
    if_none: IfNoIntactChain,
) -> Result<Vec<CheckpointInfo>, RunError> {
    let (store, checkpoints) = (Arc::clone(store), Arc::clone(checkpoints));
    let dir = checkpoints.dir().display().to_string();
    let chain = tokio::task::spawn_blocking(move || checkpoints.restore(&store, if_none))
        .await
        .map_err(|e| RunError::Task(e.to_string()))?
        .map_err(RunError::Restore)?;
    match chain.last() {
        Some(last) => {
            let rows: u64 = chain.iter().map(|c| c.rows).sum();
            let seconds: f64 = chain.iter().map(|c| c.seconds).sum();
            tracing::info!(checkpoint = last.id, label = last.label, files = chain.len(), rows, seconds, %dir, "restored");
        }
        None => tracing::info!(%dir, "no checkpoint to restore; starting empty"),
    }
    Ok(chain)
}

async fn checkpoint_periodically(store: Arc<Store>, checkpoints: Arc<Checkpointer>, every: Duration, full_every: u64) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await; // the first tick is immediate
    for n in 1u64.. {
        tick.tick().await;
        let kind = if n % full_every.max(1) == 0 { CheckpointKind::Full } else { CheckpointKind::Incremental };
        let (store, checkpoints) = (Arc::clone(&store), Arc::clone(&checkpoints));
        let span = ember_proto::trace::root_span("checkpoint");
        match tokio::task::spawn_blocking(move || span.in_scope(|| checkpoints.write(&store, kind, 0))).await {
            Ok(Ok(info)) => {
                tracing::debug!(id = info.id, kind = info.kind.as_str(), rows = info.rows, "periodic checkpoint")
            }
            Ok(Err(e)) => tracing::error!(error = %e, "periodic checkpoint failed; the previous one is still usable"),
            Err(e) => tracing::error!(error = %e, "checkpoint task failed"),
        }
    }
}
