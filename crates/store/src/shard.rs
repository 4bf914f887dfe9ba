//! One internal shard of a sparse table: a key index over a dense row arena.
//!
//! Rows live back to back in one `Vec<f32>` (`stride` = dim weights + optimizer state), with
//! their metadata in a parallel `Vec<RowMeta>`; the index maps key -> position. Deleting a row
//! moves the last row into its place, so the arena has no holes and a scan (stats, checkpoints)
//! touches only live rows. Nothing here locks: the table holds each shard behind its own mutex.

use ember_core::U64Map;

/// Per-row metadata kept beside the values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowMeta {
    /// The row's key (needed to fix the index when rows move).
    pub key: u64,
    /// Pushes applied to this row (duplicates within one push count once).
    pub updates: u64,
    /// Table version of the last push that updated this row (0: never updated).
    pub last_step: u64,
}

/// Rows of one shard.
#[derive(Debug, Default)]
pub struct Shard {
    index: U64Map<u32>,
    data: Vec<f32>,
    meta: Vec<RowMeta>,
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

    /// Appends a row for `key` (which must be absent), letting `init` fill its `stride` values.
    #[inline]
    pub fn insert_with(&mut self, key: u64, stride: usize, init: impl FnOnce(&mut [f32])) -> usize {
        let pos = self.meta.len();
        self.data.resize(self.data.len() + stride, 0.0);
        init(&mut self.data[pos * stride..]);
        self.meta.push(RowMeta { key, updates: 0, last_step: 0 });
        self.index.insert(key, pos as u32);
        pos
    }

    /// The `stride` values of the row at `pos`.
    #[inline]
    pub fn row(&self, pos: usize, stride: usize) -> &[f32] {
        &self.data[pos * stride..(pos + 1) * stride]
    }

    /// The values and metadata of the row at `pos`, mutably.
    #[inline]
    pub fn row_mut(&mut self, pos: usize, stride: usize) -> (&mut [f32], &mut RowMeta) {
        (&mut self.data[pos * stride..(pos + 1) * stride], &mut self.meta[pos])
    }

    /// Metadata of the row at `pos`.
    pub fn meta(&self, pos: usize) -> &RowMeta {
        &self.meta[pos]
    }

    /// Removes `key`'s row; true if it existed.
    pub fn remove(&mut self, key: u64, stride: usize) -> bool {
        let Some(pos) = self.index.remove(&key).map(|p| p as usize) else {
            return false;
        };
        let last = self.meta.len() - 1;
        if pos != last {
            self.data.copy_within(last * stride..(last + 1) * stride, pos * stride);
            self.meta[pos] = self.meta[last];
            self.index.insert(self.meta[pos].key, pos as u32);
        }
        self.meta.pop();
        self.data.truncate(last * stride);
        true
    }

    /// Approximate heap bytes: arena capacity, metadata, and index slots (key, position and a
    /// control byte each).
    pub fn heap_bytes(&self) -> usize {
        self.data.capacity() * 4
            + self.meta.capacity() * std::mem::size_of::<RowMeta>()
            + self.index.capacity() * (8 + 4 + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remove_moves_the_last_row_and_keeps_the_index_right() {
        let mut s = Shard::default();
        for key in 0..5u64 {
            s.insert_with(key, 2, |r| r[..2].copy_from_slice(&[key as f32, -(key as f32)]));
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
