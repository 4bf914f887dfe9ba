//! `Restore`: a running server returned to one of its checkpoints (a job's rollback).
//!
//! The chain is verified before anything is applied, and applied on the blocking pool; then a
//! full checkpoint of the restored state is written, so a restart restores it rather than the
//! branch rolled back from. The caller (the scheduler) keeps writers away while it runs: pushes
//! that arrive meanwhile land on whichever table they find.

use std::sync::Arc;

use ember_core::Refusal;
use ember_proto::v1;
use ember_store::{CheckpointInfo, CheckpointKind, Checkpointer, Store};
use tonic::Status;

use crate::error::status_of;

/// The reply to a checkpoint written (by `Checkpoint`, or after a restore).
pub fn checkpoint_reply(info: &CheckpointInfo) -> v1::CheckpointResponse {
    v1::CheckpointResponse {
        id: info.id,
        kind: if info.kind == CheckpointKind::Full { "full" } else { "incremental" }.into(),
        parent: info.parent,
        label: info.label,
        file: info.file.clone(),
        bytes: info.bytes,
        rows: info.rows,
        deleted: info.deleted,
        seconds: info.seconds,
    }
}

/// Returns `store` to checkpoint `id` of `checkpoints`.
pub async fn restore(
    checkpoints: Option<Arc<Checkpointer>>,
    store: Arc<Store>,
    id: u64,
) -> Result<v1::RestoreResponse, Status> {
    let Some(checkpoints) = checkpoints else {
        return Err(status_of(&Refusal::precondition("this ps-server runs without --data-dir: it has no checkpoints")));
    };
    if id == 0 {
        return Err(status_of(&Refusal::invalid("checkpoint id 0 names no checkpoint")));
    }
    let (applied, written) = tokio::task::spawn_blocking(move || checkpoints.restore_to(&store, id))
        .await
        .map_err(|e| status_of(&Refusal::internal(format!("restore task failed: {e}"))))?
        .map_err(|e| {
            tracing::error!(checkpoint = id, error = %e, "restore failed");
            status_of(&e)
        })?;
    let rows = applied.iter().map(|c| c.rows).sum();
    tracing::warn!(checkpoint = id, files = applied.len(), rows, written = written.id, "returned to a checkpoint");
    Ok(v1::RestoreResponse {
        applied: applied.iter().map(|c| c.id).collect(),
        rows,
        written: Some(checkpoint_reply(&written)),
    })
}
