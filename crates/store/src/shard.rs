//! One internal shard of a sparse table: a key index over a dense row arena.
//!
//! Rows live back to back in one cache-line-aligned arena of floats (`stride` = dim weights +
//! optimizer state), with their metadata in a parallel `Vec<RowMeta>`; the index maps key ->
//! position. Deleting a row moves the last row into its place, so the arena has no holes and a
//! scan (stats, checkpoints) touches only live rows. Nothing here locks: the table holds each
//! shard behind its own mutex.
//!
//! Change tracking for incremental checkpoints: every row created or updated is flagged changed,
//! every removed key is remembered as deleted, until a checkpoint takes the changes. A key both
//! deleted and re-created since then is only changed (its new row is what the next checkpoint
//! must hold). A changed row that leaves DRAM takes its flag along as a mark in the cold tier
//! (`sparse/tiered.rs`), so no per-key state here grows with the cold tier.
//!
//! Separately, every create, update and removal is noted in the shard's [`DeltaLog`] (for
//! replicas' row deltas, `crate::delta`); restores, promotions and demotions are not changes.

use ember_core::U64Map;

use crate::admission::CountMin;
use crate::arena::Arena;
use crate::delta::DeltaLog;
use crate::record::encode_keyed_row_into;

/// Per-row metadata kept beside the values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowMeta {
    /// The row's key (needed to fix the index when rows move).
    pub key: u64,
    /// Pushes applied to this row (duplicates within one push count once).
    pub updates: u64,
    /// Table version when the row was created or last updated (the TTL in steps counts from it).
    pub last_step: u64,
    /// Store clock (unix seconds) when the row was created or last updated.
    pub last_time: u64,
}

/// Demotion rounds between two halvings of the heat counts. Under a steady stream of
/// promotions a round runs every fraction of a second; halving at every round forgot a row's
/// reads before they could tell warm rows from ones read once (docs/benchmarks.md: Zipf 1.1
/// pulls 88% hot when halving every round, 91% every 4, 93% every 16).
const COOL_EVERY: u32 = 16;

/// Rows of one shard.
#[derive(Debug, Default)]
pub struct Shard {
    index: U64Map<u32>,
    data: Arena,
    meta: Vec<RowMeta>,
    /// Parallel to `meta`: changed since the last checkpoint took this shard's changes.
    changed: Vec<bool>,
    /// Parallel to `meta`: reads and writes of the row, saturating, halved every `COOL_EVERY`
    /// demotion rounds that look at this shard: a frequency count that forgets. Demotion takes the
    /// coldest rows first, so rows pulled often stay in DRAM even if never updated.
    heat: Vec<u8>,
    /// Demotion rounds that looked at this shard.
    rounds: u32,
    /// Parallel to `meta`: the row differs from its cold-tier record, or has none. A row promoted
    /// and only read since is clean, and demoting it needs no write.
    dirty: Vec<bool>,
    /// Keys removed since then.
    deleted: U64Map<()>,
    /// Admission counts, when the table's policy admits by count.
    sketch: Option<Box<CountMin>>,
    /// Keys created, updated or removed, by delta sequence (replicas).
    log: DeltaLog,
    /// Parallel to `meta`: the low 32 bits of the delta sequence the row's key was last logged
    /// at. A row changed again before the next cut is not logged again: a hot row pushed a
    /// thousand times between two cuts costs one entry. (A false match needs a row untouched
    /// for exactly a multiple of 2^32 cuts: decades at several cuts a second.)
    noted: Vec<u32>,
}

impl Shard {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.meta.len()
    }

    /// Position of `key`'s row, if it has one.
    #[inline]
    pub fn find(&self, key: u64) -> Option<usize> {
        self.index.get(&key).map(|p| *p as usize)
    }

    /// The positions of `keys` (`None` when absent), then a pass that loads each found row's
    /// metadata and its first and last value (a row of 32 floats, dim 16 with Adagrad, is two
    /// cache lines: weights, then optimizer state). Each loop's iterations are independent, so
    /// the CPU overlaps their cache misses; looked up one at a time between row updates, every
    /// miss stalls (the index probe and the metadata load were 80% of a push's time under perf;
    /// a pull's short loop body overlaps them already, and measured no faster this way).
    pub fn locate(&self, keys: impl Iterator<Item = u64>, stride: usize) -> Vec<Option<usize>> {
        let found: Vec<Option<usize>> = keys.map(|key| self.find(key)).collect();
        let touched = found.iter().flatten().fold(0u64, |acc, &pos| {
            let row = self.row(pos, stride);
            acc ^ self.meta[pos].updates ^ u64::from(row[0].to_bits() ^ row[stride - 1].to_bits())
        });
        std::hint::black_box(touched);
        found
    }

    /// A shard that counts keys before admitting them.
    pub fn with_admission() -> Self {
        Self { sketch: Some(Box::default()), ..Self::default() }
    }

    /// Counts a sighting of `key` and says whether it has now been seen `min_count` times.
    /// Always true without a sketch.
    #[inline]
    pub fn admit(&mut self, key: u64, min_count: u32) -> bool {
        match &mut self.sketch {
            Some(sketch) => sketch.increment(key) >= min_count,
            None => true,
        }
    }

    /// The admission counters, if any (checkpoints).
    pub fn sketch(&self) -> Option<&CountMin> {
        self.sketch.as_deref()
    }

    /// Replaces the admission counters (restore).
    pub fn set_sketch(&mut self, sketch: CountMin) {
        self.sketch = Some(Box::new(sketch));
    }

    /// The shard's delta log (attach it to the store's clock; read changes from it).
    pub fn delta_log(&mut self) -> &mut DeltaLog {
        &mut self.log
    }

    /// The delta log, read-only.
    pub fn deltas(&self) -> &DeltaLog {
        &self.log
    }

    /// Appends a row for `key` (which must be absent), created at `step` and `time`, letting
    /// `init` fill its `stride` values. A change: noted in the delta log.
    #[inline]
    pub fn insert_with(
        &mut self,
        key: u64,
        stride: usize,
        step: u64,
        time: u64,
        init: impl FnOnce(&mut [f32]),
    ) -> usize {
        let pos = self.place(key, stride, step, time, init);
        self.note_row(pos);
        pos
    }

    /// Logs the change of the row at `pos`, once per cut.
    #[inline]
    fn note_row(&mut self, pos: usize) {
        // Nobody follows: not even the row's `noted` slot is read (a cache miss per row).
        if !self.log.is_logging() {
            return;
        }
        if let Some(seq) = self.log.note_once(self.meta[pos].key, self.noted[pos]) {
            self.noted[pos] = seq;
            if self.log.is_full() {
                self.compact_log();
            }
        }
    }

    /// Notes a removed key (no row to remember it by).
    fn note_gone(&mut self, key: u64) {
        self.log.note(key);
        if self.log.is_full() {
            self.compact_log();
        }
    }

    /// Drops log entries that are not their key's newest, in place: a live row's newest is the
    /// one tagged with its `noted` sequence. Entries of keys not in DRAM (removed, or demoted
    /// with changes a subscriber may not have read) and of rows whose last entry is unknown
    /// (`noted` 0: restored or promoted) are kept.
    fn compact_log(&mut self) {
        let (index, noted) = (&self.index, &self.noted);
        self.log.compact(|seq, key| match index.get(&key) {
            Some(&pos) => {
                let last = noted[pos as usize];
                last == 0 || last == seq as u32
            }
            None => true,
        });
    }

    /// [`Self::insert_with`] without the delta-log note (restores and promotions).
    fn place(&mut self, key: u64, stride: usize, step: u64, time: u64, init: impl FnOnce(&mut [f32])) -> usize {
        let pos = self.meta.len();
        if self.meta.len() == self.meta.capacity() {
            self.grow(stride);
        }
        self.data.resize(self.data.len() + stride);
        init(&mut self.data[pos * stride..]);
        self.meta.push(RowMeta { key, updates: 0, last_step: step, last_time: time });
        self.changed.push(true);
        self.heat.push(1);
        self.dirty.push(true);
        self.noted.push(0);
        self.index.insert(key, pos as u32);
        self.deleted.remove(&key);
        pos
    }

    /// Puts a restored row in place, replacing `key`'s row if it has one. Not flagged changed:
    /// it is already in the checkpoint it came from.
    pub fn restore(&mut self, meta: RowMeta, values: &[f32]) {
        let stride = values.len();
        let pos = match self.find(meta.key) {
            Some(pos) => pos,
            None => {
                let pos = self.place(meta.key, stride, 0, 0, |_| {});
                self.changed[pos] = false;
                pos
            }
        };
        self.data[pos * stride..(pos + 1) * stride].copy_from_slice(values);
        self.meta[pos] = meta;
        self.dirty[pos] = true;
    }

    /// The `stride` values of the row at `pos`.
    #[inline]
    pub fn row(&self, pos: usize, stride: usize) -> &[f32] {
        &self.data[pos * stride..(pos + 1) * stride]
    }

    /// The values and metadata of the row at `pos`, mutably; flags the row changed.
    #[inline]
    pub fn row_mut(&mut self, pos: usize, stride: usize) -> (&mut [f32], &mut RowMeta) {
        self.note_row(pos);
        self.changed[pos] = true;
        self.touch(pos);
        self.dirty[pos] = true;
        (&mut self.data[pos * stride..(pos + 1) * stride], &mut self.meta[pos])
    }

    /// Counts a read or write of the row at `pos`.
    #[inline]
    pub fn touch(&mut self, pos: usize) {
        self.heat[pos] = self.heat[pos].saturating_add(1);
    }

    /// How often the row at `pos` was read or written lately (see [`Shard::cool`]).
    pub fn heat(&self, pos: usize) -> u8 {
        self.heat[pos]
    }

    /// Called once per demotion round: every `COOL_EVERY` rounds, halves every row's heat, so
    /// old reads count half as much as new ones.
    pub fn cool(&mut self) {
        self.rounds = self.rounds.wrapping_add(1);
        if self.rounds.is_multiple_of(COOL_EVERY) {
            self.heat.iter_mut().for_each(|h| *h >>= 1);
        }
    }

    /// Whether the row at `pos` must be written to the cold tier before it leaves DRAM.
    pub fn is_dirty(&self, pos: usize) -> bool {
        self.dirty[pos]
    }

    /// Metadata of the row at `pos`.
    pub fn meta(&self, pos: usize) -> &RowMeta {
        &self.meta[pos]
    }

    /// Removes `key`'s row, remembering the deletion for the next checkpoint; true if it existed.
    pub fn remove(&mut self, key: u64, stride: usize) -> bool {
        let removed = self.take_out(key, stride);
        if removed {
            self.deleted.insert(key, ());
            self.note_gone(key);
        }
        removed
    }

    /// Records `key` as deleted for the next checkpoint (a delete that found only a cold copy).
    pub fn note_deleted(&mut self, key: u64) {
        self.deleted.insert(key, ());
        self.note_gone(key);
    }

    /// Moves `key`'s row out of the hot tier (its record, and its change mark if it has changes no
    /// checkpoint holds, are already in the cold tier): not a deletion. True if it was here.
    pub fn demote(&mut self, key: u64, stride: usize) -> bool {
        self.take_out(key, stride)
    }

    /// Puts a row read from the cold tier back in the hot tier, clean (equal to its record) and
    /// not flagged changed: if it left DRAM with changes, its key is still marked in the cold
    /// tier, and the next checkpoint writes it from there or from here. Returns its position.
    pub fn promote(&mut self, meta: RowMeta, values: &[f32]) -> usize {
        let stride = values.len();
        let pos = self.place(meta.key, stride, meta.last_step, meta.last_time, |row| row.copy_from_slice(values));
        self.meta[pos] = meta;
        self.changed[pos] = false;
        self.dirty[pos] = false;
        pos
    }

    /// Whether the row at `pos` changed since the last checkpoint took this shard's changes.
    pub fn is_changed(&self, pos: usize) -> bool {
        self.changed[pos]
    }

    /// Grows the arena and its parallel vectors by an eighth (at least 64 rows), not by doubling:
    /// a tiered table's rows are bounded by bytes, and a doubled arena would hold up to twice
    /// what the budget counts. Still geometric, so appends stay amortized O(1).
    fn grow(&mut self, stride: usize) {
        let more = (self.meta.len() / 8).max(64);
        self.data.reserve_exact(more * stride);
        self.meta.reserve_exact(more);
        self.changed.reserve_exact(more);
        self.heat.reserve_exact(more);
        self.dirty.reserve_exact(more);
        self.noted.reserve_exact(more);
    }

    /// Gives memory back after demotions emptied much of the shard: the arena, metadata and
    /// index keep their peak capacity otherwise, and the DRAM budget would bound nothing real.
    /// Only when capacity is over 1.5 times the rows, so a shard hovering near its size does not
    /// reallocate every round.
    pub fn shrink_if_sparse(&mut self, stride: usize) {
        let len = self.meta.len();
        if self.meta.capacity() > len + len / 2 + 64 {
            let keep = len + len / 8;
            self.data.shrink_to(keep * stride);
            self.meta.shrink_to(keep);
            self.changed.shrink_to(keep);
            self.heat.shrink_to(keep);
            self.dirty.shrink_to(keep);
            self.noted.shrink_to(keep);
            self.index.shrink_to(keep);
        }
    }

    /// Metadata of every row with its position, for choosing demotion victims.
    pub fn rows(&self) -> impl Iterator<Item = (usize, &RowMeta)> {
        self.meta.iter().enumerate()
    }

    fn take_out(&mut self, key: u64, stride: usize) -> bool {
        let Some(pos) = self.index.remove(&key).map(|p| p as usize) else {
            return false;
        };
        let last = self.meta.len() - 1;
        if pos != last {
            self.data.copy_within(last * stride..(last + 1) * stride, pos * stride);
            self.meta[pos] = self.meta[last];
            self.changed[pos] = self.changed[last];
            self.heat[pos] = self.heat[last];
            self.dirty[pos] = self.dirty[last];
            self.noted[pos] = self.noted[last];
            self.index.insert(self.meta[pos].key, pos as u32);
        }
        self.meta.pop();
        self.changed.pop();
        self.heat.pop();
        self.dirty.pop();
        self.noted.pop();
        self.data.truncate(last * stride);
        true
    }

    /// Appends rows to `out` as checkpoint records (`record::encode_keyed_row_into`), all rows
    /// if `all` or else only changed ones, and returns how many; then
    /// forgets the changes. Deleted keys are returned (only when not `all`: a full checkpoint has
    /// no history to delete from).
    ///
    /// `skip_clean` (a full checkpoint of a tiered table, which writes the whole cold tier too)
    /// leaves out clean rows: each equals its cold record, metadata included, so writing it again
    /// only made the file bigger (10-18% more records in the bench) and the restore slower.
    pub fn take_changes(&mut self, stride: usize, all: bool, skip_clean: bool, out: &mut Vec<u8>) -> (u64, Vec<u64>) {
        let mut rows = 0;
        for (pos, changed) in self.changed.iter_mut().enumerate() {
            let write = if all { !skip_clean || self.dirty[pos] } else { *changed };
            if write {
                encode_keyed_row_into(out, &self.meta[pos], &self.data[pos * stride..(pos + 1) * stride]);
                rows += 1;
            }
            *changed = false;
        }
        let deleted = std::mem::take(&mut self.deleted);
        let deleted = if all { Vec::new() } else { deleted.into_keys().collect() };
        (rows, deleted)
    }

    /// Removes every row `expired` says to (given its metadata and `stride` values); returns their
    /// keys.
    pub fn evict(&mut self, stride: usize, expired: impl Fn(&RowMeta, &[f32]) -> bool) -> Vec<u64> {
        let doomed: Vec<u64> = (0..self.len())
            .filter(|pos| expired(&self.meta[*pos], self.row(*pos, stride)))
            .map(|pos| self.meta[pos].key)
            .collect();
        for key in &doomed {
            self.remove(*key, stride);
        }
        doomed
    }

    /// Forgets all change tracking (after a restore, the store equals its checkpoints).
    pub fn forget_changes(&mut self) {
        self.changed.fill(false);
        self.deleted = U64Map::default();
    }

    /// Heap bytes as allocated: arena, metadata and per-row flags at their capacity, and the
    /// hash indexes at their table size ([`hash_table_bytes`]).
    pub fn heap_bytes(&self) -> usize {
        self.data.capacity() * 4
            + self.meta.capacity() * (std::mem::size_of::<RowMeta>() + 3 + 4)
            + hash_table_bytes(self.index.capacity(), std::mem::size_of::<(u64, u32)>())
            + hash_table_bytes(self.deleted.capacity(), std::mem::size_of::<u64>())
            + self.sketch.as_ref().map_or(0, |s| s.heap_bytes())
            + self.log.heap_bytes()
    }
}

/// Bytes of a std (hashbrown) hash table that reports `capacity`: a power-of-two bucket count
/// of which at most 7/8 are usable, each bucket an entry of `entry_bytes` (a `(u64, u32)` pads to
/// 16) plus a control byte, and one 16-byte control group more. Counting `capacity * 13` for the
/// index, as this did before, missed a third of it.
fn hash_table_bytes(capacity: usize, entry_bytes: usize) -> usize {
    if capacity == 0 {
        return 0;
    }
    let buckets =
        if capacity < 8 { (capacity + 1).next_power_of_two() } else { (capacity * 8 / 7).next_power_of_two() };
    buckets * (entry_bytes + 1) + 16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_table_bytes_follow_the_bucket_count_the_capacity_implies() {
        assert_eq!(hash_table_bytes(0, 16), 0);
        assert_eq!(hash_table_bytes(3, 16), 4 * 17 + 16);
        assert_eq!(hash_table_bytes(7, 16), 8 * 17 + 16);
        assert_eq!(hash_table_bytes(14, 16), 16 * 17 + 16);
        assert_eq!(hash_table_bytes(896, 16), 1024 * 17 + 16);
        let mut map: U64Map<u32> = U64Map::default();
        map.extend((0..1000).map(|k| (k, 0)));
        // std reports 7/8 of a power of two for tables of 8 buckets and more.
        let buckets = hash_table_bytes(map.capacity(), 16) / 17;
        assert!(buckets.is_power_of_two() && buckets * 7 / 8 == map.capacity(), "{} -> {buckets}", map.capacity());
    }

    #[test]
    fn remove_moves_the_last_row_and_keeps_the_index_right() {
        let mut s = Shard::default();
        for key in 0..5u64 {
            s.insert_with(key, 2, 0, 0, |r| r[..2].copy_from_slice(&[key as f32, -(key as f32)]));
        }
        assert!(s.remove(1, 2));
        assert!(!s.remove(1, 2));
        assert_eq!(s.len(), 4);
        for key in [0u64, 2, 3, 4] {
            let pos = s.find(key).unwrap();
            assert_eq!(s.row(pos, 2), &[key as f32, -(key as f32)]);
            assert_eq!(s.meta(pos).key, key);
        }
        assert!(s.remove(4, 2) && s.remove(0, 2) && s.remove(2, 2) && s.remove(3, 2));
        assert_eq!(s.len(), 0);
    }
}
