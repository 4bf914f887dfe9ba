//! Which ps tables hold a model, and its shape: the part of a job that training creates tables
//! from and that a published model version records for serving.
//!
//! Tables: `{prefix}.w` (dim 1, the job's sparse optimizer, zeros) holds linear weights and the
//! bias; FM and DeepFM add `{prefix}.v` (dim k, the embedding optimizer, N(0, init_stddev));
//! DeepFM adds dense tables `{prefix}.mlp{i}.w` / `.b` per layer (the dense optimizer), created
//! with the He-uniform start of [`DeepFm::init_dense`].

use ember_core::job::{JobSpec, ModelKind};
use ember_core::{Initializer, TableSpec};
use serde::{Deserialize, Serialize};

use crate::model::{DeepFm, FmModel, IndexedBatch, Layer};

/// The model a job trains.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Model {
    /// LR (k = 0) or FM.
    Fm(FmModel),
    /// DeepFM.
    DeepFm(DeepFm),
}

/// The tables a model lives in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelTables {
    /// Linear weights and bias, dim 1.
    pub linear: String,
    /// Embeddings, dim k (FM, DeepFM).
    pub embedding: Option<String>,
    /// DeepFM: (weights, biases) tables per layer.
    pub dense: Vec<(String, String)>,
    /// The model.
    pub model: Model,
}

/// A table to create, with the starting values of a dense one.
pub type TableToCreate = (TableSpec, Option<Vec<f32>>);

impl ModelTables {
    /// The tables of `job`'s model, with their specs, named under `prefix`.
    pub fn for_job(job: &JobSpec, prefix: &str) -> (Self, Vec<TableToCreate>) {
        let seed = job.training.seed;
        let rule = job.sync.apply_rule(job.cluster.workers);
        let linear = TableSpec::sparse(format!("{prefix}.w"), 1, job.optimizer.sparse)
            .with_initializer(Initializer::Zeros, seed)
            .with_policy(job.features)
            .with_sync(rule);
        let k = job.model.embedding_dim;
        let init = Initializer::Normal { mean: 0.0, stddev: job.model.init_stddev };
        let emb = TableSpec::sparse(format!("{prefix}.v"), k, job.optimizer.embedding)
            .with_initializer(init, seed)
            .with_policy(job.features)
            .with_sync(rule);
        let mut tables = Self {
            linear: linear.name.clone(),
            embedding: None,
            dense: Vec::new(),
            model: Model::Fm(FmModel { k: 0 }),
        };
        let mut specs = vec![(linear, None)];
        match job.model.kind {
            ModelKind::Lr => {}
            ModelKind::Fm => {
                tables.embedding = Some(emb.name.clone());
                tables.model = Model::Fm(FmModel { k: k as usize });
                specs.push((emb, None));
            }
            ModelKind::Deepfm => {
                let deepfm = DeepFm {
                    k: k as usize,
                    fields: job.deepfm_fields() as usize,
                    hidden: job.model.hidden.iter().map(|h| *h as usize).collect(),
                };
                tables.embedding = Some(emb.name.clone());
                specs.push((emb, None));
                for (i, layer) in deepfm.init_dense(seed).into_iter().enumerate() {
                    let (wn, bn) = (format!("{prefix}.mlp{i}.w"), format!("{prefix}.mlp{i}.b"));
                    let dense = |name: &str, len: usize| {
                        TableSpec::dense(name, len as u32, job.optimizer.dense).with_sync(rule)
                    };
                    specs.push((dense(&wn, layer.w.len()), Some(layer.w)));
                    specs.push((dense(&bn, layer.b.len()), Some(layer.b)));
                    tables.dense.push((wn, bn));
                }
                tables.model = Model::DeepFm(deepfm);
            }
        }
        (tables, specs)
    }

    /// Embedding width (0 for LR).
    pub fn k(&self) -> usize {
        match &self.model {
            Model::Fm(m) => m.k,
            Model::DeepFm(m) => m.k,
        }
    }

    /// The dense tables in parameter order: layer 0 weights, layer 0 biases, layer 1 ...
    pub fn dense_names(&self) -> Vec<&str> {
        self.dense.iter().flat_map(|(w, b)| [w.as_str(), b.as_str()]).collect()
    }
}

impl Model {
    /// Probabilities of `batch`, with `w` and `v` its keys' rows and `dense` the MLP (DeepFM).
    pub fn predict(&self, batch: &IndexedBatch, w: &[f32], v: &[f32], dense: &[Layer]) -> Result<Vec<f32>, String> {
        match self {
            Model::Fm(m) => Ok(m.predict(batch, w, v)),
            Model::DeepFm(m) => m.predict(batch, w, v, dense),
        }
    }

    /// (values of the weights, values of the biases) of each dense layer; empty for LR and FM.
    pub fn dense_shapes(&self) -> Vec<(usize, usize)> {
        match self {
            Model::Fm(_) => Vec::new(),
            Model::DeepFm(m) => m.layer_shapes().into_iter().map(|(i, o)| (i * o, o)).collect(),
        }
    }
}
