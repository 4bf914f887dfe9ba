//! The compaction thread. Once a table has enough overlay layers (a lookup probes each one), it
//! merges them: into one in-memory layer while they hold fewer entries than an eighth of the
//! segment's rows (rewriting a 5M-row segment for a few hundred thousand changed rows would cost
//! far more than it saves), else into a new segment (also when there is no segment yet), after
//! which it rewrites the source's manifest so a restart resumes from recent segments.
//!
//! It is a plain thread, not a blocking task: it runs for the replica's life and does disk
//! writes. Lookups never wait on it (a compaction swaps one pointer when done).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::state::{Replica, Source};
use crate::{persist, ReplicaError};

/// A running compaction thread.
#[derive(Debug)]
pub struct Compactor {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
    replica: Arc<Replica>,
}

impl Compactor {
    /// Starts compacting `replica`'s tables that reach `layers` overlay layers, looking every
    /// `every`.
    pub fn spawn(replica: Arc<Replica>, layers: usize, every: Duration) -> Result<Self, ReplicaError> {
        let stop = Arc::new(AtomicBool::new(false));
        let (stopped, held) = (Arc::clone(&stop), Arc::clone(&replica));
        let thread = std::thread::Builder::new()
            .name("ember-compact".into())
            .spawn(move || {
                let mut saved = vec![None; held.sources().len()];
                while !stopped.load(Ordering::Relaxed) {
                    for (i, source) in held.sources().iter().enumerate() {
                        if let Err(e) = pass(&held, source, layers.max(1), &mut saved[i], false) {
                            tracing::error!(error = %e, source = %source.endpoint, "compaction failed; retrying");
                        }
                    }
                    std::thread::sleep(every);
                }
            })
            .map_err(|e| ReplicaError::Internal(format!("cannot start the compaction thread: {e}")))?;
        Ok(Self { stop, thread, replica })
    }

    /// Stops the thread, then compacts every table once more and writes the manifests, so the
    /// next start resumes from here.
    pub fn stop(self) -> Result<(), ReplicaError> {
        self.stop.store(true, Ordering::Relaxed);
        if self.thread.join().is_err() {
            return Err(ReplicaError::Internal("the compaction thread panicked".into()));
        }
        for source in self.replica.sources() {
            pass(&self.replica, source, 1, &mut None, true)?;
        }
        Ok(())
    }
}

/// One look at a source: merge or compact what needs it (`force`: compact every layer into
/// segments); write the manifest when a segment changed.
fn pass(
    replica: &Replica,
    source: &Source,
    layers: usize,
    saved: &mut Option<u64>,
    force: bool,
) -> Result<(), ReplicaError> {
    let mut changed = false;
    let (mut segment_rows, mut overlay_rows) = (0usize, 0usize);
    for (name, held) in source.tables() {
        let view = held.table.view();
        let due = view.layers() >= layers || (view.segment().is_none() && view.layers() > 0);
        let small = !force && view.segment().is_some() && view.overlay_rows() * 8 < view.segment_rows();
        if due && small {
            if held.table.merge_layers() {
                metrics::counter!("ember_replica_layer_merges_total").increment(1);
            }
        } else if due {
            let started = std::time::Instant::now();
            if let Some(done) = held.table.compact()? {
                changed = true;
                metrics::counter!("ember_replica_compactions_total").increment(1);
                tracing::debug!(table = %name, watermark = done.watermark, seconds = started.elapsed().as_secs_f64(),
                    "compacted");
            }
        }
        let view = held.table.view();
        segment_rows += view.segment_rows();
        overlay_rows += view.overlay_rows();
    }
    // Versions' tables: compacted the same way (a pinned version keeps the views it was pinned
    // with), never persisted (they are read again from the checkpoints at start).
    for (_, held) in source.pinned_tables() {
        let view = held.table.view();
        if view.layers() < layers {
            continue;
        }
        if view.segment().is_some() && view.overlay_rows() * 8 < view.segment_rows() {
            held.table.merge_layers();
        } else if held.table.compact()?.is_some() {
            metrics::counter!("ember_replica_compactions_total").increment(1);
        }
    }
    metrics::gauge!("ember_replica_segment_rows", "source" => source.endpoint.clone()).set(segment_rows as f64);
    metrics::gauge!("ember_replica_overlay_rows", "source" => source.endpoint.clone()).set(overlay_rows as f64);
    let unchanged = if changed { None } else { *saved };
    let written = persist::save(source, replica.num_slots(), replica.slots(), unchanged)
        .map_err(|e| ReplicaError::Io { path: source.dir.clone(), source: e })?;
    if written.is_some() {
        *saved = written;
    }
    Ok(())
}
