//! Row deltas: which keys changed since a sequence number, for read-only replicas.
//!
//! A store has one [`DeltaClock`]: a sequence number that only a *cut* advances, and a stream
//! id that names this store instance (a restarted or restored server starts a new stream, so a
//! subscriber's old sequence numbers mean nothing there). Each shard of a sparse table keeps a
//! [`DeltaLog`] of `(sequence, key)` entries, appended under the shard's lock whenever a row is
//! created, updated or removed (eviction and deletes; demotion to the cold tier is not a change).
//!
//! Invariants:
//! - A cut returns `W` and moves the clock to `W + 1`. Every change made before the cut is
//!   tagged `<= W`; every change after it `> W`. (A writer reads the clock under its shard lock,
//!   and a cut's reader takes that lock after the cut, so it sees every entry tagged `W`.)
//! - Tags in a log never decrease, so "changes after `from`" is a binary search.
//! - `floor`: every change tagged above it is in the log. A subscriber whose last cut is below
//!   the floor of some shard must resync from a snapshot.
//! - The log is bounded: past its capacity it keeps only each key's newest entry, and if that
//!   is still over half the capacity it drops the oldest entries (raising the floor). Memory is
//!   16 bytes an entry, at most `capacity` entries per shard.
//! - Entries hold keys, not values: a delta reads each changed row's current weights, which are
//!   at least as new as the change. Re-sending a row is harmless (the newest value wins).
//! - Nothing is logged until the first subscriber activates the clock: a server nobody follows
//!   pays one flag load per row change. Positions before activation resync from a snapshot.
//! - A live row is logged once per sequence number (`Shard` remembers the last one per row):
//!   between two cuts a log grows by the distinct rows changed, not by the updates.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// The store's delta sequence and stream id.
#[derive(Debug)]
pub struct DeltaClock {
    seq: AtomicU64,
    /// Set by the first subscriber: until then shards log nothing (no per-row cost).
    active: AtomicBool,
    /// Every log's floor is at least this: the first sequence after activation.
    min_floor: AtomicU64,
    stream_id: u64,
    /// Entries each shard's log keeps before compacting.
    shard_capacity: usize,
}

impl DeltaClock {
    /// A clock starting at sequence 1, with a stream id unique to this instance and shard logs
    /// of `shard_capacity` entries (0 turns delta logs off).
    pub fn new(shard_capacity: usize) -> Self {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        let stream_id = ember_core::mix64(nanos ^ (u64::from(std::process::id()) << 32)).max(1);
        Self {
            seq: AtomicU64::new(1),
            active: AtomicBool::new(false),
            min_floor: AtomicU64::new(u64::MAX),
            stream_id,
            shard_capacity,
        }
    }

    /// Starts logging (idempotent; the first subscription calls it). Changes before it are not
    /// logged, so positions before it resync from a snapshot. A writer reads the flag under its
    /// shard lock, so a reader that locks a shard after this call sees every unlogged change.
    pub fn activate(&self) {
        if self.shard_capacity > 0 && !self.active.load(Ordering::Acquire) {
            let cut = self.cut();
            self.min_floor.fetch_min(cut + 1, Ordering::AcqRel);
            self.active.store(true, Ordering::Release);
        }
    }

    /// Whether shards log changes now.
    #[inline]
    fn logging(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// The id of this store instance's delta stream (never 0).
    pub fn stream_id(&self) -> u64 {
        self.stream_id
    }

    /// The sequence number changes are tagged with now.
    pub fn current(&self) -> u64 {
        self.seq.load(Ordering::Acquire)
    }

    /// Cuts the stream: returns `W` such that every change made before this call is tagged
    /// `<= W` and every later one `> W`.
    pub fn cut(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::AcqRel)
    }

    /// Whether shards keep logs at all.
    pub fn is_on(&self) -> bool {
        self.shard_capacity > 0
    }
}

/// One shard's change log (see the module docs).
#[derive(Debug, Default)]
pub struct DeltaLog {
    clock: Option<Arc<DeltaClock>>,
    entries: Vec<(u64, u64)>,
    floor: u64,
}

impl DeltaLog {
    /// Starts logging against `clock`. Changes from before have no entries: the floor is the
    /// clock's current value, so only subscribers that cut after this point read incrementally.
    pub fn attach(&mut self, clock: Arc<DeltaClock>) {
        if clock.is_on() {
            self.floor = clock.current();
            self.entries.clear();
            self.clock = Some(clock);
        }
    }

    /// Records that `key`'s row was created, updated or removed. The caller compacts the log
    /// when [`Self::is_full`].
    #[inline]
    pub fn note(&mut self, key: u64) {
        if let Some(clock) = self.clock.as_ref().filter(|c| c.logging()) {
            let seq = clock.current();
            self.entries.push((seq, key));
        }
    }

    /// [`Self::note`] unless `last` (the low 32 bits of the sequence the key was last logged
    /// at) is the current sequence: then its entry is already there, or dropped with the floor
    /// raised past it. Returns what `last` becomes when an entry was written.
    #[inline]
    pub fn note_once(&mut self, key: u64, last: u32) -> Option<u32> {
        let clock = self.clock.as_ref().filter(|c| c.logging())?;
        let seq = clock.current();
        if seq as u32 == last {
            return None;
        }
        self.entries.push((seq, key));
        Some(seq as u32)
    }

    /// Whether changes are logged now (attached, and the clock activated by a subscriber).
    #[inline]
    pub fn is_logging(&self) -> bool {
        self.clock.as_ref().is_some_and(|c| c.logging())
    }

    /// Over capacity: [`Self::compact`] is due.
    #[inline]
    pub fn is_full(&self) -> bool {
        self.clock.as_ref().is_some_and(|c| self.entries.len() > c.shard_capacity)
    }

    /// Keeps the entries `newest(seq, key)` says a subscriber may still need (at least each
    /// key's newest entry), in place; then, if over half the capacity remain, drops the oldest
    /// down to half, raising the floor (so half a capacity of appends pass between compactions).
    pub fn compact(&mut self, newest: impl Fn(u64, u64) -> bool) {
        let Some(capacity) = self.clock.as_ref().map(|c| c.shard_capacity) else { return };
        self.entries.retain(|&(seq, key)| newest(seq, key));
        let keep = (capacity / 2).max(1);
        if self.entries.len() > keep {
            let cut = self.entries.len() - keep;
            self.floor = self.floor.max(self.entries[cut - 1].0);
            self.entries.drain(..cut);
        }
    }

    /// Appends the keys changed after `from` (possibly repeated) to `out`; false, appending
    /// nothing, when the log no longer reaches back to `from` or logging is off.
    pub fn since(&self, from: u64, out: &mut Vec<u64>) -> bool {
        let Some(clock) = &self.clock else { return false };
        if from < self.floor || from < clock.min_floor.load(Ordering::Acquire) {
            return false;
        }
        let start = self.entries.partition_point(|(seq, _)| *seq <= from);
        out.extend(self.entries[start..].iter().map(|(_, key)| *key));
        true
    }

    /// Heap bytes.
    pub fn heap_bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<(u64, u64)>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(capacity: usize) -> (DeltaLog, Arc<DeltaClock>) {
        let clock = Arc::new(DeltaClock::new(capacity));
        clock.activate();
        let mut log = DeltaLog::default();
        log.attach(Arc::clone(&clock));
        (log, clock)
    }

    /// Notes a change of `key`'s row as a shard does: once per cut, compacting when full and
    /// keeping each key's newest entry.
    fn note(log: &mut DeltaLog, newest: &mut std::collections::HashMap<u64, u64>, key: u64) {
        let seq = log.clock.as_ref().map_or(0, |c| c.current());
        if newest.insert(key, seq) == Some(seq) {
            return;
        }
        log.note(key);
        if log.is_full() {
            log.compact(|seq, key| newest.get(&key) == Some(&seq));
        }
    }

    fn since(log: &DeltaLog, from: u64) -> Option<Vec<u64>> {
        let mut out = Vec::new();
        log.since(from, &mut out).then(|| {
            out.sort_unstable();
            out.dedup();
            out
        })
    }

    #[test]
    fn a_cut_separates_the_changes_before_it_from_those_after() {
        let (mut log, clock) = log(1024);
        let mut newest = Default::default();
        let start = clock.cut();
        note(&mut log, &mut newest, 1);
        note(&mut log, &mut newest, 2);
        let w = clock.cut();
        note(&mut log, &mut newest, 3);
        note(&mut log, &mut newest, 1);
        assert_eq!(since(&log, start), Some(vec![1, 2, 3]));
        assert_eq!(since(&log, w), Some(vec![1, 3]), "changes after the cut only");
        assert_eq!(since(&log, clock.cut()), Some(vec![]));
    }

    #[test]
    fn compaction_keeps_every_key_a_subscriber_needs_or_raises_the_floor() {
        let (mut log, clock) = log(8);
        let mut newest = Default::default();
        let w0 = clock.cut();
        // The same three keys over and over: compaction dedups, nobody falls behind.
        for round in 0..20u64 {
            note(&mut log, &mut newest, round % 3);
        }
        assert!(log.entries.len() <= 8);
        assert_eq!(since(&log, w0), Some(vec![0, 1, 2]));
        // Many distinct keys after another cut: the oldest entries go and the floor rises.
        let w1 = clock.cut();
        for key in 100..120 {
            note(&mut log, &mut newest, key);
        }
        assert_eq!(since(&log, w0), None, "a subscriber at w0 has to resync");
        let recent = since(&log, w1);
        assert_eq!(recent, None, "entries tagged after w1 were dropped too: resync");
        let w2 = clock.cut();
        note(&mut log, &mut newest, 7);
        assert_eq!(since(&log, w2), Some(vec![7]));
    }

    #[test]
    fn a_row_changed_many_times_between_cuts_is_logged_once_per_cut() {
        let (mut log, clock) = log(1024);
        let mut last = 0;
        let mut change = |log: &mut DeltaLog| {
            if let Some(seq) = log.note_once(9, last) {
                last = seq;
            }
        };
        for _ in 0..100 {
            change(&mut log);
        }
        assert_eq!(log.entries.len(), 1);
        let w = clock.cut();
        assert_eq!(since(&log, w), Some(vec![]));
        for _ in 0..100 {
            change(&mut log);
        }
        assert_eq!(log.entries.len(), 2);
        assert_eq!(since(&log, w), Some(vec![9]), "changed again after the cut");
    }

    #[test]
    fn nothing_is_logged_until_a_subscriber_activates_the_clock() {
        let clock = Arc::new(DeltaClock::new(64));
        let mut log = DeltaLog::default();
        log.attach(Arc::clone(&clock));
        let early = clock.cut();
        log.note(1);
        assert_eq!(log.note_once(2, 0), None);
        assert!(log.entries.is_empty());
        clock.activate();
        assert_eq!(since(&log, early), None, "a position from before activation resyncs");
        let w = clock.cut();
        log.note(3);
        assert_eq!(since(&log, w), Some(vec![3]));
    }

    #[test]
    fn a_log_attached_later_does_not_serve_older_cuts() {
        let clock = Arc::new(DeltaClock::new(64));
        clock.activate();
        let before = clock.cut();
        let mut log = DeltaLog::default();
        log.attach(Arc::clone(&clock));
        log.note(5);
        assert_eq!(since(&log, before), None);
        let off = DeltaLog::default();
        assert!(!off.since(0, &mut Vec::new()), "an unattached log serves nothing");
    }
}
