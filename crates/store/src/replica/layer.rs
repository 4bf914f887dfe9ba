//! One delta round's rows of a table, as a replica holds them until compaction: the rows in one
//! buffer and an index from key to row (or to "deleted"). One buffer instead of a box per row
//! halves the memory of a snapshot round and gives it back to the OS in a few large frees.
//!
//! Invariant: every row has the layer's width; a key appears once (a later put or delete of the
//! same key replaces the earlier one).

use ember_core::U64Map;

/// Marks a deleted key in the index.
const DELETED: u64 = u64::MAX;

/// Rows and deletions of one round of one table.
#[derive(Debug, Default, Clone)]
pub struct Layer {
    dim: usize,
    index: U64Map<u64>,
    values: Vec<f32>,
}

impl Layer {
    /// An empty layer whose rows have `dim` values (0: set by the first row put).
    pub fn new(dim: usize) -> Self {
        Self { dim, ..Self::default() }
    }

    /// Values per row (0 while no row was put into a layer made without a width).
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Sets `key`'s row. Returns false (and changes nothing) when `row` is not `dim` wide.
    pub fn put(&mut self, key: u64, row: &[f32]) -> bool {
        if self.dim == 0 && self.values.is_empty() {
            self.dim = row.len();
        }
        if row.len() != self.dim || row.is_empty() {
            return false;
        }
        match self.index.get(&key) {
            Some(&at) if at != DELETED => {
                let at = at as usize * self.dim;
                self.values[at..at + self.dim].copy_from_slice(row);
            }
            _ => {
                let at = (self.values.len() / self.dim) as u64;
                self.values.extend_from_slice(row);
                self.index.insert(key, at);
            }
        }
        true
    }

    /// Marks `key` deleted.
    pub fn delete(&mut self, key: u64) {
        // A replaced row's values stay in the buffer unreferenced until the layer is dropped.
        self.index.insert(key, DELETED);
    }

    /// `Some(Some(row))` for a row, `Some(None)` for a deleted key, None when the layer does not
    /// name the key.
    pub fn get(&self, key: u64) -> Option<Option<&[f32]>> {
        let at = *self.index.get(&key)?;
        if at == DELETED {
            return Some(None);
        }
        let at = at as usize * self.dim;
        Some(Some(&self.values[at..at + self.dim]))
    }

    /// Keys named (rows and deletions).
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Names no key.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Every key with its row, or None when deleted, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, Option<&[f32]>)> + '_ {
        self.index.iter().map(move |(key, &at)| {
            if at == DELETED {
                (*key, None)
            } else {
                let at = at as usize * self.dim;
                (*key, Some(&self.values[at..at + self.dim]))
            }
        })
    }

    /// Forgets every key (a reset in the middle of a round).
    pub fn clear(&mut self) {
        self.index.clear();
        self.values.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_puts_and_deletes_replace_earlier_ones_and_wrong_widths_are_refused() {
        let mut l = Layer::new(0);
        assert!(l.put(1, &[1.0, 1.5]));
        assert_eq!(l.dim(), 2);
        assert!(l.put(2, &[2.0, 2.5]));
        assert!(!l.put(3, &[3.0]), "a row of another width");
        assert!(l.put(1, &[10.0, 10.5]));
        l.delete(2);
        assert!(l.put(4, &[4.0, 4.5]));
        l.delete(5);
        assert!(l.put(5, &[5.0, 5.5]), "a put after a delete brings the key back");
        assert_eq!(l.get(1), Some(Some(&[10.0, 10.5][..])));
        assert_eq!(l.get(2), Some(None));
        assert_eq!(l.get(3), None);
        assert_eq!(l.get(5), Some(Some(&[5.0, 5.5][..])));
        assert_eq!(l.len(), 4);
        let mut all: Vec<_> = l.iter().map(|(k, r)| (k, r.map(|r| r[0]))).collect();
        all.sort_by_key(|e| e.0);
        assert_eq!(all, vec![(1, Some(10.0)), (2, None), (4, Some(4.0)), (5, Some(5.0))]);
        l.clear();
        assert!(l.is_empty());
        assert_eq!(l.get(1), None);
    }
}
