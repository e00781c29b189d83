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
    let tasks: Vec<(usize, usize, usize)> = seqs
        .iter()
        .flat_map(|&(start, len)| (0..heads).map(move |head| (start, len, head)))
        .collect();
    #[cfg(target_arch = "x86_64")]
    if d == 32 && is_x86_feature_detected!("avx512f") {
        super::Team::global().run(tasks.len(), &|i| {
            let (start, len, head) = tasks[i];
            let mut scratch = Vec::new();
            // SAFETY: AVX-512F is present (checked above); the kernel reads the
            // rows start..start+len of qkv (inside it by the assertion above)
            // and writes only this task's rows and head columns of `out`
            // (sequences and heads are disjoint), which lie inside `out`.
            unsafe {
                head32_avx512(
                    qkv,
                    start,
                    len,
                    head,
                    h,
                    scale,
                    out_addr as *mut f32,
                    &mut scratch,
                )
            }
        });
        return;
    }
    tasks
        .par_iter()
        .for_each_init(Vec::new, |scores: &mut Vec<f32>, &(start, len, head)| {
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
                    len,
                    len,
                    d,
                    scores.as_mut_ptr(),
                    1,
                    len as isize,
                    false,
                    q.as_ptr(),
                    1,
                    row as isize,
                    k.as_ptr(),
                    row as isize,
                    1,
                    0.0,
                    scale,
                    false,
                    false,
                    false,
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
                    len,
                    d,
                    len,
                    dst,
                    1,
                    h as isize,
                    false,
                    scores.as_ptr(),
                    1,
                    len as isize,
                    v.as_ptr(),
                    1,
                    row as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    Parallelism::None,
                );
            }
        });
}

/// eˣ for 16 lanes: 2^(x·log₂e) split into an integer power (applied
/// exactly by `scalef`) and a fraction in [-½, ½] whose power comes from a
/// degree-6 polynomial (relative error ~1e-7).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn exp512(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let x = _mm512_max_ps(x, _mm512_set1_ps(-87.0));
    let t = _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(t);
    let g = _mm512_mul_ps(_mm512_sub_ps(t, n), _mm512_set1_ps(std::f32::consts::LN_2));
    let mut p = _mm512_set1_ps(1.0 / 720.0);
    for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = _mm512_fmadd_ps(p, g, _mm512_set1_ps(c));
    }
    _mm512_scalef_ps(p, n)
}

/// One (sequence, head) with head size 32: K transposed once into
/// `scratch`, then queries four at a time (four independent accumulator
/// chains sharing each load of K and V): 16 scores per step by broadcast
/// FMAs, a vectorised softmax per query, and the weighted sum of values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn head32_avx512(
    qkv: &[f32],
    start: usize,
    len: usize,
    head: usize,
    h: usize,
    scale: f32,
    out: *mut f32,
    scratch: &mut Vec<f32>,
) {
    const D: usize = 32;
    if len == 0 {
        return;
    }
    let row = 3 * h;
    let lp = len.div_ceil(16) * 16;
    scratch.clear();
    scratch.resize(D * lp + 4 * lp, 0.0);
    let (kt, scores) = scratch.split_at_mut(D * lp);
    for j in 0..len {
        let k = &qkv[(start + j) * row + h + head * D..][..D];
        for p in 0..D {
            kt[p * lp + j] = k[p];
        }
    }
    let mut i = 0;
    while i < len {
        let at = Queries {
            qkv,
            start,
            len,
            lp,
            head,
            h,
            scale,
            out,
        };
        match len - i {
            1 => queries32::<1>(&at, i, kt, scores),
            2 => queries32::<2>(&at, i, kt, scores),
            3 => queries32::<3>(&at, i, kt, scores),
            _ => queries32::<4>(&at, i, kt, scores),
        }
        i += 4;
    }
}

/// Where one (sequence, head) of [`head32_avx512`] lives.
struct Queries<'a> {
    qkv: &'a [f32],
    start: usize,
    len: usize,
    lp: usize,
    head: usize,
    h: usize,
    scale: f32,
    out: *mut f32,
}

/// Queries `i..i + QR` of one (sequence, head), head size 32.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn queries32<const QR: usize>(at: &Queries<'_>, i: usize, kt: &[f32], scores: &mut [f32]) {
    use std::arch::x86_64::*;
    const D: usize = 32;
    let (len, lp, h, row) = (at.len, at.lp, at.h, 3 * at.h);
    let q: [*const f32; QR] =
        std::array::from_fn(|r| at.qkv.as_ptr().add((at.start + i + r) * row + at.head * D));
    let mut jb = 0;
    while jb < lp {
        let mut acc = [_mm512_setzero_ps(); QR];
        for p in 0..D {
            let kv = _mm512_loadu_ps(kt.as_ptr().add(p * lp + jb));
            for r in 0..QR {
                acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(*q[r].add(p) * at.scale), kv, acc[r]);
            }
        }
        for r in 0..QR {
            _mm512_storeu_ps(scores.as_mut_ptr().add(r * lp + jb), acc[r]);
        }
        jb += 16;
    }
    let mut inv = [0f32; QR];
    for r in 0..QR {
        let sr = &mut scores[r * lp..(r + 1) * lp];
        let max = sr[..len].iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
        let vmax = _mm512_set1_ps(max);
        let mut vsum = _mm512_setzero_ps();
        let mut jb = 0;
        while jb < lp {
            let e = exp512(_mm512_sub_ps(_mm512_loadu_ps(sr.as_ptr().add(jb)), vmax));
            // Lanes past the sequence's end weigh nothing.
            let valid = if jb + 16 <= len {
                0xffffu16
            } else {
                ((1u32 << (len - jb)) - 1) as u16
            };
            let e = _mm512_maskz_mov_ps(valid, e);
            vsum = _mm512_add_ps(vsum, e);
            _mm512_storeu_ps(sr.as_mut_ptr().add(jb), e);
            jb += 16;
        }
        inv[r] = 1.0 / _mm512_reduce_add_ps(vsum);
    }
    let mut o = [[_mm512_setzero_ps(); 2]; QR];
    for j in 0..len {
        let v = at
            .qkv
            .as_ptr()
            .add((at.start + j) * row + 2 * h + at.head * D);
        let (v0, v1) = (_mm512_loadu_ps(v), _mm512_loadu_ps(v.add(16)));
        for r in 0..QR {
            let pj = _mm512_set1_ps(*scores.get_unchecked(r * lp + j));
            o[r][0] = _mm512_fmadd_ps(pj, v0, o[r][0]);
            o[r][1] = _mm512_fmadd_ps(pj, v1, o[r][1]);
        }
    }
    for r in 0..QR {
        let dst = at.out.add((at.start + i + r) * h + at.head * D);
        let vinv = _mm512_set1_ps(inv[r]);
        _mm512_storeu_ps(dst, _mm512_mul_ps(o[r][0], vinv));
        _mm512_storeu_ps(dst.add(16), _mm512_mul_ps(o[r][1], vinv));
    }
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
                        .map(|j| {
                            (0..d)
                                .map(|p| at(s + i, hd * d + p) * at(s + j, h + hd * d + p))
                                .sum::<f64>()
                                / (d as f64).sqrt()
                        })
                        .collect();
                    let max = w.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let sum: f64 = w
                        .iter_mut()
                        .map(|x| {
                            *x = (*x - max).exp();
                            *x
                        })
                        .sum();
                    for p in 0..d {
                        out[(s + i) * h + hd * d + p] = (0..l)
                            .map(|j| w[j] / sum * at(s + j, 2 * h + hd * d + p))
                            .sum();
                    }
                }
            }
        }
        out
    }

    #[test]
    fn attention_matches_a_float64_reference_on_packed_sequences() {
        let (heads, d) = (12, 32);
        let seqs = [
            (0usize, 5usize),
            (5, 1),
            (6, 17),
            (23, 40),
            (63, 16),
            (79, 256),
            (335, 6),
            (341, 7),
        ];
        let rows = 348;
        let qkv: Vec<f32> = random(rows * 3 * heads * d, 21)
            .into_iter()
            .map(|v| v * 3.0)
            .collect();
        let mut out = vec![0.0; rows * heads * d];
        attention(&qkv, &seqs, heads, d, &mut out);
        assert_close(&out, &reference(&qkv, &seqs, heads, d), 1e-5, "attention");
    }

    #[test]
    fn attention_with_another_head_size_takes_the_general_path() {
        let (heads, d) = (4, 24);
        let seqs = [(0usize, 7usize), (7, 20)];
        let qkv = random(27 * 3 * heads * d, 22);
        let mut out = vec![0.0; 27 * heads * d];
        attention(&qkv, &seqs, heads, d, &mut out);
        assert_close(
            &out,
            &reference(&qkv, &seqs, heads, d),
            1e-5,
            "attention d=24",
        );
    }
}
