//! Reading a job file: TOML into a [`JobSpec`], keys no part of the job uses refused, then every
//! value checked against the model, the data and [`super::limits`].

use super::{limits, DataFormat, DataSource, JobSpec, ModelKind, JOB_VERSION};

/// Why a job file was refused.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Not valid TOML, a wrong type, or an unknown key.
    #[error("job file: {0}")]
    Parse(#[from] toml::de::Error),
    /// Parsed, but the values do not make a runnable job.
    #[error("job file: {0}")]
    Invalid(String),
}

impl JobSpec {
    /// Fields feeding DeepFM's MLP (see [`ModelSpec::fields`]).
    pub fn deepfm_fields(&self) -> u32 {
        self.model.fields.unwrap_or(match self.data.format {
            DataFormat::Criteo => 39,
            DataFormat::Csv => self.data.schema.as_ref().map_or(1, |s| (s.categorical.len() + s.numeric.len()) as u32),
            DataFormat::Libsvm | DataFormat::Libffm => 1,
        })
    }

    /// Parses and validates a job file's text.
    pub fn from_toml(text: &str) -> Result<Self, JobError> {
        if text.len() > limits::JOB_BYTES {
            return Err(JobError::Invalid(format!(
                "{} bytes; a job file is at most {} bytes",
                text.len(),
                limits::JOB_BYTES
            )));
        }
        let raw: toml::Table = toml::from_str(text)?;
        let job: JobSpec = toml::from_str(text)?;
        job.validate()?;
        job.refuse_unused(&raw)?;
        Ok(job)
    }

    /// Refuses sections that the model would silently ignore: a user who tunes a dense
    /// optimizer for LR believes it does something.
    fn refuse_unused(&self, raw: &toml::Table) -> Result<(), JobError> {
        let section =
            |outer: &str, inner: &str| raw.get(outer).and_then(|t| t.as_table()).is_some_and(|t| t.contains_key(inner));
        let (dense, embedding) = match self.model.kind {
            ModelKind::Lr => (false, false),
            ModelKind::Fm => (false, true),
            ModelKind::Deepfm => (true, true),
        };
        let follow = self.data.source == DataSource::Follow;
        if follow && section("data", "test_split") {
            return Err(JobError::Invalid(
                "data.test_split has no effect with source = \"follow\": a stream has no hold-out split, each \
                 window is evaluated before it is trained on; remove it"
                    .into(),
            ));
        }
        if !follow && section("data", "follow") {
            return Err(JobError::Invalid("[data.follow] has no effect without source = \"follow\"; remove it".into()));
        }
        let kind = format!("{:?}", self.model.kind).to_lowercase();
        for (used, outer, inner, what) in [
            (dense, "optimizer", "dense", "dense layers"),
            (dense, "model", "hidden", "hidden layers"),
            (dense, "model", "fields", "MLP over fields"),
            (dense, "compression", "dense", "dense layers"),
            (embedding, "optimizer", "embedding", "embeddings"),
            (embedding, "model", "embedding_dim", "embeddings"),
        ] {
            if !used && section(outer, inner) {
                return Err(JobError::Invalid(format!(
                    "{outer}.{inner} has no effect: model kind {kind} has no {what}; remove it"
                )));
            }
        }
        Ok(())
    }

    /// A `follow` source's bounds; it reads each file once, so one epoch.
    fn validate_follow(&self) -> Result<(), JobError> {
        let f = &self.data.follow;
        let bad = |msg: String| Err(JobError::Invalid(msg));
        if !(10..=3_600_000).contains(&f.poll_ms) {
            return bad(format!("data.follow.poll_ms must be in 10..=3600000, got {}", f.poll_ms));
        }
        if !(1..=1 << 20).contains(&f.window_rows) {
            return bad(format!("data.follow.window_rows must be in 1..=1048576, got {}", f.window_rows));
        }
        if !(f.idle_seconds.is_finite() && f.idle_seconds >= 0.0) {
            return bad(format!("data.follow.idle_seconds must be >= 0, got {}", f.idle_seconds));
        }
        if self.data.source == DataSource::Follow && self.training.epochs != 1 {
            return bad(format!(
                "training.epochs = {} with a follow source: it reads each file once (epochs = 1)",
                self.training.epochs
            ));
        }
        Ok(())
    }

    /// Weights of DeepFM's MLP: fields x embedding_dim inputs, the hidden layers, one output.
    fn dense_params(&self) -> u64 {
        let input = u64::from(self.deepfm_fields()) * u64::from(self.model.embedding_dim);
        let widths = std::iter::once(input).chain(self.model.hidden.iter().map(|&h| u64::from(h))).chain([1]);
        let widths: Vec<u64> = widths.collect();
        widths.windows(2).map(|w| w[0] * w[1] + w[1]).fold(0u64, u64::saturating_add)
    }

    /// The bounds of [`limits`] on names, paths, sizes and counts.
    fn check_limits(&self) -> Result<(), JobError> {
        let over = |what: &str, got: String, limit: String| {
            Err(JobError::Invalid(format!("{what} is {got}; the limit is {limit}")))
        };
        let name_chars = self.name.chars().count();
        if name_chars > limits::NAME_CHARS {
            return over("name", format!("{name_chars} characters"), limits::NAME_CHARS.to_string());
        }
        if self.name.chars().any(char::is_control) {
            return Err(JobError::Invalid("name holds control characters".into()));
        }
        if self.data.paths.len() > limits::PATHS {
            return over("data.paths", format!("{} entries", self.data.paths.len()), limits::PATHS.to_string());
        }
        if let Some(p) = self.data.paths.iter().find(|p| p.len() > limits::PATH_BYTES || p.is_empty()) {
            return Err(JobError::Invalid(format!(
                "data.paths holds a path of {} bytes; paths are 1 to {} bytes",
                p.len(),
                limits::PATH_BYTES
            )));
        }
        let t = &self.training;
        if t.batch_size > limits::BATCH_SIZE {
            return over("training.batch_size", t.batch_size.to_string(), limits::BATCH_SIZE.to_string());
        }
        if t.epochs > limits::EPOCHS {
            return over("training.epochs", t.epochs.to_string(), limits::EPOCHS.to_string());
        }
        let c = &self.cluster;
        if c.ps > limits::CLUSTER_MEMBERS || c.workers > limits::CLUSTER_MEMBERS {
            return over(
                "cluster.ps / cluster.workers",
                format!("{} / {}", c.ps, c.workers),
                limits::CLUSTER_MEMBERS.to_string(),
            );
        }
        if self.publish.keep == 0 || self.publish.keep > limits::PUBLISH_KEEP {
            return over("publish.keep", self.publish.keep.to_string(), format!("1..={}", limits::PUBLISH_KEEP));
        }
        if self.model.kind == ModelKind::Deepfm {
            let m = &self.model;
            if m.hidden.len() > limits::HIDDEN_LAYERS {
                return over("model.hidden", format!("{} layers", m.hidden.len()), limits::HIDDEN_LAYERS.to_string());
            }
            if let Some(w) = m.hidden.iter().find(|&&w| w > limits::LAYER_WIDTH) {
                return over("a model.hidden layer", format!("{w} wide"), limits::LAYER_WIDTH.to_string());
            }
            if self.deepfm_fields() > limits::FIELDS {
                return over("model.fields", self.deepfm_fields().to_string(), limits::FIELDS.to_string());
            }
            if self.dense_params() > limits::DENSE_PARAMS {
                return over(
                    "DeepFM's MLP",
                    format!("{} weights (fields x embedding_dim, then model.hidden)", self.dense_params()),
                    limits::DENSE_PARAMS.to_string(),
                );
            }
        }
        Ok(())
    }

    /// Checks every value a parse cannot.
    pub fn validate(&self) -> Result<(), JobError> {
        let bad = |msg: String| Err(JobError::Invalid(msg));
        if self.version != JOB_VERSION {
            return bad(format!("version {} is not supported (this build reads version {JOB_VERSION})", self.version));
        }
        let d = &self.data;
        if d.paths.is_empty() {
            return bad("data.paths is empty".into());
        }
        if !(0.0..1.0).contains(&d.test_split) {
            return bad(format!("data.test_split must be in [0, 1), got {}", d.test_split));
        }
        if !(0.0..=1.0).contains(&d.max_bad_ratio) {
            return bad(format!("data.max_bad_ratio must be in [0, 1], got {}", d.max_bad_ratio));
        }
        match (d.format, &d.schema) {
            (DataFormat::Csv, None) => return bad("data.format = \"csv\" needs a [data.schema]".into()),
            (DataFormat::Csv, Some(s)) if s.label.is_empty() => return bad("data.schema.label is empty".into()),
            (f, Some(_)) if f != DataFormat::Csv => return bad(format!("data.schema is only for csv, not {f:?}")),
            _ => {}
        }
        self.validate_follow()?;
        let p = &self.publish;
        if !(p.every_seconds.is_finite() && p.every_seconds >= 0.0) {
            return bad(format!("publish.every_seconds must be >= 0, got {}", p.every_seconds));
        }
        if let Some(g) = &p.gate {
            if !(0.0..=1.0).contains(&g.max_auc_drop) {
                return bad(format!("publish.gate.max_auc_drop must be in [0, 1], got {}", g.max_auc_drop));
            }
        }
        self.sync.validate().map_err(JobError::Invalid)?;
        let m = &self.model;
        if m.embedding_dim == 0 || m.embedding_dim > 1024 {
            return bad(format!("model.embedding_dim must be in 1..=1024, got {}", m.embedding_dim));
        }
        if m.kind == ModelKind::Deepfm && (m.hidden.is_empty() || m.hidden.contains(&0)) {
            return bad(format!("model.hidden must list non-zero layer widths, got {:?}", m.hidden));
        }
        if m.kind == ModelKind::Deepfm && d.format == DataFormat::Libffm && m.fields.is_none() {
            return bad("model.fields is required for DeepFM on libffm data".into());
        }
        if !(m.init_stddev.is_finite() && m.init_stddev >= 0.0) {
            return bad(format!("model.init_stddev must be >= 0, got {}", m.init_stddev));
        }
        for (name, o) in [
            ("sparse", &self.optimizer.sparse),
            ("embedding", &self.optimizer.embedding),
            ("dense", &self.optimizer.dense),
        ] {
            o.validate().map_err(|e| JobError::Invalid(format!("optimizer.{name}: {e}")))?;
        }
        if self.cluster.ps == 0 || self.cluster.workers == 0 {
            return bad("cluster.ps and cluster.workers must be >= 1".into());
        }
        if self.training.batch_size == 0 || self.training.epochs == 0 {
            return bad("training.batch_size and training.epochs must be >= 1".into());
        }
        self.features.validate().map_err(JobError::Invalid)?;
        self.check_limits()
    }
}
