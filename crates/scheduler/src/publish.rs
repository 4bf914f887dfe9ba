//! Publishing a model version for serving: the dense parameters as the ps-servers hold them now,
//! with the model's tables, input schema and step, into a model directory.
//!
//! When the ps-servers have data dirs, each publish first takes an incremental checkpoint labeled
//! with the step, and the manifest names it: the version's dense part and the sparse rows it was
//! published with can then be restored together. Servers without a data dir refuse checkpoints
//! (FailedPrecondition), and the manifest then names none. Before either, each server's row-delta
//! stream is cut, and the manifest records the cuts. It also records each server's checkpoint
//! id: the chain ending there is the version's sparse part, which replicas read to serve the
//! version exactly.

use ember_client::{ClientError, PsClient};
use ember_core::job::JobSpec;
use ember_model::model::Layer;
use ember_model::{InputSchema, ModelDir, ModelManifest, ModelTables, RegistryError, SparseCut, TableToCreate};

/// Why a publish failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Reading the dense tables (or checkpointing) failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Writing the version failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The servers' dense tables do not have the model's shapes.
    #[error("dense table {0} has {1} values, the model needs {2}")]
    Shape(String, usize, usize),
}

/// What a job publishes, fixed for its whole run.
#[derive(Debug, Clone)]
pub struct Publisher {
    dir: ModelDir,
    keep: usize,
    name: String,
    job: String,
    tables: ModelTables,
    specs: Vec<ember_core::TableSpec>,
    data_format: ember_core::job::DataFormat,
    schema: InputSchema,
}

impl Publisher {
    /// Publishes `tables` (created from `specs`) of `job` into `dir`.
    pub fn new(
        dir: ModelDir,
        job: &JobSpec,
        job_id: &str,
        tables: ModelTables,
        specs: &[TableToCreate],
        schema: InputSchema,
    ) -> Self {
        Self {
            dir,
            keep: job.publish.keep.max(1) as usize,
            name: if job.name.is_empty() { "default".into() } else { job.name.clone() },
            job: job_id.into(),
            tables,
            specs: specs
                .iter()
                .filter(|(s, _)| s.kind == ember_core::TableKind::Sparse)
                .map(|(s, _)| s.clone())
                .collect(),
            data_format: job.data.format,
            schema,
        }
    }

    /// Publishes the model as the servers hold it after `rows_trained` rows; returns the version.
    /// A version `held` by the publish gate (the reason) is written but not made current.
    pub async fn publish(
        &self,
        client: &PsClient,
        rows_trained: u64,
        held: Option<String>,
    ) -> Result<u64, PublishError> {
        use tracing::Instrument;
        // One trace: the cut, the checkpoint and the dense pull on every server are its children.
        self.publish_now(client, rows_trained, held).instrument(ember_proto::trace::root_span("publish")).await
    }

    async fn publish_now(
        &self,
        client: &PsClient,
        rows_trained: u64,
        held: Option<String>,
    ) -> Result<u64, PublishError> {
        // The sparse cut first: the checkpoint and the dense pull after it hold at least as much.
        let sparse_cuts =
            client.cut_deltas().await?.into_iter().map(|(stream_id, seq)| SparseCut { stream_id, seq }).collect();
        let (checkpoint, sparse_checkpoints) = match client.checkpoint(false, rows_trained).await {
            Ok(replies) => (Some(rows_trained), replies.iter().map(|r| r.id).collect()),
            Err(e) if e.code() == Some(tonic::Code::FailedPrecondition) => (None, Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let names = self.tables.dense_names();
        let pulled = if names.is_empty() { Vec::new() } else { client.pull_dense(&names).await? };
        let shapes = self.tables.model.dense_shapes();
        let mut dense = Vec::with_capacity(shapes.len());
        let mut values = pulled.into_iter().map(|(v, _)| v);
        for (i, (w_len, b_len)) in shapes.into_iter().enumerate() {
            let (w, b) = (values.next().unwrap_or_default(), values.next().unwrap_or_default());
            for (name, got, want) in [(&names[2 * i], w.len(), w_len), (&names[2 * i + 1], b.len(), b_len)] {
                if got != want {
                    return Err(PublishError::Shape(name.to_string(), got, want));
                }
            }
            dense.push(Layer { w, b });
        }
        let manifest = ModelManifest {
            format: 0,
            version: 0,
            name: self.name.clone(),
            job: self.job.clone(),
            rows_trained,
            created_unix_ms: 0,
            tables: self.tables.clone(),
            sparse_tables: self.specs.clone(),
            data_format: self.data_format,
            schema: self.schema.clone(),
            checkpoint,
            sparse_cuts,
            sparse_checkpoints,
            dense_values: 0,
            dense_xxh3: 0,
            held: held.clone(),
        };
        let (dir, keep) = (self.dir.clone(), self.keep);
        let version =
            tokio::task::spawn_blocking(move || dir.publish(manifest, &dense, keep)).await.map_err(|e| {
                RegistryError::Io { path: self.dir.root().to_path_buf(), source: std::io::Error::other(e) }
            })??;
        match &held {
            None => {
                tracing::info!(version, rows_trained, dir = %self.dir.root().display(), "published a model version")
            }
            Some(reason) => tracing::warn!(version, rows_trained, %reason, "model version held by the publish gate"),
        }
        Ok(version)
    }
}
