//! SSP clocks: per group (a job's workers), each worker's finished steps.
//!
//! A worker reports its clock after each step without waiting for the answer, and only waits
//! when the last minimum it heard puts it more than its bound ahead; so the server that keeps a
//! group's clocks sees one small message per worker step and is never on a step's critical path
//! unless that worker has to wait anyway. A worker that leaves, or is not heard from for
//! [`LEASE`], stops holding the others back (a dead worker must not stall a job).
//!
//! Invariants: a worker's clock never moves back; the minimum is over live workers only; a
//! waiter is woken by every change and re-checks, and answers after its timeout at the latest.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Notify;

/// A worker not heard from for this long no longer counts towards the minimum.
pub const LEASE: Duration = Duration::from_secs(60);
/// Most groups kept; the least recently updated is dropped past it.
const MAX_GROUPS: usize = 4096;
/// Most workers per group.
pub const MAX_WORKERS: usize = 4096;

/// What a worker learns: the slowest live worker's clock and how many are live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockView {
    /// `u64::MAX` when no worker is live.
    pub min_clock: u64,
    /// Live workers.
    pub workers: u32,
}

#[derive(Debug, Default)]
struct Group {
    /// worker -> (clock, last heard).
    workers: HashMap<String, (u64, Instant)>,
    updated: Option<Instant>,
}

impl Group {
    fn view(&mut self, now: Instant) -> ClockView {
        self.workers.retain(|_, (_, seen)| now.saturating_duration_since(*seen) < LEASE);
        let min_clock = self.workers.values().map(|(c, _)| *c).min().unwrap_or(u64::MAX);
        ClockView { min_clock, workers: self.workers.len() as u32 }
    }
}

/// Every group's clocks on one server.
#[derive(Debug, Default)]
pub struct ClockBoard {
    groups: Mutex<HashMap<String, Group>>,
    changed: Notify,
}

/// A report the board refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ClockError(pub String);

impl ClockBoard {
    /// Records `worker`'s clock (or its leaving) at `now`; returns the group's view.
    pub fn update(
        &self,
        group: &str,
        worker: &str,
        clock: u64,
        leave: bool,
        now: Instant,
    ) -> Result<ClockView, ClockError> {
        ember_core::validate_name(group).map_err(|e| ClockError(format!("group: {e}")))?;
        if worker.is_empty() || worker.len() > 128 {
            return Err(ClockError("worker must be 1..=128 bytes".into()));
        }
        let view = {
            let mut groups = self.groups.lock();
            if !groups.contains_key(group) && groups.len() >= MAX_GROUPS {
                let oldest = groups.iter().min_by_key(|(_, g)| g.updated).map(|(name, _)| name.clone());
                if let Some(name) = oldest {
                    groups.remove(&name);
                }
            }
            let g = groups.entry(group.to_string()).or_default();
            g.updated = Some(now);
            if leave {
                g.workers.remove(worker);
            } else {
                if !g.workers.contains_key(worker) && g.workers.len() >= MAX_WORKERS {
                    return Err(ClockError(format!("group {group} has {MAX_WORKERS} workers already")));
                }
                let entry = g.workers.entry(worker.to_string()).or_insert((clock, now));
                entry.0 = entry.0.max(clock);
                entry.1 = now;
            }
            g.view(now)
        };
        self.changed.notify_waiters();
        Ok(view)
    }

    /// The group's view at `now` (an unknown group has no live workers).
    pub fn view(&self, group: &str, now: Instant) -> ClockView {
        match self.groups.lock().get_mut(group) {
            Some(g) => g.view(now),
            None => ClockView { min_clock: u64::MAX, workers: 0 },
        }
    }

    /// Waits until the group's minimum clock is at least `wait_for`, or `timeout` has passed;
    /// returns the view then.
    pub async fn wait(&self, group: &str, wait_for: u64, timeout: Duration) -> ClockView {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Register for the next change before checking, so a change in between is not missed.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let view = self.view(group, Instant::now());
            if view.min_clock >= wait_for {
                return view;
            }
            // Leases expire without an update: look again at least every second.
            let recheck = (tokio::time::Instant::now() + Duration::from_secs(1)).min(deadline);
            if tokio::time::timeout_at(recheck, changed).await.is_err() && tokio::time::Instant::now() >= deadline {
                return self.view(group, Instant::now());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn the_minimum_is_over_live_workers_and_never_moves_back() {
        let board = ClockBoard::default();
        let t0 = Instant::now();
        assert_eq!(board.update("job", "a", 5, false, t0).unwrap(), ClockView { min_clock: 5, workers: 1 });
        assert_eq!(board.update("job", "b", 2, false, t0).unwrap().min_clock, 2);
        // A late, smaller report does not move b back.
        assert_eq!(board.update("job", "b", 1, false, t0).unwrap().min_clock, 2);
        // b leaves: only a is left.
        assert_eq!(board.update("job", "b", 0, true, t0).unwrap(), ClockView { min_clock: 5, workers: 1 });
        // c stops reporting: after the lease it no longer holds a back.
        board.update("job", "c", 3, false, t0).unwrap();
        assert_eq!(board.view("job", t0 + LEASE / 2).min_clock, 3);
        assert_eq!(board.update("job", "a", 6, false, t0 + LEASE).unwrap(), ClockView { min_clock: 6, workers: 1 });
        assert_eq!(board.view("other", t0).workers, 0);
        assert!(board.update("bad/group", "a", 1, false, t0).is_err());
        assert!(board.update("job", "", 1, false, t0).is_err());
    }

    /// SSP with a deliberately slow worker, in tokio's paused time (so "when" is exact, not a
    /// wall-clock guess): the fast worker runs until it is `BOUND` steps ahead, waits there, and
    /// moves on at the very instant the slow one finishes a step.
    #[tokio::test(start_paused = true)]
    async fn a_fast_worker_waits_at_the_bound_and_no_longer() {
        const BOUND: u64 = 2;
        const STEPS: u64 = 12;
        let board = Arc::new(ClockBoard::default());
        let start = tokio::time::Instant::now();
        board.update("job", "slow", 0, false, Instant::now()).unwrap();
        let slow = {
            let board = Arc::clone(&board);
            tokio::spawn(async move {
                let mut finished_at = Vec::new();
                for step in 1..=STEPS {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    board.update("job", "slow", step, false, Instant::now()).unwrap();
                    finished_at.push(tokio::time::Instant::now() - start);
                }
                board.update("job", "slow", STEPS, true, Instant::now()).unwrap();
                finished_at
            })
        };
        // The fast worker's steps take no time; it records when each step could start and the
        // slow worker's clock then.
        let mut started = Vec::new();
        for step in 1..=STEPS {
            let view = board.update("job", "fast", step, false, Instant::now()).unwrap();
            let view = if view.min_clock + BOUND >= step {
                view
            } else {
                board.wait("job", step - BOUND, Duration::from_secs(30)).await
            };
            started.push((step, view.min_clock, tokio::time::Instant::now() - start));
        }
        let slow_finished = slow.await.unwrap();
        for (step, slow_clock, at) in started {
            assert!(step <= slow_clock + BOUND, "step {step} started with the slow worker at {slow_clock}");
            if step > BOUND {
                // Waited for the slow worker's step (step - BOUND), and not a moment longer.
                let released_by = slow_finished[(step - BOUND - 1) as usize];
                assert_eq!(at, released_by, "step {step}");
                assert_eq!(slow_clock, step - BOUND);
            } else {
                assert_eq!(at, Duration::ZERO, "step {step} within the bound does not wait");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_ends_at_its_timeout_or_when_the_slow_worker_leaves() {
        let board = Arc::new(ClockBoard::default());
        board.update("job", "slow", 0, false, Instant::now()).unwrap();
        board.update("job", "fast", 5, false, Instant::now()).unwrap();
        let view = board.wait("job", 3, Duration::from_millis(500)).await;
        assert_eq!(view.min_clock, 0, "timed out, still behind");
        let leaver = Arc::clone(&board);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            leaver.update("job", "slow", 0, true, Instant::now()).unwrap();
        });
        let view = board.wait("job", 3, Duration::from_secs(30)).await;
        assert_eq!(view, ClockView { min_clock: 5, workers: 1 });
    }
}
