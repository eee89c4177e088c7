//! Deterministic, parallel column sums of a row-major `[rows, cols]` buffer.
//!
//! Bias and norm gradients sum an upstream gradient over every position. candle reduces over
//! leading dimensions element by element with a division per element; this splits the rows into
//! fixed blocks (independent of the thread count), sums each block in parallel with vectorisable
//! row additions, then adds the block sums in order — the same bits on every run and any number
//! of threads.

use rayon::prelude::*;

/// Rows per block: large enough to amortise, small enough to spread over a few cores.
const BLOCK_ROWS: usize = 256;

/// `out[j] = Σ_i xs[i·cols + j]`, summed in a fixed order. `xs.len()` must be a multiple of
/// `cols` (trailing elements are ignored).
pub fn column_sums(xs: &[f32], cols: usize) -> Vec<f32> {
    if cols == 0 {
        return Vec::new();
    }
    let partials: Vec<Vec<f32>> = xs
        .par_chunks(BLOCK_ROWS * cols)
        .map(|block| pulp::Arch::new().dispatch(BlockSums { block, cols }))
        .collect();
    let mut out = vec![0f32; cols];
    for p in &partials {
        for (o, v) in out.iter_mut().zip(p) {
            *o += v;
        }
    }
    out
}

/// One block's column sums, compiled for the CPU's best SIMD level (element-wise adds: the level
/// changes no result). A `WithSimd` type rather than a closure, so that the loop is inlined into
/// the dispatched instantiation.
struct BlockSums<'a> {
    block: &'a [f32],
    cols: usize,
}

impl pulp::WithSimd for BlockSums<'_> {
    type Output = Vec<f32>;

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) -> Vec<f32> {
        let mut acc = vec![0f32; self.cols];
        for row in self.block.chunks_exact(self.cols) {
            for (a, &v) in acc.iter_mut().zip(row) {
                *a += v;
            }
        }
        acc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_columns_over_many_blocks() {
        let (rows, cols) = (1000, 3);
        let xs: Vec<f32> = (0..rows * cols).map(|i| (i % cols) as f32 + 0.5).collect();
        let s = column_sums(&xs, cols);
        assert_eq!(s, vec![500.0, 1500.0, 2500.0]);
        assert!(column_sums(&xs, 0).is_empty());
        assert_eq!(column_sums(&[], 4), vec![0.0; 4]);
    }
}
