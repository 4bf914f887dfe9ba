//! Published versions' sparse states. A version's sparse state is the checkpoint chain its
//! publish took on each training server (`ModelManifest::sparse_checkpoints`). This task watches
//! the model directory, reads each new version's chains (`ReadCheckpoints`, only the files after
//! the last one read, filtered to the replica's slots) into the versions' tables, and pins them
//! as that version. Every replica reads the same files, so all of them hold a version's rows bit
//! for bit, and serving pinned to a version (or rolled back to it) reads exactly what the
//! version's publish recorded, while training goes on.
//!
//! Only the newest `keep_versions` versions are built; a version whose checkpoint files are gone
//! (pruned on the server) or that has no checkpoints is skipped and stays NotFound.

use std::sync::Arc;
use std::time::Duration;

use ember_client::{ClientError, PsClient};
use ember_model::ModelDir;
use ember_proto::v1;

use crate::follow::{decode, specs_for};
use crate::state::{Replica, Round};

/// Why a version could not be built.
enum Failed {
    /// It never will be (checkpoint files gone, no checkpoints): skip it.
    Gone(String),
    /// Try again at the next look.
    Retry(String),
}

/// Watches `models` every `every` and builds new versions (the task is aborted to stop it).
pub async fn follow_versions(replica: Arc<Replica>, client: PsClient, models: ModelDir, keep: usize, every: Duration) {
    let mut done = 0u64;
    loop {
        let dir = models.clone();
        let listed = tokio::task::spawn_blocking(move || {
            let versions = dir.versions()?;
            let newest: Vec<u64> = versions.iter().rev().take(keep.max(1)).rev().copied().collect();
            newest
                .into_iter()
                .map(|v| Ok((v, dir.manifest(v)?.sparse_checkpoints)))
                .collect::<Result<Vec<_>, ember_model::RegistryError>>()
        })
        .await;
        let listed: Vec<(u64, Vec<u64>)> = match listed {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, dir = %models.root().display(), "cannot read the model directory");
                Vec::new()
            }
            Err(e) => {
                tracing::error!(error = %e, "reading the model directory failed");
                Vec::new()
            }
        };
        let from = done;
        for (version, checkpoints) in listed.into_iter().filter(|(v, _)| *v > from) {
            match build(&replica, &client, &checkpoints).await {
                Ok(()) => {
                    replica.pin(version);
                    metrics::counter!("ember_replica_versions_built_total").increment(1);
                    tracing::info!(version, ?checkpoints, "holding the sparse state of a published version");
                    done = version;
                }
                Err(Failed::Gone(reason)) => {
                    tracing::warn!(version, %reason, "cannot hold this version's sparse state; lookups of it are NotFound");
                    done = version;
                }
                Err(Failed::Retry(reason)) => {
                    tracing::warn!(version, %reason, "reading a version's checkpoints failed; retrying");
                    break;
                }
            }
        }
        tokio::time::sleep(every).await;
    }
}

/// Brings every source's versions' tables to `checkpoints` (one id per training server).
async fn build(replica: &Replica, client: &PsClient, checkpoints: &[u64]) -> Result<(), Failed> {
    if checkpoints.len() != replica.sources().len() {
        return Err(Failed::Gone(format!(
            "the version names {} checkpoints for {} training servers",
            checkpoints.len(),
            replica.sources().len()
        )));
    }
    for (source, &upto) in checkpoints.iter().enumerate() {
        let after = replica.sources()[source].pinned_checkpoint();
        if after == upto {
            continue;
        }
        let request = v1::ReadCheckpointsRequest {
            after_id: after,
            upto_id: upto,
            num_slots: if replica.slots().is_empty() { 0 } else { replica.num_slots() },
            slots: replica.slots().to_vec(),
        };
        let gone_or_retry = |e: ClientError| match e.code() {
            Some(tonic::Code::NotFound | tonic::Code::FailedPrecondition) => Failed::Gone(e.to_string()),
            _ => Failed::Retry(e.to_string()),
        };
        let mut stream = client.read_checkpoints(source, request).await.map_err(gone_or_retry)?;
        let mut round = Round::default();
        loop {
            let batch = match stream.message().await {
                Ok(Some(b)) => b,
                Ok(None) => return Err(Failed::Retry("the chain ended without its last message".into())),
                Err(status) => {
                    let endpoint = replica.sources()[source].endpoint.clone();
                    return Err(gone_or_retry(ClientError::Rpc { endpoint, status }));
                }
            };
            let watermark = batch.watermark;
            round = tokio::task::spawn_blocking(move || decode(round, batch))
                .await
                .map_err(|e| Failed::Retry(e.to_string()))?
                .map_err(Failed::Retry)?;
            if watermark != 0 {
                round.watermark = watermark;
                break;
            }
        }
        let specs = specs_for(replica, client, source, &round, true).await.map_err(Failed::Retry)?;
        replica.apply_checkpoints(source, round, &specs).map_err(Failed::Retry)?;
    }
    Ok(())
}
