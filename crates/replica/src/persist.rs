//! A source's manifest: which segment holds each table and the stream position they hold
//! everything up to, so a restarted replica maps its segments and resumes the stream from there
//! (the training server sends only what changed since) instead of loading a snapshot.
//!
//! Layout: `<dir>/source-<i>/MANIFEST.json` and one directory per table (`t<n>/segment-*.seg`).
//! Invariants: the manifest is replaced atomically (temporary file, fsync, rename, directory
//! fsync) and names only segments that are complete on disk. At start, anything the manifest
//! does not name is removed; a manifest written for other slots, or naming a damaged or missing
//! segment, is dropped whole and the source starts from a snapshot (never serving damaged rows).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use ember_core::TableSpec;
use ember_store::replica::ReplicaTable;

use crate::state::{Held, Source};

const MANIFEST: &str = "MANIFEST.json";

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Manifest {
    endpoint: String,
    stream_id: u64,
    watermark: u64,
    num_slots: u32,
    slots: Vec<u32>,
    tables: Vec<Entry>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Entry {
    name: String,
    spec: TableSpec,
    subdir: String,
    segment: String,
}

/// What a previous run left for a source.
#[derive(Debug, Default)]
pub(crate) struct Restored {
    pub stream_id: u64,
    pub watermark: u64,
    pub tables: BTreeMap<String, Arc<Held>>,
}

/// Reads `dir`'s manifest and maps its segments; anything unusable means starting empty.
pub(crate) fn restore(dir: &Path, num_slots: u32, slots: &[u32], keep: usize) -> Restored {
    let restored = match read(dir, num_slots, slots, keep) {
        Ok(Some(r)) => r,
        Ok(None) => Restored::default(),
        Err(reason) => {
            tracing::warn!(dir = %dir.display(), %reason, "not resuming from the files left here; fetching a snapshot");
            metrics::counter!("ember_replica_restore_failures_total").increment(1);
            Restored::default()
        }
    };
    remove_unnamed(dir, &restored);
    if restored.stream_id != 0 {
        tracing::info!(dir = %dir.display(), tables = restored.tables.len(), watermark = restored.watermark,
            "mapped the segments of the last run");
    }
    restored
}

fn read(dir: &Path, num_slots: u32, slots: &[u32], keep: usize) -> Result<Option<Restored>, String> {
    let path = dir.join(MANIFEST);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let m: Manifest = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    if m.num_slots != num_slots || m.slots != slots {
        return Err(format!(
            "written for {} slots of {}, now {} of {num_slots}",
            m.slots.len(),
            m.num_slots,
            slots.len()
        ));
    }
    let mut tables = BTreeMap::new();
    for e in m.tables {
        let tdir = dir.join(&e.subdir);
        if e.subdir.contains(['/', '\\']) || e.segment.contains(['/', '\\']) {
            return Err(format!("bad file name in the manifest: {}/{}", e.subdir, e.segment));
        }
        let table = ReplicaTable::open(&tdir, &tdir.join(&e.segment), m.watermark, keep).map_err(|e| e.to_string())?;
        if table.dim() != e.spec.dim as usize {
            return Err(format!("table {}: segment of dim {} for a spec of dim {}", e.name, table.dim(), e.spec.dim));
        }
        tables.insert(e.name, Arc::new(Held { spec: e.spec, table, subdir: e.subdir }));
    }
    Ok(Some(Restored { stream_id: m.stream_id, watermark: m.watermark, tables }))
}

/// Removes table directories and files the restored state does not use (and the manifest when
/// nothing was restored).
fn remove_unnamed(dir: &Path, restored: &Restored) {
    let keep: BTreeMap<&str, Option<std::ffi::OsString>> = restored
        .tables
        .values()
        .map(|h| (h.subdir.as_str(), h.table.view().segment().and_then(|(p, _)| p.file_name()).map(ToOwned::to_owned)))
        .collect();
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let path = entry.path();
        if name == MANIFEST {
            if restored.stream_id == 0 {
                let _ = std::fs::remove_file(&path);
            }
            continue;
        }
        match keep.get(name.as_ref()) {
            Some(segment) => {
                let Ok(files) = std::fs::read_dir(&path) else { continue };
                for f in files.flatten() {
                    if Some(f.file_name()) != *segment {
                        let _ = std::fs::remove_file(f.path());
                    }
                }
            }
            None if path.is_dir() => {
                let _ = std::fs::remove_dir_all(&path);
            }
            None => {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

/// Writes `source`'s manifest if every table it holds has a segment: the position is the
/// oldest segment watermark, so resuming there re-sends at most rows already held (rounds carry
/// current values, so applying them again is harmless). Skips the write when that position is
/// `unchanged` (the manifest on disk already says so). Returns the position on disk.
pub(crate) fn save(
    source: &Source,
    num_slots: u32,
    slots: &[u32],
    unchanged: Option<u64>,
) -> std::io::Result<Option<u64>> {
    let stream_id = source.progress().stream_id;
    let mut tables = Vec::new();
    let mut watermark = u64::MAX;
    for (name, held) in source.tables() {
        let view = held.table.view();
        let Some((path, at)) = view.segment() else { return Ok(None) };
        let Some(segment) = path.file_name().and_then(|f| f.to_str()) else { return Ok(None) };
        watermark = watermark.min(at);
        tables.push(Entry { name, spec: held.spec.clone(), subdir: held.subdir.clone(), segment: segment.to_string() });
    }
    if stream_id == 0 || tables.is_empty() || source.progress().stream_id != stream_id {
        return Ok(None);
    }
    if unchanged == Some(watermark) {
        return Ok(unchanged);
    }
    let m =
        Manifest { endpoint: source.endpoint.clone(), stream_id, watermark, num_slots, slots: slots.to_vec(), tables };
    let text = serde_json::to_vec(&m).map_err(std::io::Error::other)?;
    let tmp = source.dir.join("MANIFEST.json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&text)?;
    f.sync_all()?;
    std::fs::rename(&tmp, source.dir.join(MANIFEST))?;
    std::fs::File::open(&source.dir)?.sync_all()?;
    Ok(Some(watermark))
}
