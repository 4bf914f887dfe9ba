//! The embedded cluster: ps-servers as tasks of this process, each on its own loopback port,
//! talking real gRPC exactly as separate processes would. With a checkpoint directory, server i
//! keeps its checkpoints in DIR/ps-i (as `ember ps` keeps them in its data dir) and restores the
//! newest complete chain there before it serves, so a cluster started again on the same
//! directory comes back with the rows of the last checkpoint.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use ember_client::ShardMap;
use ember_ps_server::{serve, ServeConfig};
use ember_store::{CheckpointInfo, Checkpointer, Store, StoreConfig};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

struct EmbeddedPs {
    addr: String,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

/// Running in-process ps-servers.
pub struct EmbeddedCluster {
    servers: Vec<EmbeddedPs>,
}

impl EmbeddedCluster {
    /// Starts `ps` servers on 127.0.0.1 ephemeral ports.
    pub async fn start(ps: u32) -> anyhow::Result<Self> {
        Ok(Self::start_with_checkpoints(ps, None).await?.0)
    }

    /// Starts `ps` servers whose checkpoints live under `checkpoints` (server i in `ps-i`), each
    /// restored from its newest complete chain first. Returns, per server, the chain restored
    /// (empty when there was none); without `checkpoints`, no chains at all. Unlike `ember ps`,
    /// these servers write no checkpoint when they stop: a checkpoint is what a caller asked for
    /// (the demo relies on the last one being the published version's).
    pub async fn start_with_checkpoints(
        ps: u32,
        checkpoints: Option<&Path>,
    ) -> anyhow::Result<(Self, Vec<Vec<CheckpointInfo>>)> {
        let mut servers = Vec::new();
        let mut restored = Vec::new();
        for i in 0..ps {
            let store = Arc::new(Store::new(StoreConfig::default()));
            let mut config = ServeConfig::default();
            if let Some(dir) = checkpoints {
                let dir = dir.join(format!("ps-{i}"));
                let checkpointer = Arc::new(
                    Checkpointer::open(&dir).with_context(|| format!("opening checkpoints in {}", dir.display()))?,
                );
                let (s, c) = (Arc::clone(&store), Arc::clone(&checkpointer));
                let chain = tokio::task::spawn_blocking(move || c.restore(&s, ember_store::IfNoIntactChain::Refuse))
                    .await?
                    .with_context(|| format!("restoring checkpoints from {}", dir.display()))?;
                restored.push(chain);
                config.checkpoints = Some(checkpointer);
            }
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("binding a loopback port")?;
            let addr = listener.local_addr()?.to_string();
            let (stop, stopped) = oneshot::channel::<()>();
            let task = tokio::spawn(serve(listener, store, config, async {
                let _ = stopped.await;
            }));
            servers.push(EmbeddedPs { addr, stop, task });
        }
        Ok((Self { servers }, restored))
    }

    /// The shard map over the servers (1024 slots, round-robin).
    pub fn shard_map(&self) -> ShardMap {
        let endpoints = self.servers.iter().map(|s| s.addr.clone()).collect();
        ShardMap::round_robin(endpoints, 1024).expect("at least one server")
    }

    /// Stops every server, letting in-flight requests finish.
    pub async fn stop(self) -> anyhow::Result<()> {
        for s in self.servers {
            let _ = s.stop.send(());
            s.task.await.context("ps-server task")?.context("ps-server")?;
        }
        Ok(())
    }
}
