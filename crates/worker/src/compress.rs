//! Error-feedback state for compressed pushes (`[compression]` in the job file).
//!
//! A worker keeps one residual per dense parameter and one per sparse row it pushed recently:
//! what the codec could not send this time is added to the next gradient of the same parameter,
//! so compression delays information and never drops it (see `ember_core::codec`). Sparse
//! residuals live in a bounded map per table; once it is full, rows not yet in it push without a
//! residual (their quantization error is lost).

use ember_core::U64Map;

/// Sparse rows with a residual, per table, at most.
pub const MAX_RESIDUAL_ROWS: usize = 1 << 20;

/// Residuals of one sparse table's rows: a slab of `dim`-wide rows and the slot of each key, so a
/// push costs one hash lookup per key and no allocation per row.
#[derive(Debug, Default)]
pub struct RowResiduals {
    dim: usize,
    max_rows: usize,
    slots: U64Map<u32>,
    values: Vec<f32>,
}

impl RowResiduals {
    fn new(dim: usize) -> Self {
        Self::bounded(dim, MAX_RESIDUAL_ROWS)
    }

    fn bounded(dim: usize, max_rows: usize) -> Self {
        Self { dim, max_rows, ..Default::default() }
    }

    fn row(&self, slot: u32) -> std::ops::Range<usize> {
        slot as usize * self.dim..(slot as usize + 1) * self.dim
    }

    /// The residuals of `keys`, in key order (zeros for rows without one).
    pub fn gather(&self, keys: &[u64]) -> Vec<f32> {
        let mut out = vec![0f32; keys.len() * self.dim];
        for (k, out) in keys.iter().zip(out.chunks_exact_mut(self.dim)) {
            if let Some(&slot) = self.slots.get(k) {
                out.copy_from_slice(&self.values[self.row(slot)]);
            }
        }
        out
    }

    /// Stores the residuals of `keys` left by an encode.
    pub fn scatter(&mut self, keys: &[u64], values: &[f32]) {
        for (k, v) in keys.iter().zip(values.chunks_exact(self.dim)) {
            let next = self.slots.len();
            let slot = match self.slots.get(k) {
                Some(&slot) => slot,
                None if next < self.max_rows => {
                    self.slots.insert(*k, next as u32);
                    self.values.extend_from_slice(v);
                    continue;
                }
                None => continue,
            };
            let row = self.row(slot);
            self.values[row].copy_from_slice(v);
        }
    }
}

/// A worker's residuals.
#[derive(Debug, Default)]
pub struct Residuals {
    /// The sparse table's rows (`[w, v_1..v_k]`).
    pub sparse: RowResiduals,
    /// One per dense table, in `ModelTables::dense_names` order (empty until the first push).
    pub dense: Vec<Vec<f32>>,
}

impl Residuals {
    /// Empty residuals for sparse rows of `row_dim` values.
    pub fn new(row_dim: usize) -> Self {
        Self { sparse: RowResiduals::new(row_dim), dense: Vec::new() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_keep_their_residual_until_the_map_is_full() {
        let mut r = RowResiduals::new(2);
        r.scatter(&[5, 7], &[0.5, -0.5, 1.0, 2.0]);
        assert_eq!(r.gather(&[7, 9, 5]), vec![1.0, 2.0, 0.0, 0.0, 0.5, -0.5]);
        r.scatter(&[5], &[0.0, 0.25]);
        assert_eq!(r.gather(&[5]), vec![0.0, 0.25]);
    }

    #[test]
    fn a_full_map_updates_its_rows_and_takes_no_new_ones() {
        let mut r = RowResiduals::bounded(2, 2);
        r.scatter(&[1, 2, 3], &[1.0, 1.0, 2.0, 2.0, 3.0, 3.0]);
        assert_eq!(r.gather(&[1, 2, 3]), vec![1.0, 1.0, 2.0, 2.0, 0.0, 0.0], "row 3 found no room");
        r.scatter(&[3, 2], &[4.0, 4.0, 5.0, 5.0]);
        assert_eq!(r.gather(&[1, 2, 3]), vec![1.0, 1.0, 5.0, 5.0, 0.0, 0.0]);
    }
}
