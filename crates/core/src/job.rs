//! Job files: what to train, on what, with which cluster. TOML, versioned, unknown keys rejected,
//! validated after parsing (see docs/jobs.md for one example per model).

use serde::{Deserialize, Serialize};

use crate::Optimizer;

/// The only job-file version this build reads.
pub const JOB_VERSION: u32 = 1;

/// Limits on what one job file may ask for. Each bounds memory or messages that grow with a
/// value a user typed: a job travels in every work item (so its size bounds those messages),
/// a batch is allocated whole, DeepFM's dense layers are allocated on every worker and server.
pub mod limits {
    /// Bytes of job-file text.
    pub const JOB_BYTES: usize = 256 << 10;
    /// Characters of the job's name.
    pub const NAME_CHARS: usize = 200;
    /// Entries of `data.paths`.
    pub const PATHS: usize = 1024;
    /// Bytes of one path or glob.
    pub const PATH_BYTES: usize = 4096;
    /// Examples per batch.
    pub const BATCH_SIZE: usize = 1 << 16;
    /// Passes over the data.
    pub const EPOCHS: u32 = 10_000;
    /// Hidden layers of DeepFM's MLP.
    pub const HIDDEN_LAYERS: usize = 8;
    /// Width of one hidden layer.
    pub const LAYER_WIDTH: u32 = 8192;
    /// Fields feeding DeepFM's MLP.
    pub const FIELDS: u32 = 4096;
    /// Weights of DeepFM's MLP in all (64 MiB of f32, three times that with Adam's state).
    pub const DENSE_PARAMS: u64 = 16 << 20;
    /// ps-servers and workers of an embedded run.
    pub const CLUSTER_MEMBERS: u32 = 64;
    /// Model versions kept by publishing.
    pub const PUBLISH_KEEP: u32 = 1000;
}

/// A whole job.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Must be [`JOB_VERSION`].
    pub version: u32,
    /// Free-form name for reports.
    #[serde(default)]
    pub name: String,
    /// Input data.
    pub data: DataSpec,
    /// The model.
    pub model: ModelSpec,
    /// Optimizers per kind of table.
    #[serde(default)]
    pub optimizer: OptimizerSpecs,
    /// Cluster shape for embedded runs.
    #[serde(default)]
    pub cluster: ClusterSpec,
    /// Training loop.
    #[serde(default)]
    pub training: TrainingSpec,
    /// Feature admission and eviction on the sparse tables (all rules off by default).
    #[serde(default)]
    pub features: crate::FeaturePolicy,
    /// Cluster checkpoints the scheduler takes during the job (all off by default).
    #[serde(default)]
    pub checkpoint: CheckpointSpec,
    /// Model versions published for serving (off unless a model dir is set).
    #[serde(default)]
    pub publish: PublishSpec,
    /// Gradient compression on the wire (none by default).
    #[serde(default)]
    pub compression: CompressionSpec,
    /// How workers synchronize and servers apply gradients (`async` by default).
    #[serde(default)]
    pub sync: crate::sync::SyncSpec,
}

/// How workers encode the gradients they push (see [`crate::codec`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompressionSpec {
    /// DeepFM's dense layers: `none`, `fp16` or `onebit`.
    pub dense: crate::codec::Compression,
    /// Sparse rows (linear weights and embeddings).
    pub sparse: crate::codec::Compression,
}

/// Where and how often training publishes model versions for serving.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PublishSpec {
    /// The model directory; empty turns publishing off (`ember train --model-dir` sets it).
    pub model_dir: String,
    /// A version every this many rows trained (0: off).
    pub every: u64,
    /// A version every this many seconds of training (0: off). With neither, only at the end.
    pub every_seconds: f64,
    /// Versions kept in the directory.
    pub keep: u32,
    /// The quality check a version must pass to be made current (none: every version is).
    pub gate: Option<GateSpec>,
}

impl Default for PublishSpec {
    fn default() -> Self {
        Self { model_dir: String::new(), every: 0, every_seconds: 0.0, keep: 5, gate: None }
    }
}

/// What a version must show to be made current, judged on the rows trained since the previous
/// version, each predicted before it was trained on (progressive validation). A version that
/// fails is written but held: never made current, listed with the reason.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct GateSpec {
    /// The AUC may fall at most this far below that of the last version made current.
    pub max_auc_drop: f64,
    /// The logloss must be below that of always predicting the positive rate.
    pub beat_baseline: bool,
    /// A version is due only once this many rows were trained since the previous one (fewer
    /// are too little evidence to judge).
    pub min_rows: u64,
}

impl Default for GateSpec {
    fn default() -> Self {
        Self { max_auc_drop: 0.02, beat_baseline: true, min_rows: 1000 }
    }
}

/// When the scheduler checkpoints every ps-server during a job, in rows trained; 0 is off.
/// Each checkpoint is labeled with the job's rows trained when it was taken.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckpointSpec {
    /// An incremental checkpoint every this many rows trained.
    pub incremental_every: u64,
    /// A full checkpoint every this many rows trained (takes precedence when both are due).
    pub full_every: u64,
}

impl CheckpointSpec {
    /// The checkpoint due after training went from `before` to `after` rows: `Some(true)` for
    /// full, `Some(false)` for incremental, `None` if none is.
    pub fn due(&self, before: u64, after: u64) -> Option<bool> {
        let crossed = |every: u64| every > 0 && after / every > before / every;
        if crossed(self.full_every) {
            Some(true)
        } else if crossed(self.incremental_every) {
            Some(false)
        } else {
            None
        }
    }
}

/// Input file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DataFormat {
    /// Criteo TSV: label, I1-I13, C1-C26; empty cells allowed.
    Criteo,
    /// `label idx:value ...` (label 1/0 or 1/-1).
    Libsvm,
    /// `label field:idx:value ...`.
    Libffm,
    /// CSV with a header and a `[data.schema]`.
    Csv,
}

/// Where samples come from and how they are split.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    /// File format.
    pub format: DataFormat,
    /// Files or globs (`.gz` files are decompressed), read in sorted order.
    pub paths: Vec<String>,
    /// Fraction of rows, taken from the end of the data, held out for testing.
    #[serde(default = "default_test_split")]
    pub test_split: f64,
    /// The job fails once more than this fraction of lines is malformed.
    #[serde(default = "default_max_bad_ratio")]
    pub max_bad_ratio: f64,
    /// CSV only: what each column is.
    pub schema: Option<CsvSchema>,
    /// `files` (read once) or `follow` (a directory that keeps receiving files).
    #[serde(default)]
    pub source: DataSource,
    /// A `follow` source's settings.
    #[serde(default)]
    pub follow: FollowSpec,
}

impl DataSpec {
    /// `format` with no paths and every other key at its default (for readers built outside a
    /// job: benches, serving's request parsing, fuzzing).
    pub fn of(format: DataFormat, schema: Option<CsvSchema>) -> Self {
        Self {
            format,
            paths: Vec::new(),
            test_split: default_test_split(),
            max_bad_ratio: default_max_bad_ratio(),
            schema,
            source: DataSource::default(),
            follow: FollowSpec::default(),
        }
    }
}

/// Where a job's rows come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DataSource {
    /// The files `paths` matches when the job is submitted, read once (per epoch).
    #[default]
    Files,
    /// Files matching `paths` as they keep arriving (as a stream processor's file sink writes
    /// them: a file counts once it is renamed into place; names starting with `.` or `_` are
    /// in progress), each read once in name order, until `ember stop` or
    /// `follow.idle_seconds` without a new file. No hold-out split: every window is evaluated
    /// before it is trained on.
    Follow,
}

/// How a `follow` source polls and cuts its files.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct FollowSpec {
    /// How often the scheduler looks for new files, in milliseconds.
    pub poll_ms: u64,
    /// A work item (a window) holds at most this many rows; a file is cut into windows, and
    /// no window spans two files.
    pub window_rows: u64,
    /// The job ends once every file found is trained and no new one has appeared for this
    /// long (0: never; the job runs until `ember stop`).
    pub idle_seconds: f64,
}

impl Default for FollowSpec {
    fn default() -> Self {
        Self { poll_ms: 500, window_rows: 65_536, idle_seconds: 0.0 }
    }
}

/// Column roles of a CSV file. Every header column must be named in exactly one role.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CsvSchema {
    /// Field separator (one character); whitespace around fields is trimmed.
    #[serde(default = "default_delimiter")]
    pub delimiter: char,
    /// Column names for files without a header line; when absent, each file's first line is
    /// its header.
    pub columns: Option<Vec<String>>,
    /// The label column; a row is positive when its value is one of `positive`.
    pub label: String,
    /// Label values counted as positive (default `1`).
    #[serde(default = "default_positive")]
    pub positive: Vec<String>,
    /// Categorical columns: hashed as (column, value).
    #[serde(default)]
    pub categorical: Vec<String>,
    /// Numeric columns: bucketized like Criteo integers, then hashed.
    #[serde(default)]
    pub numeric: Vec<String>,
    /// Columns to skip.
    #[serde(default)]
    pub ignore: Vec<String>,
}

/// Model families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// Logistic regression.
    Lr,
    /// Factorization machine (2-way).
    Fm,
    /// DeepFM: FM plus an MLP over the concatenated field embeddings.
    Deepfm,
}

/// The model and its sizes.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Family.
    pub kind: ModelKind,
    /// Embedding width for FM / DeepFM.
    #[serde(default = "default_embedding_dim")]
    pub embedding_dim: u32,
    /// DeepFM hidden layer widths.
    #[serde(default = "default_hidden")]
    pub hidden: Vec<u32>,
    /// Fields feeding DeepFM's MLP. Default: 39 for criteo, the categorical + numeric columns for
    /// csv, 1 for libsvm; required for libffm (field numbers must be below it).
    pub fields: Option<u32>,
    /// Standard deviation of new embedding rows.
    #[serde(default = "default_init_stddev")]
    pub init_stddev: f32,
}

/// Optimizers per table kind.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerSpecs {
    /// Linear (first-order) weights.
    #[serde(default = "default_linear_optimizer")]
    pub sparse: Optimizer,
    /// Embedding rows (FM / DeepFM).
    #[serde(default = "default_embedding_optimizer")]
    pub embedding: Optimizer,
    /// Dense parameters (DeepFM's MLP).
    #[serde(default = "default_dense_optimizer")]
    pub dense: Optimizer,
}

impl Default for OptimizerSpecs {
    fn default() -> Self {
        Self {
            sparse: default_linear_optimizer(),
            embedding: default_embedding_optimizer(),
            dense: default_dense_optimizer(),
        }
    }
}

/// Cluster shape of an embedded run.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    /// ps-servers.
    #[serde(default = "one")]
    pub ps: u32,
    /// Workers.
    #[serde(default = "one")]
    pub workers: u32,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        Self { ps: 1, workers: 1 }
    }
}

/// The training loop.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingSpec {
    /// Examples per mini-batch.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Passes over the training split.
    #[serde(default = "one")]
    pub epochs: u32,
    /// Seeds table initializers.
    #[serde(default = "one_u64")]
    pub seed: u64,
}

impl Default for TrainingSpec {
    fn default() -> Self {
        Self { batch_size: default_batch(), epochs: 1, seed: 1 }
    }
}

fn default_test_split() -> f64 {
    0.1
}
fn default_max_bad_ratio() -> f64 {
    0.01
}
fn default_delimiter() -> char {
    ','
}
fn default_positive() -> Vec<String> {
    vec!["1".into()]
}
fn default_embedding_dim() -> u32 {
    8
}
fn default_hidden() -> Vec<u32> {
    vec![256, 128]
}
fn default_init_stddev() -> f32 {
    0.01
}
fn default_linear_optimizer() -> Optimizer {
    Optimizer::Ftrl { alpha: 0.05, beta: 1.0, l1: 1.0, l2: 1.0 }
}
fn default_embedding_optimizer() -> Optimizer {
    Optimizer::Adagrad { learning_rate: 0.05, initial_accumulator: 0.1, epsilon: 1e-7 }
}
fn default_dense_optimizer() -> Optimizer {
    Optimizer::Adam { learning_rate: 1e-3, beta1: 0.9, beta2: 0.999, epsilon: 1e-8 }
}
fn default_batch() -> usize {
    512
}
fn one() -> u32 {
    1
}
fn one_u64() -> u64 {
    1
}

mod parse;

pub use parse::JobError;

#[cfg(test)]
mod tests;
