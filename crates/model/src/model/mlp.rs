//! DeepFM's ReLU MLP: forward and backward passes written out by hand over `gemm` (the matrix
//! kernel candle itself calls), with the bias folded into each product and ReLU and its mask
//! applied in place.
//!
//! Why not a tensor library: on the real shape (512 x 312 -> 256 -> 128 -> 1) candle's
//! per-op allocations, broadcasts and copies took more than half of the step and the matrix
//! products less than half (docs/benchmarks.md, "Model step" and "Dense library"). An MLP's
//! backward pass is three lines per layer, so the graph bought nothing here; the
//! finite-difference test in `deepfm` checks it.
//!
//! Invariants: `Layer::w` is `inputs x outputs` row-major; activations are `rows x width`
//! row-major; every product runs on the calling thread (the worker shares its cores with a
//! ps-server and the reader, and a pool's idle spinning cost more than it gave).

/// One dense layer's parameters: `w` is `inputs x outputs` row-major, `b` has `outputs` values.
#[derive(Debug, Clone, PartialEq)]
pub struct Layer {
    /// Weights.
    pub w: Vec<f32>,
    /// Biases.
    pub b: Vec<f32>,
}

/// A row-major matrix, or a transposed view of one.
#[derive(Clone, Copy)]
struct View<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: isize,
    col_stride: isize,
}

impl<'a> View<'a> {
    fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        assert_eq!(data.len(), rows * cols, "matrix data is rows x cols");
        Self { data, rows, cols, row_stride: cols as isize, col_stride: 1 }
    }

    fn t(self) -> Self {
        Self { rows: self.cols, cols: self.rows, row_stride: self.col_stride, col_stride: self.row_stride, ..self }
    }
}

/// `out (a.rows x b.cols, row-major) = [out +] a * b`.
#[allow(unsafe_code)]
fn matmul(out: &mut [f32], a: View, b: View, accumulate: bool) {
    assert_eq!(a.cols, b.rows, "inner dimensions agree");
    assert_eq!(out.len(), a.rows * b.cols, "output is a.rows x b.cols");
    if out.is_empty() {
        return;
    }
    if a.cols == 0 {
        if !accumulate {
            out.fill(0.0);
        }
        return;
    }
    // SAFETY: the asserts above and in `View::new` bound every index gemm forms:
    // a (i, p) at i * row_stride + p * col_stride < data.len() for i < rows, p < cols, likewise
    // for b, and out (i, j) at i * b.cols + j; `out` is a unique borrow, disjoint from a and b.
    unsafe {
        gemm::gemm(
            a.rows,
            b.cols,
            a.cols,
            out.as_mut_ptr(),
            1,
            b.cols as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride,
            a.row_stride,
            b.data.as_ptr(),
            b.col_stride,
            b.row_stride,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// A forward pass kept for its backward pass: `acts[0]` is the input, `acts[l + 1]` layer l's
/// output (after ReLU, except the last layer's, which is the logits).
pub(crate) struct MlpPass {
    rows: usize,
    acts: Vec<Vec<f32>>,
}

impl MlpPass {
    /// Runs `layers` (shapes `(inputs, outputs)`) over `x`, `rows x shapes[0].0`.
    pub(crate) fn forward(shapes: &[(usize, usize)], layers: &[Layer], rows: usize, x: Vec<f32>) -> Self {
        let mut acts = Vec::with_capacity(layers.len() + 1);
        acts.push(x);
        for (l, (&(inputs, outputs), layer)) in shapes.iter().zip(layers).enumerate() {
            let mut h: Vec<f32> = Vec::with_capacity(rows * outputs);
            for _ in 0..rows {
                h.extend_from_slice(&layer.b);
            }
            let input = View::new(&acts[l], rows, inputs);
            matmul(&mut h, input, View::new(&layer.w, inputs, outputs), true);
            if l + 1 < layers.len() {
                h.iter_mut().for_each(|v| *v = v.max(0.0));
            }
            acts.push(h);
        }
        Self { rows, acts }
    }

    /// The logits (the last layer has one output).
    pub(crate) fn logits(&self) -> &[f32] {
        self.acts.last().map_or(&[], Vec::as_slice)
    }

    /// Gradients of sum_r(logit_r * dlogit_r): (d input, d layers).
    pub(crate) fn backward(
        self,
        shapes: &[(usize, usize)],
        layers: &[Layer],
        dlogit: &[f32],
    ) -> (Vec<f32>, Vec<Layer>) {
        let rows = self.rows;
        let mut grads: Vec<Layer> = Vec::with_capacity(layers.len());
        // d output of the current layer, rows x outputs.
        let mut g = dlogit.to_vec();
        for l in (0..layers.len()).rev() {
            let (inputs, outputs) = shapes[l];
            let input = View::new(&self.acts[l], rows, inputs);
            let g_view = View::new(&g, rows, outputs);
            let mut dw = vec![0f32; inputs * outputs];
            matmul(&mut dw, input.t(), g_view, false);
            let mut db = vec![0f32; outputs];
            for row in g.chunks_exact(outputs.max(1)) {
                db.iter_mut().zip(row).for_each(|(d, v)| *d += v);
            }
            let mut g_in = vec![0f32; rows * inputs];
            matmul(&mut g_in, g_view, View::new(&layers[l].w, inputs, outputs).t(), false);
            if l > 0 {
                // The input was a ReLU output: no gradient where it was clamped. A select, not a
                // branch, so the loop vectorizes (the branchy form was 2.7% of a job's CPU).
                g_in.iter_mut().zip(&self.acts[l]).for_each(|(d, a)| *d = if *a > 0.0 { *d } else { 0.0 });
            }
            grads.push(Layer { w: dw, b: db });
            g = g_in;
        }
        grads.reverse();
        (g, grads)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Textbook triple loop, the reference the strided views are checked against.
    fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        out
    }

    fn transpose(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
        (0..cols * rows).map(|i| a[(i % rows) * cols + i / rows]).collect()
    }

    #[test]
    fn products_of_plain_and_transposed_views_match_the_triple_loop() {
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.71).cos()).collect();
        let want = naive(&a, &b, m, k, n);
        let close = |got: &[f32]| got.iter().zip(&want).all(|(g, w)| (g - w).abs() < 1e-5);
        let mut out = vec![0f32; m * n];
        matmul(&mut out, View::new(&a, m, k), View::new(&b, k, n), false);
        assert!(close(&out), "a * b: {out:?} vs {want:?}");
        // (a^T)^T * (b^T)^T through transposed storage.
        let (at, bt) = (transpose(&a, m, k), transpose(&b, k, n));
        let mut out_t = vec![0f32; m * n];
        matmul(&mut out_t, View::new(&at, k, m).t(), View::new(&bt, n, k).t(), false);
        assert!(close(&out_t), "through transposed views: {out_t:?}");
        // Accumulating adds onto what is there.
        let mut acc = vec![1f32; m * n];
        matmul(&mut acc, View::new(&a, m, k), View::new(&b, k, n), true);
        assert!(acc.iter().zip(&want).all(|(g, w)| (g - w - 1.0).abs() < 1e-5));
    }
}
