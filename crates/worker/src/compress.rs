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

/// Residuals of one sparse table's rows.
#[derive(Debug, Default)]
pub struct RowResiduals {
    dim: usize,
    rows: U64Map<Box<[f32]>>,
}

impl RowResiduals {
    fn new(dim: usize) -> Self {
        Self { dim, ..Default::default() }
    }

    /// The residuals of `keys`, in key order (zeros for rows without one).
    pub fn gather(&self, keys: &[u64]) -> Vec<f32> {
        let mut out = vec![0f32; keys.len() * self.dim];
        for (i, k) in keys.iter().enumerate() {
            if let Some(r) = self.rows.get(k) {
                out[i * self.dim..(i + 1) * self.dim].copy_from_slice(r);
            }
        }
        out
    }

    /// Stores the residuals of `keys` left by an encode.
    pub fn scatter(&mut self, keys: &[u64], values: &[f32]) {
        for (i, k) in keys.iter().enumerate() {
            let v = &values[i * self.dim..(i + 1) * self.dim];
            let room = self.rows.len() < MAX_RESIDUAL_ROWS;
            match self.rows.get_mut(k) {
                Some(r) => r.copy_from_slice(v),
                None if room => {
                    self.rows.insert(*k, v.into());
                }
                None => {}
            }
        }
    }
}

/// A worker's residuals.
#[derive(Debug, Default)]
pub struct Residuals {
    /// Linear weights (dim 1).
    pub linear: RowResiduals,
    /// Embeddings (dim k).
    pub embedding: RowResiduals,
    /// One per dense table, in `ModelTables::dense_names` order (empty until the first push).
    pub dense: Vec<Vec<f32>>,
}

impl Residuals {
    /// Empty residuals for a model with embeddings of width `k`.
    pub fn new(k: usize) -> Self {
        Self { linear: RowResiduals::new(1), embedding: RowResiduals::new(k), dense: Vec::new() }
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
}
