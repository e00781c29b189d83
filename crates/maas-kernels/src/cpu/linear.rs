//! `y = x·Wᵀ + b`, the bulk of every transformer's work, on the `gemm` crate
//! (runtime-dispatched AVX2/AVX-512 microkernels).

use gemm::{gemm, Parallelism};

/// How many threads a GEMM may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    One,
    /// Every thread of the global pool.
    All,
}

/// Below this many multiply-adds a GEMM runs on one thread: splitting costs
/// more than it saves.
const PARALLEL_MIN_MACS: usize = 1 << 20;

/// `out[m×n] = x[m×k] · w[n×k]ᵀ + bias[n]`.
pub fn linear(x: &[f32], w: &[f32], bias: Option<&[f32]>, m: usize, k: usize, n: usize, out: &mut [f32], threads: Threads) {
    assert_eq!(x.len(), m * k, "linear: x is not m×k");
    assert_eq!(w.len(), n * k, "linear: w is not n×k");
    assert_eq!(out.len(), m * n, "linear: out is not m×n");
    if let Some(b) = bias {
        assert_eq!(b.len(), n, "linear: bias is not n");
        for row in out.chunks_exact_mut(n) {
            row.copy_from_slice(b);
        }
    }
    if m == 0 || n == 0 {
        return;
    }
    let parallelism = match threads {
        Threads::All if m * n * k >= PARALLEL_MIN_MACS => Parallelism::Rayon(0),
        _ => Parallelism::None,
    };
    // SAFETY: the assertions above guarantee that x (m×k, row-major: row
    // stride k, column stride 1), wᵀ (k×n read from w's n×k storage: row
    // stride 1, column stride k) and out (m×n, row stride n) lie within their
    // slices; out is borrowed mutably and does not alias x or w.
    unsafe {
        gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            bias.is_some(),
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::testutil::{assert_close, random};

    fn reference(x: &[f32], w: &[f32], b: Option<&[f32]>, m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut out = vec![0.0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut acc = b.map_or(0.0, |b| f64::from(b[j]));
                for p in 0..k {
                    acc += f64::from(x[i * k + p]) * f64::from(w[j * k + p]);
                }
                out[i * n + j] = acc;
            }
        }
        out
    }

    #[test]
    fn linear_matches_a_float64_reference_on_random_shapes() {
        for (seed, &(m, k, n)) in [(1, 384, 384), (16, 384, 1152), (37, 1536, 384), (130, 64, 70), (3, 5, 7)].iter().enumerate() {
            let x = random(m * k, seed as u64);
            let w = random(n * k, 100 + seed as u64);
            let b = random(n, 200 + seed as u64);
            for threads in [Threads::One, Threads::All] {
                let mut out = vec![0.0; m * n];
                linear(&x, &w, Some(&b), m, k, n, &mut out, threads);
                assert_close(&out, &reference(&x, &w, Some(&b), m, k, n), 1e-5, "linear with bias");
            }
            let mut out = vec![7.0; m * n];
            linear(&x, &w, None, m, k, n, &mut out, Threads::One);
            assert_close(&out, &reference(&x, &w, None, m, k, n), 1e-5, "linear without bias");
        }
    }
}
