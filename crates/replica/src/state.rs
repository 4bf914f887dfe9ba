//! What a replica holds, and the lookup path.
//!
//! Rows of training server `i` live in source `i`'s tables only; a key is looked up in the
//! source the shard map routes it to. A round from a source is applied under that source's table
//! map lock, which is held only for pointer swaps (building a round's layer happens before, in
//! [`crate::follow`]); a lookup clones the views it needs and reads them without any lock.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use ember_client::ShardMap;
use ember_core::{slot_of, TableSpec};
use ember_store::replica::{Layer, ReplicaTable, View};
use parking_lot::{Mutex, RwLock};

use crate::{persist, ReplicaConfig, ReplicaError};

/// One table of one source.
#[derive(Debug)]
pub struct Held {
    /// Its spec on the training servers (the initializer fills rows a lookup misses).
    pub spec: TableSpec,
    /// The rows.
    pub table: ReplicaTable,
    /// Directory of its segments, under the source's.
    pub subdir: String,
}

/// How far a source's stream has been followed.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// The training server's stream (a restarted server starts a new one).
    pub stream_id: u64,
    /// Everything up to this sequence number is applied.
    pub watermark: u64,
    /// A subscription is open.
    pub connected: bool,
    /// Rounds applied since start.
    pub rounds: u64,
}

/// One training server's rows.
#[derive(Debug)]
pub struct Source {
    /// Its address.
    pub endpoint: String,
    pub(crate) dir: PathBuf,
    pub(crate) tables: RwLock<BTreeMap<String, Arc<Held>>>,
    pub(crate) progress: Mutex<Progress>,
    /// Published versions' sparse state: the checkpoint chain read so far, pinned per version.
    pub(crate) pinned: RwLock<BTreeMap<String, Arc<Held>>>,
    /// The last checkpoint of this server applied to `pinned` (0: none).
    pub(crate) pinned_checkpoint: Mutex<u64>,
    next_subdir: Mutex<u64>,
}

impl Source {
    /// How far its stream has been followed.
    pub fn progress(&self) -> Progress {
        self.progress.lock().clone()
    }

    /// Its tables, by name.
    pub fn tables(&self) -> Vec<(String, Arc<Held>)> {
        self.tables.read().iter().map(|(n, h)| (n.clone(), Arc::clone(h))).collect()
    }

    /// Its published versions' tables, by name.
    pub fn pinned_tables(&self) -> Vec<(String, Arc<Held>)> {
        self.pinned.read().iter().map(|(n, h)| (n.clone(), Arc::clone(h))).collect()
    }

    /// The last checkpoint of this server whose chain the pinned tables hold.
    pub fn pinned_checkpoint(&self) -> u64 {
        *self.pinned_checkpoint.lock()
    }

    /// A fresh directory name: `t<n>` for latest tables, `v<n>` for versions' (not persisted).
    fn new_subdir(&self, prefix: char) -> String {
        let mut next = self.next_subdir.lock();
        *next += 1;
        format!("{prefix}{}", *next)
    }
}

/// One table's rows of one delta round.
#[derive(Debug, Default)]
pub struct RoundTable {
    /// Drop every row held first.
    pub reset: bool,
    /// Values per row.
    pub dim: usize,
    /// Rows and deletions.
    pub rows: Layer,
}

/// A whole delta round of one source.
#[derive(Debug, Default)]
pub struct Round {
    /// The server's stream.
    pub stream_id: u64,
    /// Everything up to it is in this round.
    pub watermark: u64,
    /// By table.
    pub tables: BTreeMap<String, RoundTable>,
}

/// A lookup's rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Rows {
    /// Values per row.
    pub dim: usize,
    /// `keys.len() * dim`, in key order.
    pub values: Vec<f32>,
    /// Keys the table has no row for (their values are the initializer's).
    pub missing: Vec<bool>,
}

/// A replica: its slots and every source's tables.
#[derive(Debug)]
pub struct Replica {
    pub(crate) sources: Vec<Source>,
    map: ShardMap,
    /// `held[slot]`; empty: every slot.
    held: Vec<bool>,
    slots: Vec<u32>,
    map_version: u64,
    keep: usize,
    /// Published versions whose sparse state every source holds, oldest first.
    versions: Mutex<std::collections::VecDeque<u64>>,
}

impl Replica {
    /// A replica of `map`'s servers as `config` says, starting from what a previous run left in
    /// `config.dir` (a source whose files are damaged or were written for other slots starts
    /// empty and is fetched again).
    pub fn open(config: &ReplicaConfig, map: &ShardMap) -> Result<Self, ReplicaError> {
        let num_slots = map.num_slots();
        let mut slots = config.slots.clone().unwrap_or_default();
        slots.sort_unstable();
        slots.dedup();
        if let Some(bad) = slots.iter().find(|s| **s >= num_slots) {
            return Err(ReplicaError::InvalidArgument(format!("slot {bad} is out of range: the map has {num_slots}")));
        }
        let mut held = Vec::new();
        if !slots.is_empty() {
            held = vec![false; num_slots as usize];
            for s in &slots {
                held[*s as usize] = true;
            }
        }
        let mut sources = Vec::new();
        for (i, endpoint) in map.endpoints().iter().enumerate() {
            let dir = config.dir.join(format!("source-{i}"));
            std::fs::create_dir_all(&dir).map_err(|source| ReplicaError::Io { path: dir.clone(), source })?;
            let restored = persist::restore(&dir, num_slots, &slots, config.keep_versions);
            let next = restored.tables.values().filter_map(|h| h.subdir.strip_prefix('t')?.parse().ok()).max();
            sources.push(Source {
                endpoint: endpoint.clone(),
                dir,
                tables: RwLock::new(restored.tables),
                progress: Mutex::new(Progress {
                    stream_id: restored.stream_id,
                    watermark: restored.watermark,
                    ..Progress::default()
                }),
                pinned: RwLock::default(),
                pinned_checkpoint: Mutex::new(0),
                next_subdir: Mutex::new(next.unwrap_or(0)),
            });
        }
        Ok(Self {
            sources,
            map: map.clone(),
            held,
            slots,
            map_version: config.map_version,
            keep: config.keep_versions.max(1),
            versions: Mutex::default(),
        })
    }

    /// The sources, in shard-map server order.
    pub fn sources(&self) -> &[Source] {
        &self.sources
    }

    /// Slots in the map.
    pub fn num_slots(&self) -> u32 {
        self.map.num_slots()
    }

    /// Slots held (empty: every slot).
    pub fn slots(&self) -> &[u32] {
        &self.slots
    }

    /// The slot-map version reported to callers.
    pub fn map_version(&self) -> u64 {
        self.map_version
    }

    /// Every source has applied a round since start: the replica has followed each stream to
    /// its head once, so it serves what the training servers held moments ago.
    pub fn ready(&self) -> bool {
        self.sources.iter().all(|s| s.progress.lock().rounds > 0)
    }

    /// Table names `source` lacks among `names` (in its published versions' tables when
    /// `pinned`).
    pub(crate) fn unknown_tables<'a>(
        &self,
        source: usize,
        names: impl Iterator<Item = &'a String>,
        pinned: bool,
    ) -> Vec<String> {
        let src = &self.sources[source];
        let tables = if pinned { src.pinned.read() } else { src.tables.read() };
        names.filter(|n| !tables.contains_key(*n)).cloned().collect()
    }

    /// Published versions held, oldest first.
    pub fn versions(&self) -> Vec<u64> {
        self.versions.lock().iter().copied().collect()
    }

    /// Applies a whole round of `source` (`specs` has a spec for every table it does not hold).
    /// A round of a new stream (the server restarted) drops the tables it does not reset.
    pub(crate) fn apply(&self, source: usize, round: Round, specs: &BTreeMap<String, TableSpec>) -> Result<(), String> {
        let src = &self.sources[source];
        let new_stream = src.progress.lock().stream_id != round.stream_id;
        let watermark = round.watermark;
        let stream_id = round.stream_id;
        let applied = self.apply_to(src, &src.tables, 't', round, specs, new_stream)?;
        let mut progress = src.progress.lock();
        progress.stream_id = stream_id;
        progress.watermark = watermark;
        progress.rounds += 1;
        metrics::counter!("ember_replica_rounds_total").increment(1);
        metrics::counter!("ember_replica_rows_applied_total").increment(applied);
        metrics::gauge!("ember_replica_watermark", "source" => source.to_string()).set(watermark as f64);
        Ok(())
    }

    /// Applies a checkpoint chain read of `source` (its watermark: the last checkpoint read) to
    /// its versions' tables.
    pub(crate) fn apply_checkpoints(
        &self,
        source: usize,
        round: Round,
        specs: &BTreeMap<String, TableSpec>,
    ) -> Result<(), String> {
        let src = &self.sources[source];
        let checkpoint = round.watermark;
        self.apply_to(src, &src.pinned, 'v', round, specs, false)?;
        *src.pinned_checkpoint.lock() = checkpoint;
        Ok(())
    }

    /// Keeps every source's versions' tables as `version`'s state (dropping the oldest version
    /// past `keep`).
    pub(crate) fn pin(&self, version: u64) {
        for src in &self.sources {
            for (_, held) in src.pinned_tables() {
                held.table.pin(version);
            }
        }
        let mut versions = self.versions.lock();
        versions.retain(|v| *v != version);
        versions.push_back(version);
        while versions.len() > self.keep {
            versions.pop_front();
        }
    }

    /// Applies `round` to one of `src`'s table maps; returns the rows applied.
    fn apply_to(
        &self,
        src: &Source,
        map: &RwLock<BTreeMap<String, Arc<Held>>>,
        prefix: char,
        round: Round,
        specs: &BTreeMap<String, TableSpec>,
        new_stream: bool,
    ) -> Result<u64, String> {
        let mut fresh = BTreeMap::new();
        {
            let tables = map.read();
            for (name, rt) in &round.tables {
                let replace = match tables.get(name) {
                    Some(h) if h.table.dim() == rt.dim || rt.rows.is_empty() => false,
                    Some(h) if !rt.reset => {
                        return Err(format!(
                            "table {name}: rows of dim {} for a table of dim {}",
                            rt.dim,
                            h.table.dim()
                        ))
                    }
                    _ => true,
                };
                if replace {
                    let spec = match tables.get(name) {
                        Some(h) if h.spec.dim as usize == rt.dim => h.spec.clone(),
                        _ => specs.get(name).cloned().ok_or_else(|| format!("no spec of table {name}"))?,
                    };
                    if spec.dim as usize != rt.dim {
                        return Err(format!("table {name}: rows of dim {} for a spec of dim {}", rt.dim, spec.dim));
                    }
                    let subdir = src.new_subdir(prefix);
                    let dir = src.dir.join(&subdir);
                    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                    let table = ReplicaTable::new(&dir, rt.dim, self.keep);
                    fresh.insert(name.clone(), Arc::new(Held { spec, table, subdir }));
                }
            }
        }
        let mut tables = map.write();
        if new_stream {
            tables.retain(|name, held| {
                let keep = round.tables.get(name).is_some_and(|t| t.reset);
                if !keep {
                    held.table.retire();
                }
                keep
            });
        }
        for (name, held) in fresh {
            if let Some(old) = tables.insert(name, held) {
                old.table.retire();
            }
        }
        let mut applied = 0u64;
        for (name, rt) in round.tables {
            if let Some(held) = tables.get(&name) {
                applied += rt.rows.len() as u64;
                held.table.apply(rt.reset, rt.rows, round.watermark);
            }
        }
        for held in tables.values() {
            held.table.advance(round.watermark);
        }
        Ok(applied)
    }

    /// Rows of `keys` in `table`: as the training servers last sent them (`version` 0), or as
    /// published model version `version` holds them.
    pub fn lookup(&self, table: &str, keys: &[u64], version: u64) -> Result<Rows, ReplicaError> {
        if !self.ready() {
            return Err(ReplicaError::NotReady("catching up with the training servers".into()));
        }
        if !self.held.is_empty() {
            let num_slots = self.num_slots();
            for key in keys {
                let slot = slot_of(*key, num_slots);
                if !self.held[slot as usize] {
                    return Err(ReplicaError::NotOwned { key: *key, slot, num_slots, map_version: self.map_version });
                }
            }
        }
        if version != 0 && !self.versions.lock().contains(&version) {
            return Err(ReplicaError::VersionNotKept { version, kept: self.versions() });
        }
        let held: Vec<Option<Arc<Held>>> = self
            .sources
            .iter()
            .map(|s| if version == 0 { s.tables.read() } else { s.pinned.read() }.get(table).cloned())
            .collect();
        let Some(any) = held.iter().flatten().next() else {
            return Err(ReplicaError::UnknownTable(table.to_string()));
        };
        let (spec, dim) = (any.spec.clone(), any.table.dim());
        let views: Vec<Option<Arc<View>>> = held
            .iter()
            .map(|h| {
                let h = h.as_ref()?;
                if version == 0 {
                    Some(h.table.view())
                } else {
                    h.table.version(version)
                }
            })
            .collect();
        let mut values = vec![0f32; keys.len() * dim];
        let mut missing = vec![false; keys.len()];
        let single = views.len() == 1;
        for (i, key) in keys.iter().enumerate() {
            let source = if single { 0 } else { self.map.server_of(*key) };
            let out = &mut values[i * dim..(i + 1) * dim];
            match views[source].as_ref().and_then(|v| v.get(*key)) {
                Some(row) if row.len() == dim => out.copy_from_slice(row),
                _ => {
                    spec.fill_weights(*key, out);
                    missing[i] = true;
                }
            }
        }
        Ok(Rows { dim, values, missing })
    }
}
