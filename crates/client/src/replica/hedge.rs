//! Backup-request timing: a window of recent lookup latencies of one replica group, whose p95
//! (with a floor) is how long a lookup waits for its first replica before asking another.
//!
//! Recording is a short mutex section (a ring write); the p95 is recomputed every
//! [`RECOMPUTE_EVERY`] records and read without a lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

/// Latencies kept.
const WINDOW: usize = 512;
/// Records between p95 recomputations.
const RECOMPUTE_EVERY: u64 = 32;

/// When a lookup sends its backup request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HedgePolicy {
    /// A fixed delay; None: the group's recent p95.
    pub fixed: Option<Duration>,
    /// The p95-based delay is never shorter than this.
    pub floor: Duration,
    /// The delay until enough latencies were seen.
    pub initial: Duration,
}

impl Default for HedgePolicy {
    fn default() -> Self {
        Self { fixed: None, floor: Duration::from_millis(1), initial: Duration::from_millis(10) }
    }
}

/// Recent latencies of one group and their p95.
#[derive(Debug, Default)]
pub(crate) struct Window {
    ring: Mutex<Ring>,
    p95_us: AtomicU64,
}

#[derive(Debug, Default)]
struct Ring {
    values: Vec<u32>,
    next: usize,
    seen: u64,
}

impl Window {
    /// Adds one latency.
    pub(crate) fn record(&self, latency: Duration) {
        let us = latency.as_micros().min(u128::from(u32::MAX)) as u32;
        let snapshot = {
            let mut ring = self.ring.lock();
            if ring.values.len() < WINDOW {
                ring.values.push(us);
            } else {
                let at = ring.next;
                ring.values[at] = us;
            }
            ring.next = (ring.next + 1) % WINDOW;
            ring.seen += 1;
            ring.seen.is_multiple_of(RECOMPUTE_EVERY).then(|| ring.values.clone())
        };
        if let Some(mut values) = snapshot {
            values.sort_unstable();
            let p95 = values[(values.len() * 95 / 100).min(values.len() - 1)];
            self.p95_us.store(u64::from(p95), Ordering::Relaxed);
        }
    }

    /// How long to wait for the first replica before sending a backup.
    pub(crate) fn delay(&self, policy: &HedgePolicy) -> Duration {
        if let Some(fixed) = policy.fixed {
            return fixed;
        }
        match self.p95_us.load(Ordering::Relaxed) {
            0 => policy.initial,
            us => Duration::from_micros(us).max(policy.floor),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_is_the_recent_p95_with_a_floor_and_a_start_value() {
        let policy = HedgePolicy { fixed: None, floor: Duration::from_micros(300), initial: Duration::from_millis(7) };
        let w = Window::default();
        assert_eq!(w.delay(&policy), Duration::from_millis(7), "nothing seen yet");
        // Recomputed at the 96th record (3 x 32): of 1..=96 ms the p95 is index 91, 92 ms.
        for ms in 1..=96u64 {
            w.record(Duration::from_millis(ms));
        }
        assert_eq!(w.delay(&policy), Duration::from_millis(92));
        // A window of fast answers: the p95 falls, but not under the floor.
        for _ in 0..WINDOW {
            w.record(Duration::from_micros(50));
        }
        assert_eq!(w.delay(&policy), Duration::from_micros(300));
        let fixed = HedgePolicy { fixed: Some(Duration::from_millis(2)), ..policy };
        assert_eq!(w.delay(&fixed), Duration::from_millis(2));
    }
}
