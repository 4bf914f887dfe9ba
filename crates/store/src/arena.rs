//! The row arena of a shard: `f32`s back to back whose first element sits on a 64-byte cache
//! line, so a row whose stride is a multiple of 16 floats (dim 16 with Adagrad: 32) starts on a
//! line and its weights are one line, not two.
//!
//! A `Vec<f32>` of this size comes from `mmap` at 16 bytes past a page boundary, which put the
//! 64 weight bytes of every such row across two lines: two cache misses per random read where
//! one does (docs/benchmarks.md, "Store, in process").

use bytemuck::{Pod, Zeroable};

/// Floats per cache line.
const LINE_FLOATS: usize = 16;

#[derive(Debug, Clone, Copy, Pod, Zeroable)]
#[repr(C, align(64))]
struct Line([f32; LINE_FLOATS]);

/// Growable `f32` storage aligned to cache lines; dereferences to the `len` floats in use.
#[derive(Debug, Default)]
pub(crate) struct Arena {
    lines: Vec<Line>,
    /// Floats in use; `lines` holds exactly enough lines for them.
    len: usize,
}

fn lines_for(floats: usize) -> usize {
    floats.div_ceil(LINE_FLOATS)
}

impl Arena {
    /// Floats the arena holds without reallocating.
    pub fn capacity(&self) -> usize {
        self.lines.capacity() * LINE_FLOATS
    }

    /// Grows or shrinks to `len` floats; new ones are zero.
    pub fn resize(&mut self, len: usize) {
        if len < self.len {
            return self.truncate(len);
        }
        let old = self.len;
        // New lines come zeroed; only the tail of the last old line may hold floats of rows
        // truncated away.
        let old_tail_end = (lines_for(old) * LINE_FLOATS).min(len);
        self.lines.resize(lines_for(len), Line::zeroed());
        self.len = len;
        self[old..old_tail_end].fill(0.0);
    }

    /// Drops every float past `len`.
    pub fn truncate(&mut self, len: usize) {
        if len < self.len {
            self.lines.truncate(lines_for(len));
            self.len = len;
        }
    }

    /// Room for `additional` more floats, exactly (as [`Vec::reserve_exact`]).
    pub fn reserve_exact(&mut self, additional: usize) {
        let wanted = lines_for(self.len + additional);
        self.lines.reserve_exact(wanted.saturating_sub(self.lines.len()));
    }

    /// Lowers the capacity to at least `floats` (and the floats in use).
    pub fn shrink_to(&mut self, floats: usize) {
        self.lines.shrink_to(lines_for(floats));
    }
}

impl std::ops::Deref for Arena {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        &bytemuck::cast_slice(&self.lines)[..self.len]
    }
}

impl std::ops::DerefMut for Arena {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut bytemuck::cast_slice_mut(&mut self.lines)[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_on_a_cache_line_and_behaves_as_a_vec_of_floats() {
        let mut arena = Arena::default();
        assert!(arena.is_empty());
        arena.reserve_exact(100);
        assert!(arena.capacity() >= 100);
        arena.resize(35);
        assert_eq!(arena.as_ptr() as usize % 64, 0, "first float on a line");
        assert_eq!(arena.len(), 35);
        assert!(arena.iter().all(|v| *v == 0.0));
        arena[33] = 7.0;
        arena[34] = 8.0;
        arena.copy_within(33..35, 0);
        assert_eq!(&arena[..2], &[7.0, 8.0]);
        arena.truncate(33);
        assert_eq!(arena.len(), 33);
        arena.resize(40);
        assert_eq!(&arena[33..35], &[0.0, 0.0], "regrown floats are zero, not the truncated ones");
        arena.truncate(0);
        arena.shrink_to(16);
        assert!(arena.capacity() >= 16 && arena.capacity() < 100, "{} floats kept", arena.capacity());
        arena.resize(20);
        assert_eq!(arena.as_ptr() as usize % 64, 0);
    }
}
