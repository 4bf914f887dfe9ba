//! Pushes: checking a push whole, then applying it now (scaled by staleness) or buffering it
//! (softsync, sync) and applying the buffer as one update.

use std::sync::atomic::Ordering;

use ember_core::sync::{staleness_weight, ApplyRule};

use super::{PushOutcome, SparseTable, StepScale};
use crate::shard::Shard;
use crate::StoreError;

impl SparseTable {
    /// Applies one (summed) gradient to the row at `pos`, the step scaled by `scale`. Returns
    /// whether every coordinate took its update: a coordinate whose update overflowed to NaN or
    /// Inf is reset to its initial value and state (what the row's key starts from), and the
    /// row is counted.
    pub(super) fn apply_at(
        &self,
        shard: &mut Shard,
        pos: usize,
        grad: &[f32],
        (version, now): (u64, u64),
        scale: StepScale,
    ) -> bool {
        let (row, meta) = shard.row_mut(pos, self.stride);
        // A row never updated still holds its initializer's value, which is what any pull read.
        let lr_scale = if meta.updates == 0 { scale.fresh } else { scale.of(meta.last_step) };
        meta.updates += 1;
        meta.last_step = version;
        meta.last_time = now;
        let (weights, state) = row.split_at_mut(self.dim);
        if self.spec.apply_scaled(weights, state, grad, meta.updates, lr_scale) == 0 {
            return true;
        }
        self.spec.repair(meta.key, weights, state);
        self.rejected_nonfinite.fetch_add(1, Ordering::Relaxed);
        false
    }

    /// A push with no gradient version (staleness 0); see [`Self::push_at`].
    pub fn push(&self, keys: &[u64], grads: &[f32]) -> Result<PushOutcome, StoreError> {
        self.push_at(keys, grads, None)
    }

    /// Applies `grads` (`keys.len() * dim`, request order), computed from the table at
    /// `gradient_version`, by the table's apply rule, creating missing rows first. Rejects the
    /// whole push, changing nothing, if any value is NaN or Inf.
    pub fn push_at(
        &self,
        keys: &[u64],
        grads: &[f32],
        gradient_version: Option<u64>,
    ) -> Result<PushOutcome, StoreError> {
        self.check_gradients(keys, grads)?;
        let staleness = gradient_version.map_or(0, |v| self.version().saturating_sub(v));
        let outcome = match self.spec.sync {
            ApplyRule::Async => self.apply_push(keys, grads, StepScale::uniform(1.0))?,
            ApplyRule::Staleness { lambda0 } => {
                let scale = match gradient_version {
                    Some(since) => StepScale {
                        stale: staleness_weight(lambda0, staleness),
                        fresh: staleness_weight(lambda0, 0),
                        since,
                    },
                    None => StepScale::uniform(staleness_weight(lambda0, 0)),
                };
                self.apply_push(keys, grads, scale)?
            }
            ApplyRule::Softsync { s, lambda0 } => {
                self.buffer_push(keys, grads, staleness_weight(lambda0, staleness), s)?
            }
            ApplyRule::Sync { s } => self.buffer_push(keys, grads, 1.0, s)?,
        };
        Ok(PushOutcome { staleness, ..outcome })
    }

    /// Buffers a push weighted by `weight`; the `s`-th applies the buffer as one update.
    fn buffer_push(&self, keys: &[u64], grads: &[f32], weight: f32, s: u32) -> Result<PushOutcome, StoreError> {
        match self.pending.add(keys, grads, self.dim, weight, s) {
            Some(merged) => self.apply_push(&merged.keys, &merged.grads, StepScale::uniform(1.0)),
            None => Ok(PushOutcome { version: self.version(), buffered: true, ..PushOutcome::default() }),
        }
    }

    /// Applies the softsync buffer, if any, as the sum of the (weighted) gradients received;
    /// returns the rows updated.
    pub fn flush_pending(&self) -> Result<u64, StoreError> {
        match self.pending.flush() {
            Some(merged) => Ok(self.apply_push(&merged.keys, &merged.grads, StepScale::uniform(1.0))?.rows_updated),
            None => Ok(0),
        }
    }

    fn check_gradients(&self, keys: &[u64], grads: &[f32]) -> Result<(), StoreError> {
        let dim = self.dim;
        if grads.len() != keys.len() * dim {
            return Err(StoreError::BadLength {
                table: self.spec.name.clone(),
                what: "gradients",
                got_bytes: grads.len() * 4,
                keys: keys.len(),
                dim,
            });
        }
        if let Some(i) = grads.iter().position(|g| !g.is_finite()) {
            self.rejected_nonfinite.fetch_add(1, Ordering::Relaxed);
            return Err(StoreError::NonFinite { table: self.spec.name.clone(), key: keys[i / dim], value: grads[i] });
        }
        Ok(())
    }

    /// Applies checked gradients now, as one version.
    fn apply_push(&self, keys: &[u64], grads: &[f32], scale: StepScale) -> Result<PushOutcome, StoreError> {
        let dim = self.dim;
        let mut g = self.group(keys);
        // Sort each shard's part by key so duplicates are adjacent; stable, so they stay in
        // request order and their sum is deterministic.
        for s in 0..self.shards.len() {
            g.order[g.offsets[s] as usize..g.offsets[s + 1] as usize].sort_by_key(|i| keys[*i as usize]);
        }
        let epochs = if self.cold.is_some() { self.tier.epochs() } else { Vec::new() };
        let version = self.version.fetch_add(1, Ordering::AcqRel) + 1;
        let (now, admission) = (self.now(), self.spec.policy.admission());
        let mut scratch = vec![0f32; dim];
        let (mut rows_updated, mut dropped, mut rejected) = (0u64, 0u64, 0u64);
        // Hot misses of a tiered table: their keys and summed gradients, resolved after the
        // cold tier has been read without any lock held.
        let (mut cold_keys, mut cold_grads) = (Vec::new(), Vec::new());
        for (s, part) in g.parts() {
            let mut shard = self.shards[s].lock();
            // Rows only get appended below, so positions found now stay valid under the lock.
            let found = shard.locate(part.iter().map(|&i| keys[i as usize]), self.stride);
            let mut run = 0;
            while run < part.len() {
                let key = keys[part[run] as usize];
                let mut end = run + 1;
                while end < part.len() && keys[part[end] as usize] == key {
                    end += 1;
                }
                let first = part[run] as usize;
                let grad: &[f32] = if end - run == 1 {
                    &grads[first * dim..(first + 1) * dim]
                } else {
                    scratch.fill(0.0);
                    for &i in &part[run..end] {
                        let i = i as usize;
                        for (acc, g) in scratch.iter_mut().zip(&grads[i * dim..(i + 1) * dim]) {
                            *acc += g;
                        }
                    }
                    &scratch
                };
                let pos = match found[run] {
                    Some(pos) => pos,
                    None if self.cold.is_some() => {
                        cold_keys.push(key);
                        cold_grads.extend_from_slice(grad);
                        run = end;
                        continue;
                    }
                    None if admission => {
                        dropped += 1;
                        run = end;
                        continue;
                    }
                    None => shard.insert_with(key, self.stride, version, now, |row| self.init_row(key, row)),
                };
                rows_updated += 1;
                if !self.apply_at(&mut shard, pos, grad, (version, now), scale) {
                    rejected += 1;
                }
                run = end;
            }
        }
        if let Some(cold) = &self.cold {
            self.tier.count_hot_hits(keys.len() - cold_keys.len());
            if !cold_keys.is_empty() {
                let (updated, not_admitted, not_finite) =
                    self.push_cold(cold.as_ref(), cold_keys, cold_grads, (version, scale), epochs)?;
                rows_updated += updated;
                dropped += not_admitted;
                rejected += not_finite;
            }
        }
        self.row_updates.fetch_add(rows_updated, Ordering::Relaxed);
        if dropped > 0 {
            self.dropped.fetch_add(dropped, Ordering::Relaxed);
        }
        Ok(PushOutcome { rows_updated, version, rows_rejected: rejected, ..PushOutcome::default() })
    }
}
