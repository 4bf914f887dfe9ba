//! The embedded cluster: ps-servers as tasks of this process, each on its own loopback port,
//! talking real gRPC exactly as separate processes would.

use std::sync::Arc;

use anyhow::Context;
use ember_client::ShardMap;
use ember_ps_server::{serve, ServeConfig};
use ember_store::{Store, StoreConfig};
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
        let mut servers = Vec::new();
        for _ in 0..ps {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("binding a loopback port")?;
            let addr = listener.local_addr()?.to_string();
            let (stop, stopped) = oneshot::channel::<()>();
            let store = Arc::new(Store::new(StoreConfig::default()));
            let task = tokio::spawn(serve(listener, store, ServeConfig::default(), async {
                let _ = stopped.await;
            }));
            servers.push(EmbeddedPs { addr, stop, task });
        }
        Ok(Self { servers })
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
