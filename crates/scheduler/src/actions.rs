//! What the scheduler's decisions set off outside its state: cluster checkpoints and model
//! versions (spawned off the request that made them due, recorded back when done), and the
//! listings of follow sources (made off the lock on a timer, applied under it).

use std::sync::Arc;
use std::time::{Duration, Instant};

use ember_client::Credentials;
use ember_model::{InputSchema, ModelDir, ModelTables};
use parking_lot::Mutex;

use crate::publish::Publisher;
use crate::state::{unix_ms, CheckpointRecord, Due, Publish, State};

/// Spawns what `due` asks for job `job_id`: a model version, a cluster checkpoint. Each is
/// recorded with the job when it is done; the caller (a worker's report) does not wait.
pub(crate) fn act(state: &Arc<Mutex<State>>, credentials: &Credentials, job_id: &str, due: Due) {
    if let Some(publish) = due.publish {
        let (state, job, credentials) = (Arc::clone(state), job_id.to_string(), credentials.clone());
        tokio::spawn(async move {
            let outcome = publish_model(&state, &credentials, &job, publish.clone()).await;
            if let Err(e) = &outcome {
                tracing::error!(job = %job, rows = publish.rows, error = %e, "publishing a model version failed");
            }
            if let Err(e) = state.lock().record_published(&job, publish, outcome) {
                tracing::error!(error = %e, "recording a published version");
            }
        });
    }
    if let Some((full, label)) = due.checkpoint {
        let (state, job, credentials) = (Arc::clone(state), job_id.to_string(), credentials.clone());
        tokio::spawn(async move {
            let mut record = checkpoint_cluster(&state, &credentials, full, label).await;
            record.position = due.position;
            tracing::info!(job = %job, label, full, ids = ?record.ids, "scheduled cluster checkpoint");
            if let Err(e) = state.lock().record_checkpoint(&job, record) {
                tracing::error!(error = %e, "recording a checkpoint");
            }
        });
    }
}

/// How often follow jobs are checked for a due listing (each lists at its own `poll_ms`).
const FOLLOW_TICK: Duration = Duration::from_millis(20);

/// Lists every follow job's files when its poll is due, forever: the listing and the cut of
/// new files run on the blocking pool, without the lock.
pub(crate) async fn follow_sources(state: Arc<Mutex<State>>, credentials: Credentials) {
    let mut tick = tokio::time::interval(FOLLOW_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (polls, roots) = {
            let mut s = state.lock();
            (s.follow_polls(Instant::now()), s.data_roots().clone())
        };
        for poll in polls {
            let roots = roots.clone();
            let job_id = poll.job_id.clone();
            let found = tokio::task::spawn_blocking(move || crate::state::stream::poll(&poll, &roots)).await;
            let Ok(found) = found else { continue };
            match state.lock().apply_follow(&job_id, found) {
                Ok(due) => act(&state, &credentials, &job_id, due),
                Err(e) => tracing::warn!(job = %job_id, error = %e, "applying a follow listing"),
            }
        }
    }
}

/// Checkpoints every ps-server of the current shard map, labeled `label`. A failure (a server
/// down, a disk full) is recorded, not raised: the servers' previous checkpoints stand.
pub(crate) async fn checkpoint_cluster(
    state: &Mutex<State>,
    credentials: &Credentials,
    full: bool,
    label: u64,
) -> CheckpointRecord {
    let (_, endpoints, owners) = state.lock().shard_map();
    let record = |ids: Vec<u64>, error: Option<String>| CheckpointRecord {
        label,
        full,
        ids,
        unix_ms: unix_ms(),
        error,
        position: None,
    };
    let Some(map) = ember_client::ShardMap::from_parts(endpoints, owners) else {
        return record(Vec::new(), Some("no ps-server is registered".into()));
    };
    let result = async {
        let client = ember_client::PsClient::connect(map, credentials).await?;
        client.checkpoint(full, label).await
    }
    .await;
    match result {
        Ok(replies) => record(replies.iter().map(|r| r.id).collect(), None),
        Err(e) => {
            tracing::error!(error = %e, label, "cluster checkpoint failed");
            record(Vec::new(), Some(e.to_string()))
        }
    }
}

/// Publishes job `job_id`'s model as the ps-servers of the current shard map hold it.
async fn publish_model(
    state: &Mutex<State>,
    credentials: &Credentials,
    job_id: &str,
    due: Publish,
) -> Result<u64, String> {
    let (toml, (_, endpoints, owners), roots) = {
        let s = state.lock();
        let toml = s.jobs(Some(job_id)).map_err(|e| e.to_string())?[0].toml.clone();
        (toml, s.shard_map(), s.data_roots().clone())
    };
    let spec = ember_core::JobSpec::from_toml(&toml).map_err(|e| e.to_string())?;
    let map = ember_client::ShardMap::from_parts(endpoints, owners).ok_or("no ps-server is registered")?;
    let (tables, specs) = ModelTables::for_job(&spec, job_id);
    let data = spec.data.clone();
    // A CSV file's header names its columns; reading it is file I/O, kept off the async workers.
    let schema =
        tokio::task::spawn_blocking(move || InputSchema::for_data(&data, || crate::plan::csv_header(&data, &roots)))
            .await
            .map_err(|e| e.to_string())?;
    let publisher = Publisher::new(ModelDir::new(&spec.publish.model_dir), &spec, job_id, tables, &specs, schema);
    let client = ember_client::PsClient::connect(map, credentials).await.map_err(|e| e.to_string())?;
    if due.last && spec.sync.buffers() {
        // Every train item is reported, so every push of the job has landed: what the servers
        // still buffer (softsync's partial last round) belongs in the trained model. Workers
        // flush it too, but only when they next ask for work, which may be after this publish.
        client.flush_pending().await.map_err(|e| format!("applying the last softsync gradients: {e}"))?;
    }
    publisher.publish(&client, due.rows, due.held).await.map_err(|e| e.to_string())
}
