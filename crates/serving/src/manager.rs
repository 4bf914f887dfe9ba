//! Model versions in memory: the current one, the last few for instant rollback, and the loop
//! that follows the model directory.
//!
//! A new version is read and checked off the async runtime, warmed up by the predictor (real
//! forward passes and lookups), and only then swapped in with one pointer store under a write
//! lock held for no longer than that store. A version that fails to load or warm up is logged,
//! counted and remembered, never swapped in; the current one keeps serving.

use std::collections::HashMap;
use std::sync::Arc;

use ember_core::TableSpec;
use ember_model::model::{IndexedBatch, Layer};
use ember_model::{ModelDir, ModelManifest, PublishedModel, SparseLayout};
use metrics::gauge;
use parking_lot::{Mutex, RwLock};

use crate::ServingError;

/// A version ready to answer requests.
#[derive(Debug)]
pub struct LoadedModel {
    /// What it is.
    pub manifest: ModelManifest,
    /// Its dense layers.
    pub dense: Vec<Layer>,
    /// The linear table's spec.
    pub linear: TableSpec,
    /// The embedding table's spec (FM, DeepFM).
    pub embedding: Option<TableSpec>,
}

impl LoadedModel {
    /// Checks that the manifest names a spec for every sparse table it uses.
    pub fn new(published: PublishedModel) -> Result<Self, ServingError> {
        let PublishedModel { manifest, dense } = published;
        let spec = |name: &str| {
            manifest.sparse_tables.iter().find(|s| s.name == name).cloned().ok_or_else(|| {
                ServingError::Compute(format!("version {} has no spec for table {name}", manifest.version))
            })
        };
        let linear = spec(&manifest.tables.linear)?;
        let embedding = manifest.tables.embedding.as_deref().map(spec).transpose()?;
        // Joined rows are [w, v_1..v_k] in one table, which `linear` and `embedding` both name.
        let k = manifest.tables.k();
        let (linear_dim, embedding_dim) = match manifest.tables.layout() {
            SparseLayout::Joined(_) => (k + 1, k + 1),
            SparseLayout::Linear(_) | SparseLayout::Separate { .. } => (1, k),
        };
        if embedding.as_ref().is_some_and(|e| e.dim as usize != embedding_dim) || linear.dim as usize != linear_dim {
            return Err(ServingError::Compute(format!(
                "version {}: table widths do not match the model",
                manifest.version
            )));
        }
        Ok(Self { manifest, dense, linear, embedding })
    }

    /// Its version number.
    pub fn version(&self) -> u64 {
        self.manifest.version
    }

    /// The forward pass (CPU-bound: call it off the async runtime).
    pub fn compute(&self, batch: &IndexedBatch, w: &[f32], v: &[f32]) -> Result<Vec<f32>, ServingError> {
        let probs = self.manifest.tables.model.predict(batch, w, v, &self.dense).map_err(ServingError::Compute)?;
        if let Some(p) = probs.iter().find(|p| !p.is_finite()) {
            return Err(ServingError::Compute(format!("version {} produced {p}", self.version())));
        }
        Ok(probs)
    }
}

/// The versions in memory.
pub struct ModelManager {
    dir: ModelDir,
    keep: usize,
    current: RwLock<Option<Arc<LoadedModel>>>,
    /// Newest first, the current one included.
    kept: Mutex<Vec<Arc<LoadedModel>>>,
    /// Versions that failed, with why (not retried).
    failed: Mutex<HashMap<u64, String>>,
    /// The newest version published in the directory, and the one its CURRENT names, as of
    /// the last look.
    newest: std::sync::atomic::AtomicU64,
    named: std::sync::atomic::AtomicU64,
}

impl ModelManager {
    /// Versions of `dir`, keeping `keep` of them in memory.
    pub fn new(dir: ModelDir, keep: usize) -> Self {
        Self {
            dir,
            keep: keep.max(1),
            current: RwLock::new(None),
            kept: Mutex::new(Vec::new()),
            failed: Mutex::new(HashMap::new()),
            newest: std::sync::atomic::AtomicU64::new(0),
            named: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Whether `version` was rolled back to: the directory names it as current (as of the last
    /// look) although a newer version was published. (Right after a publish, the directory
    /// names the new version while the old one still serves: that is not a rollback.)
    pub fn rolled_back(&self, version: u64) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        self.named.load(Relaxed) == version && version < self.newest.load(Relaxed)
    }

    /// The version answering requests now.
    pub fn current(&self) -> Option<Arc<LoadedModel>> {
        self.current.read().clone()
    }

    /// Version `version`, if held in memory.
    pub fn kept(&self, version: u64) -> Option<Arc<LoadedModel>> {
        self.kept.lock().iter().find(|m| m.version() == version).cloned()
    }

    /// Versions in memory, most recently swapped in first.
    pub fn kept_versions(&self) -> Vec<u64> {
        self.kept.lock().iter().map(|m| m.version()).collect()
    }

    /// The version the directory wants served, when it is neither current nor known to fail.
    pub(crate) async fn wanted(&self) -> Result<Option<u64>, ServingError> {
        let dir = self.dir.clone();
        let (wanted, newest) =
            tokio::task::spawn_blocking(move || Ok::<_, ember_model::RegistryError>((dir.current()?, dir.versions()?)))
                .await
                .map_err(|e| ServingError::Compute(e.to_string()))??;
        if let Some(newest) = newest.last() {
            self.newest.store(*newest, std::sync::atomic::Ordering::Relaxed);
        }
        self.named.store(wanted.unwrap_or(0), std::sync::atomic::Ordering::Relaxed);
        let current = self.current().map(|m| m.version());
        Ok(wanted.filter(|v| Some(*v) != current && !self.failed.lock().contains_key(v)))
    }

    /// `version` from memory, or read and checked from disk off the async runtime.
    pub(crate) async fn get_or_load(&self, version: u64) -> Result<Arc<LoadedModel>, ServingError> {
        if let Some(m) = self.kept.lock().iter().find(|m| m.version() == version) {
            return Ok(Arc::clone(m));
        }
        let dir = self.dir.clone();
        let published = tokio::task::spawn_blocking(move || dir.load(version))
            .await
            .map_err(|e| ServingError::Compute(e.to_string()))??;
        Ok(Arc::new(LoadedModel::new(published)?))
    }

    pub(crate) fn mark_failed(&self, version: u64, error: &ServingError) {
        metrics::counter!("ember_serving_model_loads_total", "outcome" => "failed").increment(1);
        tracing::error!(version, %error, "model version not swapped in; the current one keeps serving");
        self.failed.lock().insert(version, error.to_string());
    }

    /// Makes `model` current. Requests already running keep the version they started with.
    pub(crate) fn swap_in(&self, model: Arc<LoadedModel>) {
        let version = model.version();
        let previous = self.current.write().replace(Arc::clone(&model));
        {
            let mut kept = self.kept.lock();
            kept.retain(|m| m.version() != version);
            kept.insert(0, model);
            kept.truncate(self.keep);
        }
        // The old version is freed here or when its last in-flight request ends: outside the lock.
        drop(previous);
        metrics::counter!("ember_serving_model_loads_total", "outcome" => "swapped").increment(1);
        gauge!("ember_serving_model_version").set(version as f64);
        tracing::info!(version, "model version swapped in");
    }
}
