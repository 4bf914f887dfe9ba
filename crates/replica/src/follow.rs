//! Following one training server's row-delta stream.
//!
//! A round's batches are decoded into per-table layers as they arrive (on the blocking pool) and
//! applied only when the round's watermark message comes, so a stream that breaks mid-round is
//! resumed from the last applied watermark and never half-applied. A malformed batch (values
//! that do not match its keys and width, a non-finite weight) breaks the stream the same way:
//! nothing of its round is applied, and the subscription starts over from the last watermark.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ember_client::PsClient;
use ember_core::TableSpec;
use ember_proto::v1;

use crate::state::{Replica, Round};

/// The longest pause between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Follows server `source` of `client` forever (the task is aborted to stop it).
pub async fn follow(replica: Arc<Replica>, client: PsClient, source: usize, interval: Duration) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let progress = replica.sources()[source].progress();
        let request = v1::SubscribeDeltasRequest {
            tables: Vec::new(),
            stream_id: progress.stream_id,
            from_seq: progress.watermark,
            num_slots: if replica.slots().is_empty() { 0 } else { replica.num_slots() },
            slots: replica.slots().to_vec(),
            interval_ms: interval.as_millis().min(u128::from(u32::MAX)) as u32,
            batch_rows: 0,
        };
        let endpoint = replica.sources()[source].endpoint.clone();
        match client.subscribe_deltas(source, request).await {
            Ok(stream) => {
                replica.sources()[source].progress.lock().connected = true;
                let reason = read_rounds(&replica, &client, source, stream, &mut backoff).await;
                tracing::warn!(%endpoint, %reason, "row-delta stream broke; resuming from the last applied watermark");
            }
            Err(e) => tracing::warn!(%endpoint, error = %e, "cannot subscribe to row deltas; retrying"),
        }
        replica.sources()[source].progress.lock().connected = false;
        metrics::counter!("ember_replica_stream_breaks_total").increment(1);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Applies rounds until the stream ends or fails; returns why it stopped.
async fn read_rounds(
    replica: &Replica,
    client: &PsClient,
    source: usize,
    mut stream: tonic::Streaming<v1::DeltaBatch>,
    backoff: &mut Duration,
) -> String {
    let mut round = Round::default();
    loop {
        let batch = match stream.message().await {
            Ok(Some(b)) => b,
            Ok(None) => return "the server ended the stream".into(),
            Err(status) => return status.message().to_string(),
        };
        let watermark = batch.watermark;
        let stream_id = batch.stream_id;
        round = match tokio::task::spawn_blocking(move || decode(round, batch)).await {
            Ok(Ok(r)) => r,
            Ok(Err(reason)) => {
                metrics::counter!("ember_replica_bad_batches_total").increment(1);
                return format!("malformed batch: {reason}");
            }
            Err(e) => return format!("decoding failed: {e}"),
        };
        if watermark == 0 {
            continue;
        }
        round.stream_id = stream_id;
        round.watermark = watermark;
        let done = std::mem::take(&mut round);
        let specs = match specs_for(replica, client, source, &done, false).await {
            Ok(s) => s,
            Err(reason) => return reason,
        };
        if let Err(reason) = replica.apply(source, done, &specs) {
            return format!("cannot apply a round: {reason}");
        }
        *backoff = Duration::from_millis(50);
    }
}

/// Adds one batch's rows to the round being read.
pub(crate) fn decode(mut round: Round, batch: v1::DeltaBatch) -> Result<Round, String> {
    if batch.keys.is_empty() && batch.deleted.is_empty() && !batch.reset {
        return Ok(round);
    }
    if batch.table.is_empty() {
        return Err("rows without a table name".into());
    }
    let dim = batch.dim as usize;
    if batch.values.len() != batch.keys.len() * dim * 4 || (dim == 0 && !batch.keys.is_empty()) {
        return Err(format!("{} value bytes for {} keys of dim {dim}", batch.values.len(), batch.keys.len()));
    }
    let table = round.tables.entry(batch.table.clone()).or_default();
    if table.dim != 0 && dim != 0 && table.dim != dim {
        return Err(format!("table {}: dim {dim} after dim {} in one round", batch.table, table.dim));
    }
    if dim != 0 {
        table.dim = dim;
    }
    if batch.reset {
        table.reset = true;
        table.rows.clear();
    }
    if table.rows.is_empty() && table.rows.dim() != dim && dim != 0 {
        table.rows = ember_store::replica::Layer::new(dim);
    }
    let mut row = vec![0f32; dim];
    for (i, key) in batch.keys.iter().enumerate() {
        for (v, b) in row.iter_mut().zip(batch.values[i * dim * 4..(i + 1) * dim * 4].chunks_exact(4)) {
            *v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        if let Some(bad) = row.iter().find(|v| !v.is_finite()) {
            return Err(format!("table {}: key {key} has a non-finite weight {bad}", batch.table));
        }
        if !table.rows.put(*key, &row) {
            return Err(format!("table {}: a row of {dim} values in a layer of {}", batch.table, table.rows.dim()));
        }
    }
    for key in &batch.deleted {
        table.rows.delete(*key);
    }
    Ok(round)
}

/// Specs of the round's tables the source does not hold yet (in its versions' tables when
/// `pinned`), from the training server.
pub(crate) async fn specs_for(
    replica: &Replica,
    client: &PsClient,
    source: usize,
    round: &Round,
    pinned: bool,
) -> Result<BTreeMap<String, TableSpec>, String> {
    let unknown = replica.unknown_tables(source, round.tables.keys(), pinned);
    let mut specs = BTreeMap::new();
    if unknown.is_empty() {
        return Ok(specs);
    }
    let listed = client.list_tables().await.map_err(|e| format!("cannot list tables: {e}"))?;
    for spec in listed {
        if unknown.contains(&spec.name) {
            let spec = TableSpec::try_from(spec).map_err(|e| format!("a table spec the server sent: {e}"))?;
            specs.insert(spec.name.clone(), spec);
        }
    }
    Ok(specs)
}
