//! The compaction thread: merges a table's overlay layers into a new segment once it has enough
//! of them (or holds no segment yet), then rewrites its source's manifest, so overlays stay
//! short (a lookup probes each layer) and a restart resumes from recent segments.
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
                        if let Err(e) = pass(&held, source, layers.max(1), &mut saved[i]) {
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
            pass(&self.replica, source, 1, &mut None)?;
        }
        Ok(())
    }
}

/// One look at a source: compact what needs it; write the manifest when a segment changed.
fn pass(replica: &Replica, source: &Source, layers: usize, saved: &mut Option<u64>) -> Result<(), ReplicaError> {
    let mut changed = false;
    let (mut segment_rows, mut overlay_rows) = (0usize, 0usize);
    for (name, held) in source.tables() {
        let view = held.table.view();
        let due = view.layers() >= layers || (view.segment().is_none() && view.layers() > 0);
        if due {
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
        if held.table.view().layers() >= layers && held.table.compact()?.is_some() {
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
