//! `ember bench ps --follow-deltas-ms`: a row-delta follower beside the load, to measure what a
//! replica costs a training server.

use std::time::Instant;

use anyhow::Context;
use ember_client::PsClient;

/// Follows every server's row deltas until `deadline`: (rounds, rows) received.
pub(crate) async fn follow_deltas(client: PsClient, interval_ms: u32, deadline: Instant) -> anyhow::Result<(u64, u64)> {
    let (mut rounds, mut rows) = (0u64, 0u64);
    let mut streams = Vec::new();
    for server in 0..client.endpoints().len() {
        let request = ember_proto::v1::SubscribeDeltasRequest { interval_ms, ..Default::default() };
        streams.push(client.subscribe_deltas(server, request).await?);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for mut stream in streams {
        tasks.spawn(async move {
            let (mut rounds, mut rows) = (0u64, 0u64);
            let until = tokio::time::Instant::from_std(deadline);
            while let Ok(Ok(Some(batch))) = tokio::time::timeout_at(until, stream.message()).await {
                rows += (batch.keys.len() + batch.deleted.len()) as u64;
                rounds += u64::from(batch.watermark != 0);
            }
            (rounds, rows)
        });
    }
    while let Some(done) = tasks.join_next().await {
        let (r, n) = done.context("delta follower")?;
        rounds += r;
        rows += n;
    }
    Ok((rounds, rows))
}
