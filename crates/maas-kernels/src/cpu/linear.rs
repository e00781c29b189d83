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

/// Up to this many rows (measured crossover with the GEMM path), [`linear`] streams the weights once with its own
/// dot-product kernel instead of packing them for a GEMM: with few rows the
/// packing costs more than the multiply.
pub const SMALL_M: usize = 64;

/// `out[m×n] = x[m×k] · w[n×k]ᵀ + bias[n]`.
pub fn linear(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    m: usize,
    k: usize,
    n: usize,
    out: &mut [f32],
    threads: Threads,
) {
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
    if m <= SMALL_M {
        return small_m(x, w, bias.is_some(), m, k, n, out, threads);
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

/// Rows of `w` per task of the small-m kernel.
const BLOCK_N: usize = 64;

/// Few rows: each task takes a block of weight rows and computes their dot
/// products with every input row, so each weight is read from memory once.
#[allow(clippy::too_many_arguments)]
fn small_m(
    x: &[f32],
    w: &[f32],
    accumulate: bool,
    m: usize,
    k: usize,
    n: usize,
    out: &mut [f32],
    threads: Threads,
) {
    #[derive(Clone, Copy)]
    struct OutPtr(*mut f32);
    // SAFETY: each task writes only its own columns of out.
    unsafe impl Send for OutPtr {}
    unsafe impl Sync for OutPtr {}
    let ptr = OutPtr(out.as_mut_ptr());
    let task = |b: usize| {
        let ptr = ptr;
        let n0 = b * BLOCK_N;
        let nb = BLOCK_N.min(n - n0);
        let mut part = vec![0f32; m * nb];
        dots(x, &w[n0 * k..(n0 + nb) * k], m, k, nb, &mut part);
        for i in 0..m {
            // SAFETY: row i < m, columns n0..n0+nb < n: inside out (m×n),
            // and no other task writes these columns.
            let dst = unsafe { std::slice::from_raw_parts_mut(ptr.0.add(i * n + n0), nb) };
            let src = &part[i * nb..(i + 1) * nb];
            if accumulate {
                for (d, s) in dst.iter_mut().zip(src) {
                    *d += *s;
                }
            } else {
                dst.copy_from_slice(src);
            }
        }
    };
    let blocks = n.div_ceil(BLOCK_N);
    match threads {
        // In a forward pass the weights come from memory, not cache: two
        // threads pull more bandwidth, even for a single input row. The
        // spinning team, not the pool: a forward pass runs many of these.
        Threads::All if m * n * k >= PARALLEL_MIN_MACS => super::Team::global().run(blocks, &task),
        _ => (0..blocks).for_each(task),
    }
}

/// `part[i][j] = x[i] · w[j]` for `m` rows of x and `nb` rows of w (both k long).
fn dots(x: &[f32], w: &[f32], m: usize, k: usize, nb: usize, part: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY (both calls): the CPU supports the instructions (checked
        // right here); the kernels read x (m×k), w (nb×k) and write part
        // (m×nb) only inside those bounds, asserted by the caller's slicing.
        if is_x86_feature_detected!("avx512f") {
            return unsafe { dots_avx512(x, w, m, k, nb, part) };
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return unsafe { dots_avx2(x, w, m, k, nb, part) };
        }
    }
    dots_generic(x, w, m, k, nb, 0, nb, part)
}

/// AVX-512: four weight rows against two input rows per pass — eight
/// independent 16-lane accumulators, enough to keep both FMA units busy
/// through the FMA latency — then a one-row pass for an odd last row.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dots_avx512(x: &[f32], w: &[f32], m: usize, k: usize, nb: usize, part: &mut [f32]) {
    use std::arch::x86_64::*;
    let kk = k - k % 16;
    let mut j = 0;
    while j + 4 <= nb {
        let w0 = w.as_ptr().add(j * k);
        let (w1, w2, w3) = (w0.add(k), w0.add(2 * k), w0.add(3 * k));
        let mut i = 0;
        while i + 2 <= m {
            let xa = x.as_ptr().add(i * k);
            let xb = xa.add(k);
            let z = _mm512_setzero_ps();
            let (mut a0, mut a1, mut a2, mut a3) = (z, z, z, z);
            let (mut b0, mut b1, mut b2, mut b3) = (z, z, z, z);
            let mut p = 0;
            while p < kk {
                let (va, vb) = (_mm512_loadu_ps(xa.add(p)), _mm512_loadu_ps(xb.add(p)));
                let (v0, v1) = (_mm512_loadu_ps(w0.add(p)), _mm512_loadu_ps(w1.add(p)));
                a0 = _mm512_fmadd_ps(va, v0, a0);
                b0 = _mm512_fmadd_ps(vb, v0, b0);
                a1 = _mm512_fmadd_ps(va, v1, a1);
                b1 = _mm512_fmadd_ps(vb, v1, b1);
                let (v2, v3) = (_mm512_loadu_ps(w2.add(p)), _mm512_loadu_ps(w3.add(p)));
                a2 = _mm512_fmadd_ps(va, v2, a2);
                b2 = _mm512_fmadd_ps(vb, v2, b2);
                a3 = _mm512_fmadd_ps(va, v3, a3);
                b3 = _mm512_fmadd_ps(vb, v3, b3);
                p += 16;
            }
            let mut sa = [
                _mm512_reduce_add_ps(a0),
                _mm512_reduce_add_ps(a1),
                _mm512_reduce_add_ps(a2),
                _mm512_reduce_add_ps(a3),
            ];
            let mut sb = [
                _mm512_reduce_add_ps(b0),
                _mm512_reduce_add_ps(b1),
                _mm512_reduce_add_ps(b2),
                _mm512_reduce_add_ps(b3),
            ];
            for q in kk..k {
                let (pa, pb) = (*xa.add(q), *xb.add(q));
                for (r, wr) in [w0, w1, w2, w3].iter().enumerate() {
                    sa[r] += pa * (*wr.add(q));
                    sb[r] += pb * (*wr.add(q));
                }
            }
            part[i * nb + j..i * nb + j + 4].copy_from_slice(&sa);
            part[(i + 1) * nb + j..(i + 1) * nb + j + 4].copy_from_slice(&sb);
            i += 2;
        }
        for i in i..m {
            let xi = x.as_ptr().add(i * k);
            let (mut a0, mut a1, mut a2, mut a3) = (
                _mm512_setzero_ps(),
                _mm512_setzero_ps(),
                _mm512_setzero_ps(),
                _mm512_setzero_ps(),
            );
            let mut p = 0;
            while p < kk {
                let xv = _mm512_loadu_ps(xi.add(p));
                a0 = _mm512_fmadd_ps(xv, _mm512_loadu_ps(w0.add(p)), a0);
                a1 = _mm512_fmadd_ps(xv, _mm512_loadu_ps(w1.add(p)), a1);
                a2 = _mm512_fmadd_ps(xv, _mm512_loadu_ps(w2.add(p)), a2);
                a3 = _mm512_fmadd_ps(xv, _mm512_loadu_ps(w3.add(p)), a3);
                p += 16;
            }
            let mut s = [
                _mm512_reduce_add_ps(a0),
                _mm512_reduce_add_ps(a1),
                _mm512_reduce_add_ps(a2),
                _mm512_reduce_add_ps(a3),
            ];
            for q in kk..k {
                let xq = *xi.add(q);
                s[0] += xq * (*w0.add(q));
                s[1] += xq * (*w1.add(q));
                s[2] += xq * (*w2.add(q));
                s[3] += xq * (*w3.add(q));
            }
            part[i * nb + j..i * nb + j + 4].copy_from_slice(&s);
        }
        j += 4;
    }
    if j < nb {
        dots_generic(x, &w[j * k..], m, k, nb - j, j, nb, part);
    }
}

/// AVX2: as above with 8 lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dots_avx2(x: &[f32], w: &[f32], m: usize, k: usize, nb: usize, part: &mut [f32]) {
    use std::arch::x86_64::*;
    let hsum = |v: __m256| {
        let mut o = [0f32; 8];
        _mm256_storeu_ps(o.as_mut_ptr(), v);
        o.iter().sum::<f32>()
    };
    let kk = k - k % 8;
    let mut j = 0;
    while j + 4 <= nb {
        let w0 = w.as_ptr().add(j * k);
        let (w1, w2, w3) = (w0.add(k), w0.add(2 * k), w0.add(3 * k));
        for i in 0..m {
            let xi = x.as_ptr().add(i * k);
            let (mut a0, mut a1, mut a2, mut a3) = (
                _mm256_setzero_ps(),
                _mm256_setzero_ps(),
                _mm256_setzero_ps(),
                _mm256_setzero_ps(),
            );
            let mut p = 0;
            while p < kk {
                let xv = _mm256_loadu_ps(xi.add(p));
                a0 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w0.add(p)), a0);
                a1 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w1.add(p)), a1);
                a2 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w2.add(p)), a2);
                a3 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w3.add(p)), a3);
                p += 8;
            }
            let mut s = [hsum(a0), hsum(a1), hsum(a2), hsum(a3)];
            for q in kk..k {
                let xq = *xi.add(q);
                s[0] += xq * (*w0.add(q));
                s[1] += xq * (*w1.add(q));
                s[2] += xq * (*w2.add(q));
                s[3] += xq * (*w3.add(q));
            }
            part[i * nb + j..i * nb + j + 4].copy_from_slice(&s);
        }
        j += 4;
    }
    if j < nb {
        dots_generic(x, &w[j * k..], m, k, nb - j, j, nb, part);
    }
}

/// Portable version (and the tail of the SIMD ones): weight rows `w` (`rows`
/// of them) land in columns `col0..` of `part`, whose rows are `stride` wide.
#[allow(clippy::too_many_arguments)]
fn dots_generic(
    x: &[f32],
    w: &[f32],
    m: usize,
    k: usize,
    rows: usize,
    col0: usize,
    stride: usize,
    part: &mut [f32],
) {
    for r in 0..rows {
        let wr = &w[r * k..(r + 1) * k];
        for i in 0..m {
            let xi = &x[i * k..(i + 1) * k];
            part[i * stride + col0 + r] = xi.iter().zip(wr).map(|(a, b)| a * *b).sum();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::testutil::{assert_close, random};

    fn reference(
        x: &[f32],
        w: &[f32],
        b: Option<&[f32]>,
        m: usize,
        k: usize,
        n: usize,
    ) -> Vec<f64> {
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
        let shapes = [
            (1, 384, 384),
            (16, 384, 1152),
            (32, 1536, 384),
            (37, 1536, 384),
            (130, 64, 70),
            (3, 5, 7),
            (5, 33, 67),
        ];
        for (seed, &(m, k, n)) in shapes.iter().enumerate() {
            let x = random(m * k, seed as u64);
            let w = random(n * k, 100 + seed as u64);
            let b = random(n, 200 + seed as u64);
            for threads in [Threads::One, Threads::All] {
                let mut out = vec![0.0; m * n];
                linear(&x, &w, Some(&b), m, k, n, &mut out, threads);
                assert_close(
                    &out,
                    &reference(&x, &w, Some(&b), m, k, n),
                    1e-5,
                    "linear with bias",
                );
            }
            let mut out = vec![7.0; m * n];
            linear(&x, &w, None, m, k, n, &mut out, Threads::One);
            assert_close(
                &out,
                &reference(&x, &w, None, m, k, n),
                1e-5,
                "linear without bias",
            );
        }
    }
}
