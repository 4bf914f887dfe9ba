//! `ReadCheckpoints`: a checkpoint chain's sparse weights as a stream, for replicas that hold
//! published versions (a version's sparse state is the chain of the checkpoint its publish took;
//! docs/serving.md, "Versions").
//!
//! The files are read on the blocking pool and each message is sent before the next is read, so
//! a slow or departed reader only stops the reading thread (a send that fails ends it).

use std::sync::Arc;

use ember_core::{slot_of, Refusal};
use ember_proto::{f32s_to_bytes, v1};
use ember_store::checkpoint::ChainEvent;
use ember_store::{CheckpointError, Checkpointer};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::deltas::slot_filter;
use crate::error::status_of;

/// Starts streaming the chain `req` asks for.
pub fn read(
    checkpoints: Option<Arc<Checkpointer>>,
    req: v1::ReadCheckpointsRequest,
) -> Result<ReceiverStream<Result<v1::DeltaBatch, Status>>, Status> {
    let Some(checkpoints) = checkpoints else {
        return Err(status_of(&Refusal::precondition("this ps-server runs without --data-dir: it has no checkpoints")));
    };
    if req.upto_id == 0 {
        return Err(status_of(&Refusal::invalid("upto_id names no checkpoint")));
    }
    let held = slot_filter(req.num_slots, &req.slots)?;
    // A checkpoint that is not there at all is refused now; damage is found while reading.
    if !checkpoints.contains(req.upto_id).map_err(|e| status_of(&e))? {
        return Err(status_of(&CheckpointError::Missing { dir: checkpoints.dir().to_path_buf(), id: req.upto_id }));
    }
    let (tx, rx) = mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        let num_slots = req.num_slots;
        let keep = |key: u64| held.is_empty() || held[slot_of(key, num_slots) as usize];
        let (mut table, mut dim) = (String::new(), 0u32);
        let send = |batch: v1::DeltaBatch| {
            tx.blocking_send(Ok(batch)).map_err(|_| CheckpointError::Stopped("the reader went away".into()))
        };
        let result = checkpoints.read_chain(req.after_id, req.upto_id, |event| match event {
            ChainEvent::Table { spec, reset } => {
                (table, dim) = (spec.name.clone(), spec.dim);
                if reset {
                    return send(v1::DeltaBatch { table: table.clone(), dim, reset, ..Default::default() });
                }
                Ok(())
            }
            ChainEvent::Rows { keys, weights } => {
                let d = dim as usize;
                let (mut kept, mut values) = (Vec::with_capacity(keys.len()), Vec::with_capacity(weights.len()));
                for (key, row) in keys.iter().zip(weights.chunks_exact(d.max(1))) {
                    if keep(*key) {
                        kept.push(*key);
                        values.extend_from_slice(row);
                    }
                }
                if kept.is_empty() {
                    return Ok(());
                }
                let values = f32s_to_bytes(values);
                send(v1::DeltaBatch { table: table.clone(), dim, keys: kept, values, ..Default::default() })
            }
            ChainEvent::Deleted(keys) => {
                let deleted: Vec<u64> = keys.iter().copied().filter(|k| keep(*k)).collect();
                if deleted.is_empty() {
                    return Ok(());
                }
                send(v1::DeltaBatch { table: table.clone(), dim, deleted, ..Default::default() })
            }
        });
        let last = match result {
            Ok(ids) => {
                tracing::debug!(?ids, upto = req.upto_id, "streamed a checkpoint chain");
                Ok(v1::DeltaBatch { watermark: req.upto_id, ..Default::default() })
            }
            Err(e) => Err(status_of(&e)),
        };
        let _ = tx.blocking_send(last);
    });
    Ok(ReceiverStream::new(rx))
}
