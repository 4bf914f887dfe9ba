//! The model directory: versions training publishes and serving loads.
//!
//! Layout: `ROOT/v0000000007/{manifest.json,dense.bin}` per version and `ROOT/CURRENT`, a text
//! file naming the version serving should run (absent: the newest). `dense.bin` holds the dense
//! parameters (every layer's weights then biases, little-endian f32); the manifest says what
//! they are, which ps tables hold the sparse part, how to hash inputs, and carries the
//! checksum of `dense.bin`.
//!
//! Invariants: a version directory appears whole or not at all (written under a temporary name,
//! fsynced, renamed); `CURRENT` changes by rename; a version that fails its checksum or shape
//! check is never returned by [`ModelDir::load`]. Publishing makes the new version current;
//! rollback points `CURRENT` at an older kept version until the next publish. A version the
//! publish gate held (`held` in its manifest) is written whole but never made current: not by
//! its publish, not by rollback, not as the newest when there is no `CURRENT`.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use ember_core::job::DataFormat;
use ember_core::TableSpec;
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use crate::model::Layer;
use crate::schema::InputSchema;
use crate::tables::ModelTables;

/// The manifest format this build writes and reads.
pub const MANIFEST_FORMAT: u32 = 1;
const CURRENT: &str = "CURRENT";
const MANIFEST: &str = "manifest.json";
const DENSE: &str = "dense.bin";

/// Why a model directory operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A version's files are unreadable, inconsistent or fail their checksum.
    #[error("{path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// No such version in the directory.
    #[error("no model version {0} in the model directory")]
    NoVersion(u64),
    /// A version the publish gate held cannot be made current.
    #[error("version {0} was held by the publish gate ({1}); it is never made current")]
    Held(u64, String),
    /// The directory holds no version.
    #[error("no model version published in {0}")]
    Empty(PathBuf),
}

/// What a published version is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelManifest {
    /// [`MANIFEST_FORMAT`].
    pub format: u32,
    /// Assigned by [`ModelDir::publish`].
    pub version: u64,
    /// The model's name in serving requests.
    pub name: String,
    /// The job that trained it.
    pub job: String,
    /// Rows the job had trained when this version was taken (its step).
    pub rows_trained: u64,
    /// Wall-clock time of publishing.
    pub created_unix_ms: u64,
    /// The ps tables holding the sparse part, and the model's shape.
    pub tables: ModelTables,
    /// Specs of the sparse tables (serving computes initializer values from them when a
    /// lookup fails and it is configured to degrade rather than fail).
    pub sparse_tables: Vec<TableSpec>,
    /// The training data's format.
    pub data_format: DataFormat,
    /// Named input fields, hashed as training hashed them.
    pub schema: InputSchema,
    /// Label of the cluster checkpoint of the ps tables taken with this version, if any.
    pub checkpoint: Option<u64>,
    /// Each ps-server's delta cut taken with this version (its sparse cut), in shard-map order:
    /// every row change on that server up to `seq` of stream `stream_id` is in the version.
    /// Empty for versions published before delta streams existed.
    #[serde(default)]
    pub sparse_cuts: Vec<SparseCut>,
    /// Each ps-server's id of the checkpoint taken with this version, in shard-map order: the
    /// chain ending there is the version's sparse state, which replicas read to serve the
    /// version exactly (`ReadCheckpoints`). Empty when the servers keep no checkpoints.
    #[serde(default)]
    pub sparse_checkpoints: Vec<u64>,
    /// f32 values in `dense.bin`.
    pub dense_values: u64,
    /// xxh3-64 of `dense.bin`.
    pub dense_xxh3: u64,
    /// Why the publish gate held this version: it is kept, listed, never made current.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<String>,
}

/// One ps-server's position in its row-delta stream (`SubscribeDeltas`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SparseCut {
    /// The server instance's stream.
    pub stream_id: u64,
    /// The cut: changes tagged up to it.
    pub seq: u64,
}

/// A version read back: its manifest and dense layers.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishedModel {
    /// The manifest.
    pub manifest: ModelManifest,
    /// Dense layers (empty for LR and FM).
    pub dense: Vec<Layer>,
}

/// One version as [`ModelDir::list`] sees it.
#[derive(Debug)]
pub struct ListedVersion {
    /// Its number.
    pub version: u64,
    /// Its manifest, or why it cannot be read.
    pub manifest: Result<ModelManifest, RegistryError>,
    /// Whether serving should run it.
    pub current: bool,
}

/// A model directory.
#[derive(Debug, Clone)]
pub struct ModelDir {
    root: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RegistryError + '_ {
    move |source| RegistryError::Io { path: path.to_path_buf(), source }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), RegistryError> {
    let mut f = File::create(path).map_err(io(path))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(io(path))
}

fn sync_dir(path: &Path) -> Result<(), RegistryError> {
    File::open(path).and_then(|d| d.sync_all()).map_err(io(path))
}

use ember_core::unix_ms;

impl ModelDir {
    /// The directory at `root` (created by the first publish).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Its path.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn version_dir(&self, version: u64) -> PathBuf {
        self.root.join(format!("v{version:010}"))
    }

    /// Complete versions, oldest first.
    pub fn versions(&self) -> Result<Vec<u64>, RegistryError> {
        let entries = match fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&self.root)(e)),
        };
        let mut versions: Vec<u64> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_prefix('v')).and_then(|n| n.parse().ok()))
            .collect();
        versions.sort_unstable();
        Ok(versions)
    }

    /// The version serving should run: `CURRENT`'s, or the newest when there is no `CURRENT`.
    pub fn current(&self) -> Result<Option<u64>, RegistryError> {
        let path = self.root.join(CURRENT);
        match fs::read_to_string(&path) {
            Ok(text) => text.trim().parse().map(Some).map_err(|_| RegistryError::Corrupt {
                path,
                reason: format!("{:?} is not a version number", text.trim()),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let held = |v: &u64| self.manifest(*v).is_ok_and(|m| m.held.is_some());
                Ok(self.versions()?.into_iter().rev().find(|v| !held(v)))
            }
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Writes a new version (its number one past the newest) and makes it current (unless
    /// `manifest.held` says the gate held it), then deletes all but the newest `keep` versions
    /// (never the current one). `manifest.version` and the dense fields are filled in here.
    pub fn publish(&self, mut manifest: ModelManifest, dense: &[Layer], keep: usize) -> Result<u64, RegistryError> {
        fs::create_dir_all(&self.root).map_err(io(&self.root))?;
        let bytes: Vec<u8> = dense.iter().flat_map(|l| l.w.iter().chain(&l.b)).flat_map(|x| x.to_le_bytes()).collect();
        manifest.format = MANIFEST_FORMAT;
        manifest.dense_values = (bytes.len() / 4) as u64;
        manifest.dense_xxh3 = xxh3_64(&bytes);
        manifest.created_unix_ms = unix_ms();
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let tmp = self.root.join(format!(".tmp-{}-{nanos}", std::process::id()));
        fs::create_dir(&tmp).map_err(io(&tmp))?;
        let result = (|| {
            write_synced(&tmp.join(DENSE), &bytes)?;
            // Another publisher may take a number first; the rename then fails and we try the next.
            let mut version = self.versions()?.last().map_or(1, |v| v + 1);
            loop {
                manifest.version = version;
                let json = serde_json::to_vec_pretty(&manifest)
                    .map_err(|e| RegistryError::Corrupt { path: tmp.join(MANIFEST), reason: e.to_string() })?;
                write_synced(&tmp.join(MANIFEST), &json)?;
                sync_dir(&tmp)?;
                let dest = self.version_dir(version);
                match fs::rename(&tmp, &dest) {
                    Ok(()) => return Ok(version),
                    Err(_) if dest.exists() => version += 1,
                    Err(e) => return Err(io(&dest)(e)),
                }
            }
        })();
        let version = match result {
            Ok(v) => v,
            Err(e) => {
                let _ = fs::remove_dir_all(&tmp);
                return Err(e);
            }
        };
        sync_dir(&self.root)?;
        if manifest.held.is_none() {
            self.write_current(version)?;
        }
        self.prune(keep.max(1))?;
        Ok(version)
    }

    fn write_current(&self, version: u64) -> Result<(), RegistryError> {
        // A name of its own per call: two publishes of one process (the scheduler publishes a
        // job's last version while a periodic one may still run) must not rename each other's
        // file away, which failed one of them with "CURRENT: No such file or directory".
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = self.root.join(format!(".{CURRENT}.tmp-{}-{n}", std::process::id()));
        write_synced(&tmp, format!("{version}\n").as_bytes())?;
        let path = self.root.join(CURRENT);
        fs::rename(&tmp, &path).map_err(io(&path))?;
        sync_dir(&self.root)
    }

    fn prune(&self, keep: usize) -> Result<(), RegistryError> {
        let versions = self.versions()?;
        let current = self.current()?;
        let drop = versions.len().saturating_sub(keep);
        for v in versions.into_iter().take(drop).filter(|v| Some(*v) != current) {
            let dir = self.version_dir(v);
            fs::remove_dir_all(&dir).map_err(io(&dir))?;
        }
        Ok(())
    }

    /// Points `CURRENT` at `version` after checking that it loads.
    pub fn rollback(&self, version: u64) -> Result<(), RegistryError> {
        if let Some(reason) = self.load(version)?.manifest.held {
            return Err(RegistryError::Held(version, reason));
        }
        self.write_current(version)
    }

    /// A version's manifest only (no checksum check of the dense values).
    pub fn manifest(&self, version: u64) -> Result<ModelManifest, RegistryError> {
        let dir = self.version_dir(version);
        if !dir.is_dir() {
            return Err(RegistryError::NoVersion(version));
        }
        let path = dir.join(MANIFEST);
        let text = fs::read(&path).map_err(io(&path))?;
        let manifest: ModelManifest = serde_json::from_slice(&text)
            .map_err(|e| RegistryError::Corrupt { path: path.clone(), reason: e.to_string() })?;
        if manifest.format != MANIFEST_FORMAT || manifest.version != version {
            let reason = format!(
                "format {} version {} (expected format {MANIFEST_FORMAT} version {version})",
                manifest.format, manifest.version
            );
            return Err(RegistryError::Corrupt { path, reason });
        }
        Ok(manifest)
    }

    /// Reads a version whole, checking the dense values' checksum and shapes.
    pub fn load(&self, version: u64) -> Result<PublishedModel, RegistryError> {
        let manifest = self.manifest(version)?;
        let path = self.version_dir(version).join(DENSE);
        let bytes = fs::read(&path).map_err(io(&path))?;
        let corrupt = |reason: String| RegistryError::Corrupt { path: path.clone(), reason };
        if bytes.len() as u64 != manifest.dense_values * 4 || xxh3_64(&bytes) != manifest.dense_xxh3 {
            return Err(corrupt(format!(
                "{} bytes with checksum {:x}; the manifest says {} values with checksum {:x}",
                bytes.len(),
                xxh3_64(&bytes),
                manifest.dense_values,
                manifest.dense_xxh3
            )));
        }
        let values: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let shapes = manifest.tables.model.dense_shapes();
        let want: usize = shapes.iter().map(|(w, b)| w + b).sum();
        if want != values.len() {
            return Err(corrupt(format!("{} dense values, the model needs {want}", values.len())));
        }
        let mut rest = &values[..];
        let dense = shapes
            .iter()
            .map(|(w, b)| {
                let (lw, tail) = rest.split_at(*w);
                let (lb, tail) = tail.split_at(*b);
                rest = tail;
                Layer { w: lw.to_vec(), b: lb.to_vec() }
            })
            .collect();
        Ok(PublishedModel { manifest, dense })
    }

    /// Every version, oldest first. Unreadable versions are listed with their error.
    pub fn list(&self) -> Result<Vec<ListedVersion>, RegistryError> {
        let current = self.current()?;
        Ok(self
            .versions()?
            .into_iter()
            .map(|version| ListedVersion {
                version,
                manifest: self.manifest(version),
                current: Some(version) == current,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests;
