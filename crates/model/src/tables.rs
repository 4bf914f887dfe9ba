//! Which ps tables hold a model, and its shape: the part of a job that training creates tables
//! from and that a published model version records for serving.
//!
//! Tables: LR keeps `{prefix}.w` (dim 1, the job's sparse optimizer, zeros): linear weights and
//! the bias. FM and DeepFM keep `{prefix}.wv` instead, one row per key joining the linear weight
//! (a [`RowHead`] with the sparse optimizer, zeros) and the embedding (dim k, the embedding
//! optimizer, N(0, init_stddev)): a batch finds, copies and updates one row per key, not one in
//! each of two tables (+7% examples/s on DeepFM, docs/benchmarks.md). Versions published before
//! that keep `.w` and `.v`, which serving still reads. DeepFM adds dense tables
//! `{prefix}.mlp{i}.w` / `.b` per layer (the dense optimizer), created with the He-uniform start
//! of [`DeepFm::init_dense`].

use ember_core::job::{JobSpec, ModelKind};
use ember_core::{Initializer, RowHead, TableSpec};
use serde::{Deserialize, Serialize};

use crate::model::{DeepFm, FmModel, Grads, IndexedBatch, Layer};

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
    /// Linear weights and bias, dim 1; or the joined table, when `embedding` names it too.
    pub linear: String,
    /// Embeddings, dim k (FM, DeepFM); or, named like `linear`, the joined table of rows
    /// `[w, v_1..v_k]` (dim 1 + k). Versions published before joined rows name two tables.
    pub embedding: Option<String>,
    /// DeepFM: (weights, biases) tables per layer.
    pub dense: Vec<(String, String)>,
    /// The model.
    pub model: Model,
}

/// Where a model's linear weights and embeddings live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SparseLayout<'a> {
    /// LR: linear weights only.
    Linear(&'a str),
    /// One table each (versions published before joined rows).
    Separate {
        /// Dim 1.
        linear: &'a str,
        /// Dim k.
        embedding: &'a str,
    },
    /// One table of rows `[w, v_1..v_k]`.
    Joined(&'a str),
}

/// Splits joined rows (`[w, v_1..v_k]` per key; k = 0 for LR) into the linear weights and the
/// embeddings.
pub fn split_joined(rows: &[f32], k: usize) -> (Vec<f32>, Vec<f32>) {
    let keys = rows.len() / (k + 1);
    let (mut w, mut v) = (Vec::with_capacity(keys), Vec::with_capacity(keys * k));
    for row in rows.chunks_exact(k + 1) {
        w.push(row[0]);
        v.extend_from_slice(&row[1..]);
    }
    (w, v)
}

/// Joins per-key linear and embedding values (`w.len()` keys, `v` k each; k = 0 for LR) into
/// rows `[w, v..]`.
pub fn join_rows(w: &[f32], v: &[f32], k: usize) -> Vec<f32> {
    let mut rows = Vec::with_capacity(w.len() * (k + 1));
    for (i, w) in w.iter().enumerate() {
        rows.push(*w);
        rows.extend_from_slice(&v[i * k..(i + 1) * k]);
    }
    rows
}

/// A table to create, with the starting values of a dense one.
pub type TableToCreate = (TableSpec, Option<Vec<f32>>);

impl ModelTables {
    /// Whether `table` is one of the tables [`ModelTables::for_job`] names under `prefix`.
    pub fn belongs_to(table: &str, prefix: &str) -> bool {
        table.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('.'))
    }

    /// The tables of `job`'s model, with their specs, named under `prefix`.
    pub fn for_job(job: &JobSpec, prefix: &str) -> (Self, Vec<TableToCreate>) {
        let seed = job.training.seed;
        let rule = job.sync.apply_rule(job.cluster.workers);
        let k = job.model.embedding_dim;
        // LR: linear weights alone. FM, DeepFM: each key's weight in front of its embedding.
        let sparse = if job.model.kind == ModelKind::Lr {
            TableSpec::sparse(format!("{prefix}.w"), 1, job.optimizer.sparse).with_initializer(Initializer::Zeros, seed)
        } else {
            let head = RowHead { dim: 1, optimizer: job.optimizer.sparse, initializer: Initializer::Zeros };
            TableSpec::sparse(format!("{prefix}.wv"), 1 + k, job.optimizer.embedding)
                .with_initializer(Initializer::Normal { mean: 0.0, stddev: job.model.init_stddev }, seed)
                .with_head(head)
        }
        .with_policy(job.features)
        .with_sync(rule);
        let mut tables = Self {
            linear: sparse.name.clone(),
            embedding: sparse.head.is_some().then(|| sparse.name.clone()),
            dense: Vec::new(),
            model: Model::Fm(FmModel { k: 0 }),
        };
        let mut specs = vec![(sparse, None)];
        match job.model.kind {
            ModelKind::Lr => {}
            ModelKind::Fm => tables.model = Model::Fm(FmModel { k: k as usize }),
            ModelKind::Deepfm => {
                let deepfm = DeepFm {
                    k: k as usize,
                    fields: job.deepfm_fields() as usize,
                    hidden: job.model.hidden.iter().map(|h| *h as usize).collect(),
                };
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

    /// How the sparse rows are laid out.
    pub fn layout(&self) -> SparseLayout<'_> {
        match &self.embedding {
            None => SparseLayout::Linear(&self.linear),
            Some(e) if *e == self.linear => SparseLayout::Joined(e),
            Some(e) => SparseLayout::Separate { linear: &self.linear, embedding: e },
        }
    }

    /// The sparse tables, each once.
    pub fn sparse_names(&self) -> Vec<&str> {
        match self.layout() {
            SparseLayout::Linear(t) | SparseLayout::Joined(t) => vec![t],
            SparseLayout::Separate { linear, embedding } => vec![linear, embedding],
        }
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

    /// The model's inputs from the rows of its joined sparse table, in key order: (linear
    /// weights, embeddings). LR's rows are its weights, with nothing to split.
    pub fn split_rows(&self, rows: Vec<f32>) -> (Vec<f32>, Vec<f32>) {
        match self.k() {
            0 => (rows, Vec::new()),
            k => split_joined(&rows, k),
        }
    }

    /// The rows of the joined sparse table's gradient, from the model's sparse gradients.
    pub fn joined_grads<'a>(&self, grads: &'a Grads) -> std::borrow::Cow<'a, [f32]> {
        match self.k() {
            0 => std::borrow::Cow::Borrowed(&grads.w[..]),
            k => std::borrow::Cow::Owned(join_rows(&grads.w, &grads.v, k)),
        }
    }

    /// Values in a row of the joined sparse table.
    pub fn row_width(&self) -> usize {
        1 + self.k()
    }

    /// The model's dense layers from its dense tables' values, pulled in [`Self::dense_names`]
    /// order; a table of the wrong size is `(its name, values, values the model needs)`.
    pub fn dense_layers(&self, mut pulled: Vec<Vec<f32>>) -> Result<Vec<Layer>, (String, usize, usize)> {
        let shapes = self.model.dense_shapes();
        if pulled.len() != 2 * shapes.len() {
            let name = self.dense.first().map_or_else(String::new, |(w, _)| w.clone());
            return Err((name, pulled.len(), 2 * shapes.len()));
        }
        let mut layers = Vec::with_capacity(shapes.len());
        for (i, (weights, biases)) in shapes.into_iter().enumerate() {
            let b = std::mem::take(&mut pulled[2 * i + 1]);
            let w = std::mem::take(&mut pulled[2 * i]);
            for (name, got, want) in [(&self.dense[i].0, w.len(), weights), (&self.dense[i].1, b.len(), biases)] {
                if got != want {
                    return Err((name.clone(), got, want));
                }
            }
            layers.push(Layer { w, b });
        }
        Ok(layers)
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

    /// Dense parameters in all (0 for LR and FM).
    pub fn dense_values(&self) -> usize {
        self.dense_shapes().iter().map(|(w, b)| w + b).sum()
    }

    /// One training step's forward and backward over `batch`, with `w` and `v` its keys' rows and
    /// `dense` the dense layers: (probabilities, sparse gradients, dense gradients by layer).
    pub fn train_batch(
        &self,
        batch: &IndexedBatch,
        w: &[f32],
        v: &[f32],
        dense: &[Layer],
    ) -> Result<(Vec<f32>, Grads, Vec<Layer>), String> {
        match self {
            Model::Fm(m) => {
                let (probs, grads) = m.train_batch(batch, w, v);
                Ok((probs, grads, Vec::new()))
            }
            Model::DeepFm(m) => {
                let (probs, g) = m.train_batch(batch, w, v, dense)?;
                Ok((probs, g.sparse, g.dense))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEEPFM: &str = r#"
version = 1
name = "t"
[data]
format = "criteo"
paths = ["x.tsv"]
[model]
kind = "deepfm"
embedding_dim = 4
hidden = [8]
[optimizer.sparse]
kind = "ftrl"
alpha = 0.05
[optimizer.embedding]
kind = "adagrad"
learning_rate = 0.02
[optimizer.dense]
kind = "adam"
learning_rate = 0.001
"#;

    #[test]
    fn fm_and_deepfm_keep_linear_weights_in_front_of_their_embeddings() {
        let job = JobSpec::from_toml(DEEPFM).unwrap();
        let (tables, specs) = ModelTables::for_job(&job, "job");
        assert_eq!(tables.layout(), SparseLayout::Joined("job.wv"));
        assert_eq!(tables.sparse_names(), vec!["job.wv"]);
        let wv = &specs[0].0;
        assert_eq!((wv.name.as_str(), wv.dim, wv.optimizer), ("job.wv", 5, job.optimizer.embedding));
        let head = wv.head.expect("a head for the linear weight");
        assert_eq!((head.dim, head.optimizer, head.initializer), (1, job.optimizer.sparse, Initializer::Zeros));
        assert!(specs.iter().all(|(s, _)| s.name != "job.w" && s.name != "job.v"));
        // LR has no embeddings or dense layers: its job names only the sparse optimizer.
        let lr_text = DEEPFM.replace("\"deepfm\"", "\"lr\"").replace("embedding_dim = 4\nhidden = [8]\n", "");
        let lr_text = &lr_text[..lr_text.find("[optimizer.embedding]").unwrap()];
        let lr = JobSpec::from_toml(lr_text).unwrap();
        let (tables, specs) = ModelTables::for_job(&lr, "job");
        assert_eq!(tables.layout(), SparseLayout::Linear("job.w"));
        assert_eq!(specs.len(), 1);
        // A version published before joined rows names two tables.
        let old = r#"{"linear":"a.w","embedding":"a.v","dense":[],"model":{"fm":{"k":2}}}"#;
        let old: ModelTables = serde_json::from_str(old).unwrap();
        assert_eq!(old.layout(), SparseLayout::Separate { linear: "a.w", embedding: "a.v" });
        // Versions published while the layout was also a flag still read as joined.
        let flagged = r#"{"linear":"a.wv","embedding":"a.wv","joined":true,"dense":[],"model":{"fm":{"k":2}}}"#;
        let flagged: ModelTables = serde_json::from_str(flagged).unwrap();
        assert_eq!(flagged.layout(), SparseLayout::Joined("a.wv"));
    }

    #[test]
    fn joined_rows_split_and_join_back() {
        let (w, v) = (vec![1.0, 2.0], vec![0.1, 0.2, 0.3, 0.4, 0.5, 0.6]);
        let rows = join_rows(&w, &v, 3);
        assert_eq!(rows, vec![1.0, 0.1, 0.2, 0.3, 2.0, 0.4, 0.5, 0.6]);
        assert_eq!(split_joined(&rows, 3), (w, v));
    }
}
