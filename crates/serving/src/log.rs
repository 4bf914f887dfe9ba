//! The prediction log: each sample a node answered (request id, time, model version, the raw
//! features as received), as JSON lines that `ember join` joins with click events.
//!
//! Files are time buckets: a record of time `t` goes to `b{t / bucket:012}.jsonl`, so a click
//! logger that buckets by the same length names its files alike without talking to serving
//! (the join pairs files by name). A bucket's file is written under a dot-name and renamed into
//! place once the clock is a second past the bucket's end, so a reader never sees half a file.
//!
//! The request path never waits on the disk: records go through a bounded queue to one writer
//! thread; when the queue is full a record is dropped and counted in
//! `ember_serving_prediction_log_dropped_total` (one whose bucket's file is already in place, in
//! `..._late_total`). Samples given as caller-hashed features have no
//! raw cells to log and are counted in `..._unloggable_total`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, RecvTimeoutError, SyncSender, TrySendError};
use std::time::Duration;

use ember_core::unix_ms;

/// Records queued at most before new ones are dropped (and counted).
const QUEUE: usize = 65_536;
/// How long past a bucket's end its file stays open for stragglers.
const GRACE_MS: u64 = 1_000;

/// One logged prediction.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Record {
    /// The request's id (given by the caller, or made by the node).
    pub request_id: String,
    /// When it was answered, Unix ms.
    pub time_ms: u64,
    /// The version that answered.
    pub model_version: u64,
    /// The raw cells in the model's field order, tab-separated.
    pub features: String,
}

/// A node's prediction log.
pub struct PredictionLog {
    tx: SyncSender<Record>,
    /// Prefix of the ids the node makes (random per process, so ids do not repeat across
    /// restarts).
    prefix: String,
    next: AtomicU64,
}

impl std::fmt::Debug for PredictionLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PredictionLog").field("prefix", &self.prefix).finish()
    }
}

impl PredictionLog {
    /// Starts logging into `dir` (created if missing) in buckets of `bucket`.
    pub fn start(dir: PathBuf, bucket: Duration) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let (tx, rx) = sync_channel::<Record>(QUEUE);
        let bucket_ms = (bucket.as_millis() as u64).max(1);
        std::thread::Builder::new().name("prediction-log".into()).spawn(move || {
            let mut open: BTreeMap<u64, BufWriter<File>> = BTreeMap::new();
            let mut closed_below = 0u64;
            loop {
                let received = rx.recv_timeout(Duration::from_millis(200));
                let done = matches!(received, Err(RecvTimeoutError::Disconnected));
                if let Ok(record) = received {
                    let b = record.time_ms / bucket_ms;
                    if b < closed_below {
                        // Its bucket's file is in place already (the record waited past the
                        // grace): never rewritten, so the record is counted, not written.
                        metrics::counter!("ember_serving_prediction_log_late_total").increment(1);
                    } else if let Err(e) = append(&dir, &mut open, b, &record) {
                        tracing::error!(error = %e, dir = %dir.display(), "prediction log write failed; record lost");
                        metrics::counter!("ember_serving_prediction_log_dropped_total").increment(1);
                    }
                }
                let now = unix_ms();
                let ended: Vec<u64> =
                    open.keys().copied().filter(|b| done || (b + 1) * bucket_ms + GRACE_MS <= now).collect();
                for b in ended {
                    closed_below = closed_below.max(b + 1);
                    if let Some(file) = open.remove(&b) {
                        if let Err(e) = close(&dir, b, file) {
                            tracing::error!(error = %e, bucket = b, "closing a prediction log file");
                        }
                    }
                }
                if done {
                    return;
                }
            }
        })?;
        let mut seed = ember_core::SplitMix64::new(unix_ms() ^ (u64::from(std::process::id()) << 32));
        Ok(Self { tx, prefix: format!("{:016x}", seed.next_u64()), next: AtomicU64::new(0) })
    }

    /// A new request id.
    pub fn next_id(&self) -> String {
        format!("{}-{}", self.prefix, self.next.fetch_add(1, Ordering::Relaxed))
    }

    /// Queues a record; drops it (counted) if the writer is behind.
    pub fn log(&self, record: Record) {
        match self.tx.try_send(record) {
            Ok(()) => metrics::counter!("ember_serving_prediction_log_records_total").increment(1),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                metrics::counter!("ember_serving_prediction_log_dropped_total").increment(1);
            }
        }
    }

    /// Counts a sample that has no raw cells to log.
    pub fn unloggable(&self) {
        metrics::counter!("ember_serving_prediction_log_unloggable_total").increment(1);
    }
}

fn name(b: u64) -> String {
    format!("b{b:012}.jsonl")
}

fn append(dir: &Path, open: &mut BTreeMap<u64, BufWriter<File>>, b: u64, record: &Record) -> std::io::Result<()> {
    let file = match open.entry(b) {
        std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::btree_map::Entry::Vacant(e) => {
            e.insert(BufWriter::new(File::create(dir.join(format!(".{}", name(b))))?))
        }
    };
    serde_json::to_writer(&mut *file, record).map_err(std::io::Error::other)?;
    file.write_all(b"\n")
}

fn close(dir: &Path, b: u64, file: BufWriter<File>) -> std::io::Result<()> {
    let file = file.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    std::fs::rename(dir.join(format!(".{}", name(b))), dir.join(name(b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_land_in_their_time_buckets_once_the_log_closes() {
        let dir = tempfile::tempdir().unwrap();
        let log = PredictionLog::start(dir.path().to_path_buf(), Duration::from_secs(60)).unwrap();
        let (a, b) = (log.next_id(), log.next_id());
        assert_ne!(a, b);
        for (id, t) in [(&a, 60_000 * 5 + 1), (&b, 60_000 * 6 + 2)] {
            log.log(Record { request_id: id.clone(), time_ms: t, model_version: 3, features: "1\t\tx".into() });
        }
        drop(log); // the writer closes every bucket and ends
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::fs::read_dir(dir.path()).unwrap().count() < 2 || dir.path().join(".b000000000005.jsonl").exists() {
            assert!(std::time::Instant::now() < deadline, "files never closed");
            std::thread::sleep(Duration::from_millis(20));
        }
        let five = std::fs::read_to_string(dir.path().join("b000000000005.jsonl")).unwrap();
        let v: serde_json::Value = serde_json::from_str(five.trim()).unwrap();
        assert_eq!(
            (v["request_id"].as_str(), v["model_version"].as_u64(), v["features"].as_str()),
            (Some(a.as_str()), Some(3), Some("1\t\tx"))
        );
        assert!(std::fs::read_to_string(dir.path().join("b000000000006.jsonl")).unwrap().contains(&b));
    }
}
