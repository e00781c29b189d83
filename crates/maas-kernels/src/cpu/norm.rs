//! Layer normalisation, alone and fused with the residual add before it.
//! Rows are split over the threads once there are enough of them.

use rayon::prelude::*;

/// Fewer rows than this are normalised on the calling thread.
const PARALLEL_ROWS: usize = 256;

/// Normalises each row of `x` (`cols` wide) in place: `(x − μ)/√(σ² + eps)·γ + β`.
pub fn layer_norm_inplace(x: &mut [f32], cols: usize, gamma: &[f32], beta: &[f32], eps: f32) {
    assert_eq!(gamma.len(), cols, "layer_norm: gamma");
    assert_eq!(beta.len(), cols, "layer_norm: beta");
    assert_eq!(x.len() % cols, 0, "layer_norm: ragged rows");
    if x.len() / cols >= PARALLEL_ROWS {
        x.par_chunks_exact_mut(cols)
            .for_each(|row| normalise_row(row, gamma, beta, eps));
    } else {
        for row in x.chunks_exact_mut(cols) {
            normalise_row(row, gamma, beta, eps);
        }
    }
}

/// `x = LayerNorm(x + y)`, row by row, in one pass over memory.
pub fn add_layer_norm_inplace(
    x: &mut [f32],
    y: &[f32],
    cols: usize,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
) {
    assert_eq!(x.len(), y.len(), "add_layer_norm: lengths differ");
    assert_eq!(x.len() % cols, 0, "add_layer_norm: ragged rows");
    let step = |(row, add): (&mut [f32], &[f32])| {
        for (a, b) in row.iter_mut().zip(add) {
            *a += *b;
        }
        normalise_row(row, gamma, beta, eps);
    };
    if x.len() / cols >= PARALLEL_ROWS {
        x.par_chunks_exact_mut(cols)
            .zip(y.par_chunks_exact(cols))
            .for_each(step);
    } else {
        x.chunks_exact_mut(cols)
            .zip(y.chunks_exact(cols))
            .for_each(step);
    }
}

#[inline]
fn normalise_row(row: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
    let n = row.len() as f32;
    let mean = row.iter().sum::<f32>() / n;
    let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    let inv = 1.0 / (var + eps).sqrt();
    for ((v, g), b) in row.iter_mut().zip(gamma).zip(beta) {
        *v = (*v - mean) * inv * g + b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::testutil::{assert_close, random};

    fn reference(x: &[f32], cols: usize, g: &[f32], b: &[f32], eps: f64) -> Vec<f64> {
        let mut out = Vec::new();
        for row in x.chunks(cols) {
            let r: Vec<f64> = row.iter().map(|v| f64::from(*v)).collect();
            let mean = r.iter().sum::<f64>() / cols as f64;
            let var = r.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / cols as f64;
            for (i, v) in r.iter().enumerate() {
                out.push((v - mean) / (var + eps).sqrt() * f64::from(g[i]) + f64::from(b[i]));
            }
        }
        out
    }

    #[test]
    fn layer_norm_matches_a_float64_reference() {
        let cols = 384;
        let mut x = random(cols * 9, 3);
        let g = random(cols, 4);
        let b = random(cols, 5);
        let want = reference(&x, cols, &g, &b, 1e-12);
        layer_norm_inplace(&mut x, cols, &g, &b, 1e-12);
        assert_close(&x, &want, 1e-5, "layer_norm");
    }

    #[test]
    fn fused_add_layer_norm_matches_add_then_norm() {
        let cols = 96;
        let mut x = random(cols * 5, 6);
        let y = random(cols * 5, 7);
        let g = random(cols, 8);
        let b = random(cols, 9);
        let sum: Vec<f32> = x.iter().zip(&y).map(|(a, c)| a + c).collect();
        let want = reference(&sum, cols, &g, &b, 1e-5);
        add_layer_norm_inplace(&mut x, &y, cols, &g, &b, 1e-5);
        assert_close(&x, &want, 1e-5, "add_layer_norm");
    }
}
