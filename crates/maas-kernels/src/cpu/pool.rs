//! Sentence pooling: mean over each sequence's rows, then L2 normalisation.

use crate::Seqs;

/// `out[s] = mean of x's rows of sequence s` (`cols` wide).
pub fn mean_pool(x: &[f32], cols: usize, seqs: &Seqs, out: &mut [f32]) {
    assert_eq!(out.len(), seqs.len() * cols, "mean_pool: out");
    for (o, &(start, len)) in out.chunks_exact_mut(cols).zip(seqs) {
        o.fill(0.0);
        for row in x[start * cols..(start + len) * cols].chunks_exact(cols) {
            for (a, b) in o.iter_mut().zip(row) {
                *a += *b;
            }
        }
        let inv = 1.0 / len.max(1) as f32;
        for a in o.iter_mut() {
            *a *= inv;
        }
    }
}

/// Scales each row to unit L2 norm (a zero row stays zero).
pub fn l2_normalize_inplace(x: &mut [f32], cols: usize) {
    for row in x.chunks_exact_mut(cols) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        let inv = if norm > 1e-12 { 1.0 / norm } else { 0.0 };
        for v in row {
            *v *= inv;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::testutil::{assert_close, random};

    #[test]
    fn pooling_then_normalising_matches_a_float64_reference() {
        let cols = 16;
        let seqs = [(0usize, 3usize), (3, 1), (4, 6)];
        let x = random(10 * cols, 11);
        let mut want = Vec::new();
        for &(s, l) in &seqs {
            let mut m = vec![0.0f64; cols];
            for r in s..s + l {
                for c in 0..cols {
                    m[c] += f64::from(x[r * cols + c]) / l as f64;
                }
            }
            let n = m.iter().map(|v| v * v).sum::<f64>().sqrt();
            want.extend(m.iter().map(|v| v / n));
        }
        let mut out = vec![0.0; seqs.len() * cols];
        mean_pool(&x, cols, &seqs, &mut out);
        l2_normalize_inplace(&mut out, cols);
        assert_close(&out, &want, 1e-6, "mean_pool + l2");
    }
}
