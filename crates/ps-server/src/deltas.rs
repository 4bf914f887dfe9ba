//! `SubscribeDeltas`: the row-delta stream read-only replicas follow (docs/serving.md).
//!
//! A subscription runs in rounds. Each round cuts the store's delta sequence at `W`, then sends,
//! table by table, the subscriber's rows changed after its position, or (when it holds nothing
//! of this stream, or its position is older than a table's log reaches) the table's every row
//! with `reset` on the first batch. The round ends with one message carrying `W`. A subscriber
//! applies a round only once it has its watermark, so a broken stream is resumed from the last
//! watermark and never half-applied.
//!
//! Invariants: store reads run on the blocking pool, one table at a time, and each batch is sent
//! after the shard locks it was read under are released. A subscription ends when its receiver
//! goes away (the client disconnected), at the next send or the next round.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ember_core::{slot_of, Refusal};
use ember_proto::{f32s_to_bytes, v1};
use ember_store::{DeltaRows, SparseTable, Store, StoreError};
use metrics::{counter, gauge};
use tokio::sync::mpsc;
use tonic::Status;

use crate::error::status_of;

/// Default and bounds of a subscription's round interval.
const DEFAULT_INTERVAL_MS: u32 = 200;
const MIN_INTERVAL_MS: u32 = 10;
const MAX_INTERVAL_MS: u32 = 60_000;
/// Default and largest rows per message.
const DEFAULT_BATCH_ROWS: u32 = 16_384;
const MAX_BATCH_ROWS: u32 = 65_536;
/// Most f32 values in one message (16 MiB).
const MAX_MESSAGE_VALUES: usize = 4 << 20;
/// Largest slot count a subscriber may filter by.
const MAX_SLOTS: u32 = 1 << 20;

/// `held[slot]` for a request's slot filter (empty: every key), checked.
pub(crate) fn slot_filter(num_slots: u32, slots: &[u32]) -> Result<Vec<bool>, Status> {
    if num_slots == 0 {
        if !slots.is_empty() {
            return Err(status_of(&Refusal::invalid("slots given without num_slots")));
        }
        return Ok(Vec::new());
    }
    if num_slots > MAX_SLOTS {
        return Err(status_of(&Refusal::invalid(format!("num_slots {num_slots} is over {MAX_SLOTS}"))));
    }
    let mut held = vec![false; num_slots as usize];
    for &slot in slots {
        let Some(h) = held.get_mut(slot as usize) else {
            return Err(status_of(&Refusal::invalid(format!("slot {slot} is out of range for num_slots {num_slots}"))));
        };
        *h = true;
    }
    Ok(held)
}

/// What one subscriber asked for, checked.
#[derive(Debug)]
pub struct Subscription {
    /// Tables followed; empty: every sparse table.
    tables: Vec<String>,
    /// Position: the watermark the subscriber has applied on this server's stream (0: none).
    from: u64,
    /// `slots[slot]` when the subscriber holds that slot; empty: every key.
    slots: Vec<bool>,
    interval: Duration,
    batch_rows: usize,
}

impl Subscription {
    /// Checks a request against `store`: NotFound for a table it does not have (or a dense one),
    /// InvalidArgument for slots out of range, FailedPrecondition when delta logs are off.
    pub fn new(req: v1::SubscribeDeltasRequest, store: &Store) -> Result<Self, Status> {
        if !store.deltas().is_on() {
            return Err(status_of(&Refusal::precondition(
                "this ps-server keeps no delta logs (--delta-log-keys 0): it cannot serve row deltas",
            )));
        }
        let mut seen = BTreeSet::new();
        for name in &req.tables {
            store.sparse(name).map_err(|e| status_of(&e))?;
            if !seen.insert(name.as_str()) {
                return Err(status_of(&Refusal::invalid(format!("table {name} is named twice"))));
            }
        }
        let slots = slot_filter(req.num_slots, &req.slots)?;
        let same_stream = req.stream_id == store.deltas().stream_id();
        let now = store.deltas().current();
        if same_stream && req.from_seq >= now {
            let msg = format!("from_seq {} is ahead of this stream (next sequence {now})", req.from_seq);
            return Err(status_of(&Refusal::invalid(msg)));
        }
        // A valid subscription: from here on the shards log their changes (until the server stops).
        store.deltas().activate();
        let interval = match req.interval_ms {
            0 => DEFAULT_INTERVAL_MS,
            ms => ms.clamp(MIN_INTERVAL_MS, MAX_INTERVAL_MS),
        };
        let batch_rows = match req.batch_rows {
            0 => DEFAULT_BATCH_ROWS,
            n => n.min(MAX_BATCH_ROWS),
        };
        Ok(Self {
            tables: req.tables,
            from: if same_stream { req.from_seq } else { 0 },
            slots,
            interval: Duration::from_millis(u64::from(interval)),
            batch_rows: batch_rows as usize,
        })
    }

    fn keeps(&self, key: u64) -> bool {
        self.slots.is_empty() || self.slots[slot_of(key, self.slots.len() as u32) as usize]
    }
}

type Sender = mpsc::Sender<Result<v1::DeltaBatch, Status>>;

/// Streams rounds to `tx` until the receiver is dropped.
pub async fn run(store: Arc<Store>, mut sub: Subscription, tx: Sender) {
    gauge!("ember_ps_delta_subscribers").increment(1.0);
    loop {
        let started = Instant::now();
        let (store2, tx2) = (Arc::clone(&store), tx.clone());
        let task = tokio::task::spawn_blocking(move || {
            let result = round(&store2, &mut sub, &tx2);
            (sub, result)
        });
        let (back, result) = match task.await {
            Ok(done) => done,
            Err(join) => {
                let _ = tx.send(Err(status_of(&Refusal::internal(format!("delta round failed: {join}"))))).await;
                break;
            }
        };
        sub = back;
        match result {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                let _ = tx.send(Err(status_of(&e))).await;
                break;
            }
        }
        let rest = sub.interval.saturating_sub(started.elapsed());
        tokio::select! {
            _ = tokio::time::sleep(rest) => {}
            _ = tx.closed() => break,
        }
    }
    gauge!("ember_ps_delta_subscribers").decrement(1.0);
}

/// One round; false when the receiver has gone.
fn round(store: &Store, sub: &mut Subscription, tx: &Sender) -> Result<bool, StoreError> {
    let clock = store.deltas();
    let watermark = clock.cut();
    let stream_id = clock.stream_id();
    let tables: Vec<(String, Arc<SparseTable>)> = if sub.tables.is_empty() {
        store
            .list_tables()
            .into_iter()
            .filter_map(|spec| store.sparse(&spec.name).ok().map(|t| (spec.name, t)))
            .collect()
    } else {
        let mut named = Vec::with_capacity(sub.tables.len());
        for name in &sub.tables {
            named.push((name.clone(), store.sparse(name)?));
        }
        named
    };
    let send = |table: &str, dim: usize, reset: bool, rows: DeltaRows| {
        let batch = v1::DeltaBatch {
            stream_id,
            table: table.to_string(),
            dim: dim as u32,
            reset,
            keys: rows.keys,
            values: f32s_to_bytes(rows.values),
            deleted: rows.deleted,
            watermark: 0,
        };
        tx.blocking_send(Ok(batch)).is_ok()
    };
    for (name, table) in &tables {
        let dim = table.dim();
        // Messages stay under 16 MiB of values however wide the rows.
        let batch_rows = sub.batch_rows.min((MAX_MESSAGE_VALUES / dim.max(1)).max(1));
        let keep = |key: u64| sub.keeps(key);
        let changes = if sub.from == 0 { None } else { table.changes_since(sub.from, &keep)? };
        match changes {
            Some(rows) => {
                counter!("ember_ps_delta_rows_total", "kind" => "changed").increment(rows.keys.len() as u64);
                counter!("ember_ps_delta_rows_total", "kind" => "deleted").increment(rows.deleted.len() as u64);
                for part in split(rows, dim, batch_rows) {
                    if !send(name, dim, false, part) {
                        return Ok(false);
                    }
                }
            }
            None => {
                // Every row, the first batch flagged: the subscriber drops what it held.
                let mut first = true;
                let mut open = true;
                table.snapshot(&keep, batch_rows, &mut |rows| {
                    counter!("ember_ps_delta_rows_total", "kind" => "snapshot").increment(rows.keys.len() as u64);
                    open = send(name, dim, std::mem::take(&mut first), rows);
                    open
                })?;
                if first && open {
                    open = send(name, dim, true, DeltaRows::default());
                }
                if !open {
                    return Ok(false);
                }
            }
        }
    }
    let mark = v1::DeltaBatch { stream_id, watermark, ..Default::default() };
    if tx.blocking_send(Ok(mark)).is_err() {
        return Ok(false);
    }
    sub.from = watermark;
    Ok(true)
}

/// `rows` in messages of at most `batch_rows` rows (deletions go with the first).
fn split(rows: DeltaRows, dim: usize, batch_rows: usize) -> Vec<DeltaRows> {
    if rows.keys.len() <= batch_rows {
        return if rows.is_empty() { Vec::new() } else { vec![rows] };
    }
    let mut parts: Vec<DeltaRows> = rows
        .keys
        .chunks(batch_rows)
        .zip(rows.values.chunks(batch_rows * dim))
        .map(|(keys, values)| DeltaRows { keys: keys.to_vec(), values: values.to_vec(), deleted: Vec::new() })
        .collect();
    parts[0].deleted = rows.deleted;
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_keeps_rows_with_their_values_and_deletions_once() {
        let rows = DeltaRows { keys: (0..5).collect(), values: (0..10).map(|v| v as f32).collect(), deleted: vec![9] };
        let parts = split(rows, 2, 2);
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[2].keys, vec![4]);
        assert_eq!(parts[2].values, vec![8.0, 9.0]);
        assert_eq!(parts.iter().map(|p| p.deleted.len()).sum::<usize>(), 1);
        assert!(split(DeltaRows::default(), 2, 2).is_empty());
    }
}
