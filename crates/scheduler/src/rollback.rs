//! The `Rollback` RPC's flow: pause the job, wait for its windows in flight, restore every
//! ps-server, rewind the source, and make the version published with the checkpoint current
//! again (the decisions are `state::rollback`'s; this is the order and the waiting).

use std::sync::Arc;
use std::time::{Duration, Instant};

use ember_client::Credentials;
use ember_model::ModelDir;
use ember_proto::v1;
use parking_lot::Mutex;

use crate::state::rollback::{RollbackRecord, RollbackTarget};
use crate::state::{SchedulerError, State};

/// How often the windows in flight are counted while a rollback waits for them.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// Rolls job `req.job_id` back; see the RPC's comment in scheduler.proto.
pub(crate) async fn rollback(
    state: &Arc<Mutex<State>>,
    credentials: &Credentials,
    req: v1::RollbackRequest,
) -> Result<RollbackRecord, SchedulerError> {
    let target = match req.target {
        Some(v1::rollback_request::Target::Label(l)) => RollbackTarget::Label(l),
        Some(v1::rollback_request::Target::BeforeUnixMs(ms)) => RollbackTarget::Time(ms),
        None => return Err(SchedulerError::Rollback("name a checkpoint label or a time".into())),
    };
    let skip = match (req.skip_first.is_empty(), req.skip_last.is_empty()) {
        (true, true) => None,
        (false, false) if req.skip_first <= req.skip_last => Some((req.skip_first, req.skip_last)),
        _ => {
            return Err(SchedulerError::Rollback("the skip range needs a first and a last name, first <= last".into()))
        }
    };
    let job = req.job_id;
    let (plan, map, lease) = {
        let mut s = state.lock();
        let (_, endpoints, owners) = s.shard_map();
        let plan = s.begin_rollback(&job, target, endpoints.len())?;
        (plan, ember_client::ShardMap::from_parts(endpoints, owners), s.lease())
    };
    // Windows in flight finish (or their worker's lease expires and they go back to the queue).
    let deadline = Instant::now() + 2 * lease;
    while state.lock().in_flight(&job) > 0 {
        if Instant::now() > deadline {
            let reason = "windows still in flight after twice the lease".to_string();
            state.lock().abort_rollback(&job);
            return Err(SchedulerError::Rollback(reason));
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
    let restored = async {
        let map = map.ok_or("no ps-server is registered")?;
        let client = ember_client::PsClient::connect(map, credentials).await.map_err(|e| e.to_string())?;
        client.restore(&plan.ids).await.map_err(|e| e.to_string())
    }
    .await;
    let restored = restored.map(|replies| {
        let rows: u64 = replies.iter().map(|r| r.rows).sum();
        tracing::warn!(job = %job, label = plan.label, rows, "ps-servers returned to the checkpoint");
    });
    let record = state.lock().finish_rollback(&job, &plan, skip, restored)?;
    if let Some(version) = record.version {
        let dir = {
            let s = state.lock();
            let toml = s.jobs(Some(&job))?[0].toml.clone();
            ember_core::JobSpec::from_toml(&toml).map(|spec| spec.publish.model_dir).unwrap_or_default()
        };
        let serve = tokio::task::spawn_blocking(move || ModelDir::new(dir).rollback(version)).await;
        match serve {
            Ok(Ok(())) => tracing::warn!(job = %job, version, "serving rolled back with the job"),
            Ok(Err(e)) => {
                return Err(SchedulerError::Rollback(format!("the servers rolled back, serving did not: {e}")))
            }
            Err(e) => return Err(SchedulerError::Rollback(format!("the servers rolled back, serving did not: {e}"))),
        }
    }
    Ok(record)
}
