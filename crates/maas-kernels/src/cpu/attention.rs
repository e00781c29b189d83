//! Multi-head self-attention over packed, unpadded sequences: each sequence
//! attends only to its own tokens, so no padding is ever computed and no mask
//! is needed.

use crate::Seqs;
use gemm::{gemm, Parallelism};
use rayon::prelude::*;

/// `qkv` is `[T × 3H]` (queries, keys, values side by side, `H = heads·d`);
/// writes the attention output `[T × H]` into `out`.
pub fn attention(qkv: &[f32], seqs: &Seqs, heads: usize, d: usize, out: &mut [f32]) {
    let h = heads * d;
    let rows: usize = seqs.iter().map(|s| s.0 + s.1).max().unwrap_or(0);
    assert!(qkv.len() >= rows * 3 * h, "attention: qkv too short");
    assert!(out.len() >= rows * h, "attention: out too short");
    let scale = 1.0 / (d as f32).sqrt();
    let out_addr = out.as_mut_ptr() as usize;
    let tasks: Vec<(usize, usize, usize)> =
        seqs.iter().flat_map(|&(start, len)| (0..heads).map(move |head| (start, len, head))).collect();
    tasks.par_iter().for_each_init(Vec::new, |scores: &mut Vec<f32>, &(start, len, head)| {
        if len == 0 {
            return;
        }
        scores.clear();
        scores.resize(len * len, 0.0);
        let row = 3 * h;
        let q = &qkv[start * row + head * d..];
        let k = &qkv[start * row + h + head * d..];
        let v = &qkv[start * row + 2 * h + head * d..];
        // SAFETY: q, k and v are read at rows 0..len (stride 3H) and columns
        // 0..d of their head, inside qkv by the length assertion; `scores` is
        // len×len and exclusively ours.
        unsafe {
            gemm(
                len, len, d,
                scores.as_mut_ptr(), 1, len as isize,
                false,
                q.as_ptr(), 1, row as isize,
                k.as_ptr(), row as isize, 1,
                0.0, scale,
                false, false, false,
                Parallelism::None,
            );
        }
        for r in scores.chunks_exact_mut(len) {
            let max = r.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v));
            let mut sum = 0.0;
            for x in r.iter_mut() {
                *x = (*x - max).exp();
                sum += *x;
            }
            let inv = 1.0 / sum;
            for x in r.iter_mut() {
                *x *= inv;
            }
        }
        let dst = (out_addr as *mut f32).wrapping_add(start * h + head * d);
        // SAFETY: this task alone writes rows start..start+len, columns
        // head·d..(head+1)·d of `out` (sequences do not overlap and each head
        // has its own columns), all inside `out` by the length assertion.
        unsafe {
            gemm(
                len, d, len,
                dst, 1, h as isize,
                false,
                scores.as_ptr(), 1, len as isize,
                v.as_ptr(), 1, row as isize,
                0.0, 1.0,
                false, false, false,
                Parallelism::None,
            );
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::testutil::{assert_close, random};

    fn reference(qkv: &[f32], seqs: &Seqs, heads: usize, d: usize) -> Vec<f64> {
        let h = heads * d;
        let rows: usize = seqs.iter().map(|s| s.0 + s.1).max().unwrap_or(0);
        let mut out = vec![0.0f64; rows * h];
        let at = |r: usize, c: usize| f64::from(qkv[r * 3 * h + c]);
        for &(s, l) in seqs {
            for hd in 0..heads {
                for i in 0..l {
                    let mut w: Vec<f64> = (0..l)
                        .map(|j| (0..d).map(|p| at(s + i, hd * d + p) * at(s + j, h + hd * d + p)).sum::<f64>() / (d as f64).sqrt())
                        .collect();
                    let max = w.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let sum: f64 = w.iter_mut().map(|x| { *x = (*x - max).exp(); *x }).sum();
                    for p in 0..d {
                        out[(s + i) * h + hd * d + p] = (0..l).map(|j| w[j] / sum * at(s + j, 2 * h + hd * d + p)).sum();
                    }
                }
            }
        }
        out
    }

    #[test]
    fn attention_matches_a_float64_reference_on_packed_sequences() {
        let (heads, d) = (12, 32);
        let seqs = [(0usize, 5usize), (5, 1), (6, 17), (23, 40)];
        let rows = 63;
        let qkv: Vec<f32> = random(rows * 3 * heads * d, 21).into_iter().map(|v| v * 3.0).collect();
        let mut out = vec![0.0; rows * heads * d];
        attention(&qkv, &seqs, heads, d, &mut out);
        assert_close(&out, &reference(&qkv, &seqs, heads, d), 1e-5, "attention");
    }
}
