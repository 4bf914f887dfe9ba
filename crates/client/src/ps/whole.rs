//! Calls on every server's whole state: checkpoints, row-delta cuts and streams, exports.

use ember_core::codec::read_f32s_le;
use ember_proto::v1;
use futures_util::future::try_join_all;

use super::PsClient;
use crate::ClientError;

impl PsClient {
    /// Checkpoints every server (concurrently); one reply per server, in shard-map order.
    pub async fn checkpoint(&self, full: bool, label: u64) -> Result<Vec<v1::CheckpointResponse>, ClientError> {
        let calls = self.servers.iter().enumerate().map(|(server, client)| {
            let mut client = client.clone();
            async move {
                client
                    .checkpoint(v1::CheckpointRequest { full, label })
                    .await
                    .map(|r| r.into_inner())
                    .map_err(self.rpc_err(server))
            }
        });
        try_join_all(calls).await
    }

    /// Returns every server to its checkpoint `ids[i]` (concurrently; `ids` in shard-map order,
    /// one per server). One reply per server; the first failure is returned.
    pub async fn restore(&self, ids: &[u64]) -> Result<Vec<v1::RestoreResponse>, ClientError> {
        if ids.len() != self.servers.len() {
            return Err(ClientError::Protocol {
                endpoint: String::new(),
                reason: format!("{} checkpoint ids for {} servers", ids.len(), self.servers.len()),
            });
        }
        let calls = self.servers.iter().zip(ids).enumerate().map(|(server, (client, &id))| {
            let mut client = client.clone();
            async move {
                client.restore(v1::RestoreRequest { id }).await.map(|r| r.into_inner()).map_err(self.rpc_err(server))
            }
        });
        try_join_all(calls).await
    }

    /// Cuts every server's row-delta stream: (stream id, seq) per server, in shard-map order.
    /// Every change a server made before the call is at or below its seq.
    pub async fn cut_deltas(&self) -> Result<Vec<(u64, u64)>, ClientError> {
        let calls = self.servers.iter().enumerate().map(|(server, client)| {
            let mut client = client.clone();
            async move {
                client
                    .cut_deltas(v1::CutDeltasRequest {})
                    .await
                    .map(|r| {
                        let r = r.into_inner();
                        (r.stream_id, r.seq)
                    })
                    .map_err(self.rpc_err(server))
            }
        });
        try_join_all(calls).await
    }

    /// Opens server `server`'s row-delta stream (`SubscribeDeltas`): rounds of batches, each
    /// closed by a message carrying its watermark. The stream runs until dropped.
    pub async fn subscribe_deltas(
        &self,
        server: usize,
        request: v1::SubscribeDeltasRequest,
    ) -> Result<tonic::Streaming<v1::DeltaBatch>, ClientError> {
        let Some(client) = self.servers.get(server) else {
            return Err(ClientError::InvalidArgument(format!("no server {server} of {}", self.servers.len())));
        };
        let reply = client.clone().subscribe_deltas(request).await.map_err(self.rpc_err(server))?;
        Ok(reply.into_inner())
    }

    /// Opens server `server`'s stream of a checkpoint chain's sparse weights (`ReadCheckpoints`):
    /// batches as `subscribe_deltas` sends them, then one message carrying `upto_id`.
    pub async fn read_checkpoints(
        &self,
        server: usize,
        request: v1::ReadCheckpointsRequest,
    ) -> Result<tonic::Streaming<v1::DeltaBatch>, ClientError> {
        let Some(client) = self.servers.get(server) else {
            return Err(ClientError::InvalidArgument(format!("no server {server} of {}", self.servers.len())));
        };
        let reply = client.clone().read_checkpoints(request).await.map_err(self.rpc_err(server))?;
        Ok(reply.into_inner())
    }

    /// Every row of a sparse table from every server: (dim, keys, weights), sorted by key, each
    /// key once. A tiered server may send a key twice (its disk copy, then its DRAM row): the
    /// later one is kept.
    pub async fn export(&self, table: &str) -> Result<(usize, Vec<u64>, Vec<f32>), ClientError> {
        let (mut dim, mut keys, mut values) = (0usize, Vec::new(), Vec::new());
        for (server, client) in self.servers.iter().enumerate() {
            let mut client = client.clone();
            let request = v1::ExportRequest { table: table.to_string() };
            let mut stream = client.export(request).await.map_err(self.rpc_err(server))?.into_inner();
            while let Some(chunk) = stream.message().await.map_err(self.rpc_err(server))? {
                dim = chunk.dim as usize;
                if chunk.values.len() != chunk.keys.len() * dim * 4 {
                    let reason =
                        format!("export chunk of {} keys has {} value bytes", chunk.keys.len(), chunk.values.len());
                    return Err(self.protocol(server, reason));
                }
                let before = values.len();
                values.resize(before + chunk.keys.len() * dim, 0.0);
                read_f32s_le(&chunk.values, &mut values[before..]);
                keys.extend_from_slice(&chunk.keys);
            }
        }
        // Stable: for a repeated key the last arrival ends its run.
        let mut order: Vec<u32> = (0..keys.len() as u32).collect();
        order.sort_by_key(|i| keys[*i as usize]);
        let (mut sorted_keys, mut sorted_values) = (Vec::with_capacity(keys.len()), Vec::with_capacity(values.len()));
        for (n, &i) in order.iter().enumerate() {
            let key = keys[i as usize];
            if order.get(n + 1).is_some_and(|next| keys[*next as usize] == key) {
                continue;
            }
            sorted_keys.push(key);
            sorted_values.extend_from_slice(&values[i as usize * dim..(i as usize + 1) * dim]);
        }
        Ok((dim, sorted_keys, sorted_values))
    }
}
