//! Versions that differ by many sparse rows, for `ember bench serve --swap-every`: before each
//! publish, gradients for `--swap-rows` random rows of a `--swap-keys` key space are pushed to the
//! ps-servers and those are checkpointed, and the new version names the new checkpoints (its
//! sparse state), so replicas serving it pinned read that many changed rows per version. The
//! key space can be preloaded first (`--swap-preload`), so the table is large before the run.

use anyhow::Context;
use ember_client::{Credentials, PsClient, ShardMap};
use ember_core::SplitMix64;
use ember_model::ModelDir;

/// Keys of the key space: spread over every slot.
fn key(i: u64) -> u64 {
    i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5EED
}

/// Rows per pull or push.
const CHUNK: usize = 65_536;

/// Changes rows of one table between versions.
pub struct RowChanger {
    client: PsClient,
    table: String,
    rows: u64,
    keys: u64,
    rng: SplitMix64,
}

impl RowChanger {
    /// A changer of `rows` rows of `table` (among `keys` keys) on `ps`.
    pub async fn connect(
        ps: &[String],
        credentials: &Credentials,
        table: String,
        rows: u64,
        keys: u64,
    ) -> anyhow::Result<Self> {
        let map = ShardMap::round_robin(ps.to_vec(), 1024).context("--swap-ps needs an address")?;
        let client = PsClient::connect(map, credentials).await?;
        Ok(Self { client, table, rows, keys: keys.max(1), rng: SplitMix64::new(17) })
    }

    /// Creates every row of the key space (a training read creates missing rows).
    pub async fn preload(&self) -> anyhow::Result<u64> {
        let keys: Vec<u64> = (0..self.keys).map(key).collect();
        for chunk in keys.chunks(CHUNK) {
            self.client.pull(&self.table, chunk).await?;
        }
        Ok(self.keys)
    }

    /// Pushes gradients for `rows` random rows, then checkpoints every server: the ids, in
    /// shard-map order.
    pub async fn change_and_checkpoint(&mut self, label: u64) -> anyhow::Result<Vec<u64>> {
        let mut left = self.rows;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            let keys: Vec<u64> = (0..n).map(|_| key(self.rng.below(self.keys))).collect();
            let pulled = self.client.pull(&self.table, &keys).await?;
            let grads: Vec<f32> = (0..n * pulled.dim).map(|_| self.rng.next_f32() - 0.5).collect();
            self.client.push(&self.table, &keys, &grads, &pulled.clock).await?;
            left -= n as u64;
        }
        let replies = self.client.checkpoint(false, label).await?;
        Ok(replies.iter().map(|r| r.id).collect())
    }
}

/// Publishes the current version's parameters as a new version, naming `checkpoints` as its
/// sparse state when given; returns its number.
pub fn republish(dir: &ModelDir, checkpoints: Option<Vec<u64>>) -> anyhow::Result<u64> {
    let current = dir.current()?.context("the model directory has no version")?;
    let mut m = dir.load(current)?;
    if let Some(ids) = checkpoints {
        m.manifest.sparse_checkpoints = ids;
    }
    Ok(dir.publish(m.manifest, &m.dense, 10)?)
}
