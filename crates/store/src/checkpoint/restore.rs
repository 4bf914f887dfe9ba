//! Restore: the newest intact chain of a checkpoint directory, applied to an empty store; and a
//! running store returned to a named checkpoint (a rollback).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::format::{self, BodyReader, TAG_DELETED, TAG_END, TAG_ROWS, TAG_SKETCH};
use super::{CheckpointError, CheckpointInfo, CheckpointKind, Checkpointer, Header, IfNoIntactChain};
use crate::record::{decode_keyed_row, KEYED_HEADER};
use crate::{Store, Table};

impl Checkpointer {
    /// Restores the newest intact chain into `store` (which should be empty), skipping corrupt
    /// files with a warning. Returns the chain applied, empty if there was nothing to restore.
    /// When checkpoint files exist but none starts an intact chain, `if_none` decides.
    pub fn restore(&self, store: &Store, if_none: IfNoIntactChain) -> Result<Vec<CheckpointInfo>, CheckpointError> {
        let mut state = self.state.lock();
        let files = Self::files(&self.dir)?;
        let mut headers: BTreeMap<u64, (Header, PathBuf, u64)> = BTreeMap::new();
        let mut damaged = Vec::new();
        for (id, _, path) in &files {
            match format::verify(path).and_then(|body| Ok((BodyReader::open(path, body)?.header()?, body))) {
                Ok((h, _)) if h.id != *id => {
                    tracing::warn!(path = %path.display(), header_id = h.id, "checkpoint id does not match its name; skipped");
                    damaged.push(format!("{}: header says id {}", path.display(), h.id));
                }
                Ok((h, body)) => {
                    headers.insert(*id, (h, path.clone(), body));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "skipping checkpoint file");
                    damaged.push(e.to_string());
                }
            }
        }
        let fulls: Vec<u64> =
            headers.values().filter(|(h, _, _)| h.kind == CheckpointKind::Full).map(|(h, _, _)| h.id).rev().collect();
        let Some(&full) = fulls.first() else {
            if files.is_empty() || if_none == IfNoIntactChain::StartEmpty {
                if !files.is_empty() {
                    tracing::error!(dir = %self.dir.display(), files = files.len(), "no intact checkpoint chain; starting empty as allowed");
                }
                return Ok(Vec::new());
            }
            for (id, _, path) in &files {
                if headers.contains_key(id) {
                    damaged.push(format!("{}: an incremental whose full checkpoint is gone", path.display()));
                }
            }
            return Err(CheckpointError::NoIntactChain { dir: self.dir.clone(), damaged });
        };
        if let Some(newest) = files.iter().rev().find(|f| f.1 == CheckpointKind::Full) {
            if newest.0 != full {
                tracing::error!(newest = %newest.2.display(), restoring = full, "the newest full checkpoint is unusable; restoring an older chain");
            }
        }
        // The chain: from the full, repeatedly the newest good incremental whose parent is the tip.
        let mut chain = vec![full];
        loop {
            let tip = chain[chain.len() - 1];
            let next =
                headers.values().rev().find(|(h, _, _)| h.kind == CheckpointKind::Incremental && h.parent == tip);
            match next {
                Some((h, _, _)) => chain.push(h.id),
                None => break,
            }
        }
        let files: Vec<(PathBuf, u64, Header)> = chain
            .iter()
            .map(|id| {
                let (header, path, body) = &headers[id];
                (path.clone(), *body, *header)
            })
            .collect();
        let applied = apply_chain(store, &files)?;
        state.chain = applied.clone();
        state.force_full = false;
        Ok(applied)
    }

    /// Returns a running `store` to checkpoint `upto` (rows, optimizer state, admission counts,
    /// dense tables): the chain ending there is applied from its full checkpoint, which replaces
    /// every table it holds, and tables it does not hold are dropped. Then a full checkpoint of
    /// the result is written (labeled as `upto` was), so a restart restores it, not the branch
    /// rolled back from. The caller keeps writers away meanwhile. Nothing is applied unless every
    /// file of the chain verifies first.
    pub fn restore_to(
        &self,
        store: &Store,
        upto: u64,
    ) -> Result<(Vec<CheckpointInfo>, CheckpointInfo), CheckpointError> {
        let files = self.lineage(0, upto)?;
        let label = files.last().map_or(0, |(_, _, h)| h.label);
        let applied = {
            let mut state = self.state.lock();
            let applied = apply_chain(store, &files)?;
            state.chain.clear();
            state.force_full = true;
            applied
        };
        let written = self.write(store, CheckpointKind::Full, label)?;
        Ok((applied, written))
    }
}

/// Applies verified chain files, oldest first, to `store`; what restore reports of each.
fn apply_chain(store: &Store, files: &[(PathBuf, u64, Header)]) -> Result<Vec<CheckpointInfo>, CheckpointError> {
    let mut applied = Vec::new();
    for (path, body, header) in files {
        let started = Instant::now();
        let (rows, deleted) = apply_file(store, path, *body)?;
        applied.push(CheckpointInfo {
            id: header.id,
            kind: header.kind,
            parent: header.parent,
            label: header.label,
            unix_ms: header.unix_ms,
            file: path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            bytes: body + 16,
            rows,
            deleted,
            tables: header.tables,
            seconds: started.elapsed().as_secs_f64(),
        });
    }
    for table in store.all_tables() {
        if let Table::Sparse(t) = table {
            t.forget_changes()?;
        }
    }
    store.take_dropped_flag();
    Ok(applied)
}

/// Applies one verified file to `store`; returns (rows, deleted keys).
fn apply_file(store: &Store, path: &Path, body: u64) -> Result<(u64, u64), CheckpointError> {
    let mut r = BodyReader::open(path, body)?;
    let header = r.header()?;
    let mut names = Vec::new();
    let (mut rows, mut deleted) = (0, 0);
    for _ in 0..header.tables {
        let (spec, version) = r.table_start()?;
        if header.kind == CheckpointKind::Full {
            let _ = store.drop_table(&spec.name);
        }
        store.create_table(spec.clone(), None)?;
        names.push(spec.name.clone());
        if format::is_sparse(&spec) {
            let table = store.sparse(&spec.name)?;
            let stride = table.stride();
            let mut record = vec![0u8; KEYED_HEADER + stride * 4];
            let mut values = vec![0f32; stride];
            loop {
                match r.u8()? {
                    TAG_END => break,
                    TAG_ROWS => {
                        let n = r.u64()?;
                        let mut not_finite = 0u64;
                        for _ in 0..n {
                            r.bytes(&mut record)?;
                            let meta = decode_keyed_row(&record, &mut values)
                                .ok_or_else(|| r.corrupt(format!("table {}: malformed row record", spec.name)))?;
                            // Rows never hold NaN or Inf; a checkpoint written before the store
                            // guarded its updates might. Such a row restarts from its initializer.
                            if values.iter().all(|v| v.is_finite()) {
                                table.restore_row(meta, &values);
                            } else {
                                not_finite += 1;
                            }
                        }
                        if not_finite > 0 {
                            tracing::warn!(table = %spec.name, rows = not_finite, path = %path.display(), "skipped rows holding NaN or Inf");
                        }
                        rows += n - not_finite;
                        // A tiered store restores more rows than fit in DRAM: demote as it goes.
                        store.enforce_budget()?;
                    }
                    TAG_DELETED => {
                        let n = r.u64()?;
                        let mut keys = Vec::with_capacity(n.min(1 << 20) as usize);
                        for _ in 0..n {
                            keys.push(r.u64()?);
                        }
                        table.delete(&keys)?;
                        deleted += n;
                    }
                    TAG_SKETCH => {
                        let shard = r.u32()? as usize;
                        let len = r.u64()?;
                        if len > 1 << 24 {
                            return Err(r.corrupt(format!("table {}: admission counts of {len} bytes", spec.name)));
                        }
                        let mut bytes = vec![0u8; len as usize];
                        r.bytes(&mut bytes)?;
                        if !table.restore_shard_sketch(shard, &bytes) {
                            tracing::warn!(table = %spec.name, shard, "admission counts do not fit this table's shards; they restart from zero");
                        }
                    }
                    other => return Err(r.corrupt(format!("table {}: unknown block tag {other}", spec.name))),
                }
            }
            table.restore_version(version);
        } else {
            let table = store.dense(&spec.name)?;
            let dim = spec.dim as usize;
            let values = r.f32s(dim)?;
            let state = r.f32s(spec.optimizer.state_len(dim))?;
            if !values.iter().chain(&state).all(|v| v.is_finite()) {
                return Err(r.corrupt(format!("dense table {} holds NaN or Inf", spec.name)));
            }
            table.restore(values, state, version);
        }
    }
    r.finish()?;
    // Tables dropped since the previous checkpoint of the chain.
    for spec in store.list_tables() {
        if !names.contains(&spec.name) {
            let _ = store.drop_table(&spec.name);
        }
    }
    Ok((rows, deleted))
}
