//! The embedded cluster: the roles of a process cluster as tasks of this process, each on its own
//! loopback port, talking real gRPC exactly as separate processes would.
//!
//! [`EmbeddedCluster`] is ps-servers only. With a checkpoint directory, server i keeps its
//! checkpoints in DIR/ps-i (as `ember ps` keeps them in its data dir) and restores the newest
//! complete chain there before it serves, so a cluster started again on the same directory comes
//! back with the rows of the last checkpoint.
//!
//! [`JobCluster`] is what `ember train` and `ember demo` run a job on: ps-servers (embedded, or
//! running ones given by address), one scheduler (`ember_scheduler::serve`, on a state dir of its
//! own) and worker agents (`ember_worker::agent::run_worker`), the same code `ember scheduler`,
//! `ember ps` and `ember worker` run. The ps-servers register with the scheduler as `ember ps
//! --scheduler` does; the job is then submitted, planned, assigned, checkpointed, published and
//! evaluated by the scheduler exactly as on processes.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use ember_client::{Membership, SchedulerClient, ShardMap};
use ember_proto::v1;
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

/// Where a job cluster's ps-servers come from.
pub enum PsServers<'a> {
    /// `count` servers in this process, keeping checkpoints under `checkpoints` (none without).
    Embedded {
        /// How many.
        count: u32,
        /// Checkpoint directory (cleared first: a job starts from nothing).
        checkpoints: Option<&'a Path>,
    },
    /// Running servers at these addresses.
    Running(&'a [String]),
}

/// A worker agent's task.
type AgentTask = JoinHandle<Result<(), ember_worker::agent::AgentError>>;

/// A scheduler, its ps-servers and worker agents in this process (see the module comment).
pub struct JobCluster {
    ps: Option<EmbeddedCluster>,
    /// The ps-servers' registrations, kept alive by their heartbeats.
    ps_members: Vec<Membership>,
    scheduler: SchedulerClient,
    scheduler_stop: oneshot::Sender<()>,
    scheduler_task: JoinHandle<Result<(), Box<dyn std::error::Error + Send + Sync>>>,
    workers: Vec<(oneshot::Sender<()>, AgentTask)>,
}

impl JobCluster {
    /// Starts the ps-servers, a scheduler keeping its state in `state_dir` (cleared first), and
    /// `workers` agents that may read any file this process can (the job is this user's own).
    pub async fn start(ps: PsServers<'_>, workers: u32, state_dir: &Path) -> anyhow::Result<Self> {
        if state_dir.exists() {
            std::fs::remove_dir_all(state_dir).with_context(|| format!("clearing {}", state_dir.display()))?;
        }
        let (embedded, addresses) = match ps {
            PsServers::Embedded { count, checkpoints } => {
                if let Some(dir) = checkpoints.filter(|d| d.exists()) {
                    std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
                }
                let (cluster, _) = EmbeddedCluster::start_with_checkpoints(count, checkpoints).await?;
                let addresses = cluster.servers.iter().map(|s| s.addr.clone()).collect();
                (Some(cluster), addresses)
            }
            PsServers::Running(addresses) => (None, addresses.to_vec()),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("binding a loopback port")?;
        let addr = listener.local_addr()?.to_string();
        let config = ember_scheduler::SchedulerConfig {
            state_dir: state_dir.to_path_buf(),
            lease: std::time::Duration::from_secs(10),
            data_roots: ember_model::DataRoots::unrestricted(),
            security: Default::default(),
            credentials: ember_client::Credentials::none(),
        };
        let (scheduler_stop, stopped) = oneshot::channel::<()>();
        let scheduler_task = tokio::spawn(ember_scheduler::serve(listener, config, async {
            let _ = stopped.await;
        }));
        let credentials = ember_client::Credentials::none();
        let scheduler =
            SchedulerClient::connect(&addr, &credentials).await.context("reaching the embedded scheduler")?;
        let mut ps_members = Vec::new();
        for address in addresses {
            let member = Membership::join(scheduler.clone(), v1::Role::Ps, address.clone())
                .await
                .with_context(|| format!("registering ps-server {address}"))?;
            ps_members.push(member);
        }
        let mut agents = Vec::new();
        for i in 0..workers {
            let (stop, stopped) = oneshot::channel::<()>();
            let roots = ember_model::DataRoots::unrestricted();
            let task =
                tokio::spawn(ember_worker::agent::run_worker(scheduler.clone(), format!("w{i}"), roots, async {
                    let _ = stopped.await;
                }));
            agents.push((stop, task));
        }
        Ok(Self { ps: embedded, ps_members, scheduler, scheduler_stop, scheduler_task, workers: agents })
    }

    /// A client of the scheduler.
    pub fn scheduler(&self) -> &SchedulerClient {
        &self.scheduler
    }

    /// Stops the workers, the scheduler, then the embedded ps-servers.
    pub async fn stop(self) -> anyhow::Result<()> {
        for (stop, task) in self.workers {
            let _ = stop.send(());
            task.await.context("worker task")?.context("worker")?;
        }
        drop(self.ps_members);
        let _ = self.scheduler_stop.send(());
        self.scheduler_task.await.context("scheduler task")?.map_err(|e| anyhow::anyhow!("scheduler: {e}"))?;
        if let Some(ps) = self.ps {
            ps.stop().await?;
        }
        Ok(())
    }
}
