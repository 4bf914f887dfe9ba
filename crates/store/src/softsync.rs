//! The softsync buffer: gradients a table holds until `s` of them have arrived.
//!
//! Each push adds `weight * gradient` per key (a dense table is key 0); when the `s`-th push
//! arrives the buffer is taken whole and the table applies the sums as one update, under both
//! `softsync` and `sync`. Workers push the gradient of their batch's *summed* loss, so the sum of
//! s pushes is the gradient of one step over all their examples: the counterpart of Zhang et
//! al.'s mean of s mini-batch-mean gradients (see [`ember_core::sync::ApplyRule::Softsync`]).
//! Taking a mean here instead shrank every step s-fold against the optimizers' fixed L1/L2 terms
//! and cost 0.005 AUC on the Criteo slice (docs/benchmarks.md). The buffer's lock is held only to
//! add or take, never while a table's rows are updated.

use ember_core::U64Map;
use parking_lot::Mutex;

/// Gradients waiting for their softsync update.
#[derive(Debug, Default)]
pub struct Pending {
    inner: Mutex<Buffer>,
}

#[derive(Debug, Default)]
struct Buffer {
    /// key -> offset of its row in `sums`.
    slots: U64Map<usize>,
    keys: Vec<u64>,
    sums: Vec<f32>,
    pushes: u32,
}

/// A buffer taken for applying: distinct keys and their merged gradients (`keys.len() * dim`).
#[derive(Debug, Clone, PartialEq)]
pub struct Merged {
    /// Distinct keys, in first-pushed order.
    pub keys: Vec<u64>,
    /// Each key's weighted gradients summed over the pushes that carried it.
    pub grads: Vec<f32>,
    /// How many pushes were merged.
    pub pushes: u32,
}

impl Pending {
    /// Adds one push (`grads` is `keys.len() * dim`, finite) weighted by `weight`; returns the
    /// merged buffer when this push is the `s`-th.
    pub fn add(&self, keys: &[u64], grads: &[f32], dim: usize, weight: f32, s: u32) -> Option<Merged> {
        let mut guard = self.inner.lock();
        let b = &mut *guard;
        for (i, &key) in keys.iter().enumerate() {
            let next = b.keys.len();
            let slot = *b.slots.entry(key).or_insert(next);
            if slot == next {
                b.keys.push(key);
                let len = b.sums.len() + dim;
                b.sums.resize(len, 0.0);
            }
            for (acc, g) in b.sums[slot * dim..(slot + 1) * dim].iter_mut().zip(&grads[i * dim..(i + 1) * dim]) {
                *acc += weight * g;
            }
        }
        b.pushes += 1;
        (b.pushes >= s).then(|| Self::take_locked(b))
    }

    /// Takes whatever is buffered (end of training, checkpoints); `None` if nothing is.
    pub fn flush(&self) -> Option<Merged> {
        let mut b = self.inner.lock();
        (b.pushes > 0).then(|| Self::take_locked(&mut b))
    }

    /// Pushes buffered now.
    #[cfg(test)]
    pub fn pushes(&self) -> u32 {
        self.inner.lock().pushes
    }

    fn take_locked(b: &mut Buffer) -> Merged {
        let taken = std::mem::take(b);
        Merged { keys: taken.keys, grads: taken.sums, pushes: taken.pushes }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sth_push_returns_the_weighted_sum() {
        let p = Pending::default();
        assert_eq!(p.add(&[1, 2], &[1.0, 1.0, 2.0, 2.0], 2, 1.0, 3), None);
        // Key 1 repeats within a push: summed, as a table sums repeated keys.
        assert_eq!(p.add(&[1, 1], &[3.0, 3.0, 1.0, 1.0], 2, 0.5, 3), None);
        assert_eq!(p.pushes(), 2);
        let merged = p.add(&[3], &[6.0, 0.0], 2, 1.0, 3).expect("third push of s = 3");
        assert_eq!(merged.keys, vec![1, 2, 3]);
        // key 1, in two pushes: 1 + 0.5 * (3 + 1); key 2 and key 3, in one each: as sent.
        assert_eq!(merged.grads, vec![3.0, 3.0, 2.0, 2.0, 6.0, 0.0]);
        assert_eq!(merged.pushes, 3);
        assert_eq!(p.pushes(), 0, "the buffer starts over");
        assert_eq!(p.flush(), None);
    }

    #[test]
    fn flush_takes_the_pushes_received() {
        let p = Pending::default();
        p.add(&[9], &[4.0], 1, 1.0, 4);
        p.add(&[9], &[2.0], 1, 1.0, 4);
        let merged = p.flush().expect("two buffered pushes");
        assert_eq!((merged.keys, merged.grads, merged.pushes), (vec![9], vec![6.0], 2));
    }
}
