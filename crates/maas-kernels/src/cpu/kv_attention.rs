//! Causal grouped-query attention against a KV cache (decoder models), for a
//! batch that mixes sequences: some decoding one token, some prefilling a
//! chunk of their prompt. Each query row sees its own sequence's cached
//! positions up to and including itself.
//!
//! The cache holds keys and values as IEEE half floats (f16 bits): half the
//! memory, and half the bytes a decode step reads from it (with many
//! sequences or long contexts, more than the weights). They are widened to
//! f32 as they are read; all arithmetic is f32.

/// One sequence's part of a batch.
pub struct KvSegment<'a> {
    /// First row of this sequence's queries in the batch.
    pub row0: usize,
    /// Number of new positions (query rows).
    pub rows: usize,
    /// Positions cached before these rows.
    pub pos0: usize,
    /// Keys and values of positions `0..pos0 + rows`, `[pos × kv_heads·d]`,
    /// as f16 bits.
    pub k: &'a [u16],
    pub v: &'a [u16],
}

/// Appends `src` to `dst` as f16 bits (round to nearest even).
pub fn push_f16(dst: &mut Vec<u16>, src: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("f16c") && is_x86_feature_detected!("avx") {
            // SAFETY: the CPU supports F16C and AVX (checked just above).
            return unsafe { push_f16_f16c(dst, src) };
        }
    }
    dst.extend(src.iter().map(|&v| super::mathf::f16_bits(v)));
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
unsafe fn push_f16_f16c(dst: &mut Vec<u16>, src: &[f32]) {
    use std::arch::x86_64::*;
    let start = dst.len();
    dst.resize(start + src.len(), 0);
    let out = &mut dst[start..];
    let chunks = src.len() / 8;
    for c in 0..chunks {
        let h =
            _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(src.as_ptr().add(8 * c)));
        _mm_storeu_si128(out.as_mut_ptr().add(8 * c) as *mut __m128i, h);
    }
    for i in 8 * chunks..src.len() {
        out[i] = super::mathf::f16_bits(src[i]);
    }
}

#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: each work item writes its own (row, head) slice of the output.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// Sum in 16 independent lanes, so that it vectorises.
#[inline(always)]
fn sum(a: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let c = a.chunks_exact(16);
    let rest = c.remainder().iter().sum::<f32>();
    for x in c {
        for l in 0..16 {
            acc[l] += x[l];
        }
    }
    acc.iter().sum::<f32>() + rest
}

/// `out[row, head] = softmax(q·Kᵀ/√d) · V` over the visible positions, for
/// every query row of every segment. `q` and `out` are `[rows × heads·d]`.
pub fn causal_attention(
    q: &[f32],
    segs: &[KvSegment],
    heads: usize,
    kv_heads: usize,
    d: usize,
    out: &mut [f32],
) {
    let (qd, kvd) = (heads * d, kv_heads * d);
    assert!(
        heads.is_multiple_of(kv_heads),
        "causal_attention: heads are not a multiple of kv heads"
    );
    assert_eq!(q.len(), out.len(), "causal_attention: q and out differ");
    let mut items = Vec::new();
    let mut work = 0usize;
    for (s, seg) in segs.iter().enumerate() {
        let total = seg.pos0 + seg.rows;
        assert!(
            (seg.row0 + seg.rows) * qd <= q.len(),
            "causal_attention: segment rows"
        );
        assert!(
            seg.k.len() >= total * kvd && seg.v.len() >= total * kvd,
            "causal_attention: cache too short"
        );
        for t in 0..seg.rows {
            for head in 0..heads {
                items.push((s, t, head));
            }
            work += (seg.pos0 + t + 1) * heads;
        }
    }
    let ptr = OutPtr(out.as_mut_ptr());
    let run = |&(s, t, head): &(usize, usize, usize)| {
        let ptr = ptr;
        let seg = &segs[s];
        let row = seg.row0 + t;
        // SAFETY: this (row, head) slice of out belongs to this item only,
        // and lies inside out (rows of q were checked above).
        let dst = unsafe { std::slice::from_raw_parts_mut(ptr.0.add(row * qd + head * d), d) };
        let kvh = head / (heads / kv_heads);
        attend(
            &q[row * qd + head * d..row * qd + (head + 1) * d],
            seg,
            seg.pos0 + t + 1,
            kvh * d,
            kv_heads * d,
            dst,
        );
    };
    if work * d >= 1 << 16 && items.len() > 1 {
        super::Team::global().run(items.len(), &|i| run(&items[i]));
    } else {
        items.iter().for_each(run);
    }
}

/// One query row and head over `visible` positions (keys and values of
/// its kv head at column `col` of rows `kvd` wide); the AVX-512 and AVX2
/// versions widen 16 or 8 halves per instruction.
fn attend(q: &[f32], seg: &KvSegment, visible: usize, col: usize, kvd: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        let f16c = is_x86_feature_detected!("f16c") && is_x86_feature_detected!("fma");
        if f16c
            && q.len().is_multiple_of(16)
            && q.len() <= 256
            && is_x86_feature_detected!("avx512f")
        {
            // SAFETY: the CPU supports AVX-512F, F16C and FMA (checked above).
            return unsafe { x86::attend_avx512(q, seg, visible, col, kvd, out) };
        }
        if f16c && q.len().is_multiple_of(8) && q.len() <= 256 && is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, F16C and FMA (checked above).
            return unsafe { x86::attend_avx2(q, seg, visible, col, kvd, out) };
        }
    }
    attend_portable(q, seg, visible, col, kvd, out)
}

fn attend_portable(
    q: &[f32],
    seg: &KvSegment,
    visible: usize,
    col: usize,
    kvd: usize,
    out: &mut [f32],
) {
    let d = q.len();
    let scale = 1.0 / (d as f32).sqrt();
    let mut scores: Vec<f32> = (0..visible)
        .map(|j| {
            seg.k[j * kvd + col..][..d]
                .iter()
                .zip(q)
                .map(|(&k, &x)| super::mathf::f16_value(k) * x)
                .sum::<f32>()
                * scale
        })
        .collect();
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for sc in scores.iter_mut() {
        *sc = (*sc - max).exp();
    }
    let sum: f32 = scores.iter().sum();
    out.fill(0.0);
    for (j, sc) in scores.iter().enumerate() {
        for (o, &v) in out.iter_mut().zip(&seg.v[j * kvd + col..][..d]) {
            *o += sc * super::mathf::f16_value(v);
        }
    }
    for o in out.iter_mut() {
        *o /= sum;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{sum, KvSegment};
    use std::arch::x86_64::*;

    /// Softmax of the scores in place (max subtracted), returning the sum.
    #[inline(always)]
    fn softmax_numerators(scores: &mut [f32]) -> f32 {
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for sc in scores.iter_mut() {
            *sc = crate::cpu::mathf::exp(*sc - max);
        }
        sum(scores)
    }

    #[target_feature(enable = "avx512f,avx512vl,fma,f16c")]
    pub unsafe fn attend_avx512(
        q: &[f32],
        seg: &KvSegment,
        visible: usize,
        col: usize,
        kvd: usize,
        out: &mut [f32],
    ) {
        let d = q.len();
        let lanes = d / 16;
        assert!(
            d.is_multiple_of(16)
                && lanes <= 16
                && seg.k.len() >= visible * kvd
                && seg.v.len() >= visible * kvd
                && col + d <= kvd
        );
        let scale = 1.0 / (d as f32).sqrt();
        let mut qv = [_mm512_setzero_ps(); 16];
        for c in 0..lanes {
            qv[c] = _mm512_loadu_ps(q.as_ptr().add(16 * c));
        }
        let mut scores = vec![0f32; visible];
        let kp = seg.k.as_ptr().add(col);
        for (j, sc) in scores.iter_mut().enumerate() {
            let row = kp.add(j * kvd);
            let mut acc = _mm512_setzero_ps();
            for c in 0..lanes {
                let k = _mm512_cvtph_ps(_mm256_loadu_si256(row.add(16 * c) as *const __m256i));
                acc = _mm512_fmadd_ps(k, qv[c], acc);
            }
            *sc = _mm512_reduce_add_ps(acc) * scale;
        }
        let total = softmax_numerators(&mut scores);
        let mut o = [_mm512_setzero_ps(); 16];
        let vp = seg.v.as_ptr().add(col);
        for (j, &p) in scores.iter().enumerate() {
            let row = vp.add(j * kvd);
            let pv = _mm512_set1_ps(p);
            for c in 0..lanes {
                let v = _mm512_cvtph_ps(_mm256_loadu_si256(row.add(16 * c) as *const __m256i));
                o[c] = _mm512_fmadd_ps(pv, v, o[c]);
            }
        }
        let inv = _mm512_set1_ps(1.0 / total);
        for c in 0..lanes {
            _mm512_storeu_ps(out.as_mut_ptr().add(16 * c), _mm512_mul_ps(o[c], inv));
        }
    }

    #[inline(always)]
    unsafe fn hsum256(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn attend_avx2(
        q: &[f32],
        seg: &KvSegment,
        visible: usize,
        col: usize,
        kvd: usize,
        out: &mut [f32],
    ) {
        let d = q.len();
        let lanes = d / 8;
        assert!(
            d.is_multiple_of(8)
                && lanes <= 32
                && seg.k.len() >= visible * kvd
                && seg.v.len() >= visible * kvd
                && col + d <= kvd
        );
        let scale = 1.0 / (d as f32).sqrt();
        let mut scores = vec![0f32; visible];
        let kp = seg.k.as_ptr().add(col);
        for (j, sc) in scores.iter_mut().enumerate() {
            let row = kp.add(j * kvd);
            let mut acc = _mm256_setzero_ps();
            for c in 0..lanes {
                let k = _mm256_cvtph_ps(_mm_loadu_si128(row.add(8 * c) as *const __m128i));
                acc = _mm256_fmadd_ps(k, _mm256_loadu_ps(q.as_ptr().add(8 * c)), acc);
            }
            *sc = hsum256(acc) * scale;
        }
        let total = softmax_numerators(&mut scores);
        let mut o = [_mm256_setzero_ps(); 32];
        let vp = seg.v.as_ptr().add(col);
        for (j, &p) in scores.iter().enumerate() {
            let row = vp.add(j * kvd);
            let pv = _mm256_set1_ps(p);
            for c in 0..lanes {
                let v = _mm256_cvtph_ps(_mm_loadu_si128(row.add(8 * c) as *const __m128i));
                o[c] = _mm256_fmadd_ps(pv, v, o[c]);
            }
        }
        let inv = _mm256_set1_ps(1.0 / total);
        for c in 0..lanes {
            _mm256_storeu_ps(out.as_mut_ptr().add(8 * c), _mm256_mul_ps(o[c], inv));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::testutil::{assert_close, random};

    #[test]
    fn mixed_segments_match_float64_on_every_isa() {
        let (heads, kv_heads, d) = (9, 3, 64);
        let (qd, kvd) = (heads * d, kv_heads * d);
        // Segment A: 5 new rows after 7 cached; B: 1 row after 40; C: a fresh 3-row prompt.
        let shapes = [(7, 5), (40, 1), (0, 3)];
        let rows: usize = shapes.iter().map(|s| s.1).sum();
        let q = random(rows * qd, 50);
        let half = |n: usize, seed: u64| {
            let mut v = Vec::new();
            push_f16(&mut v, &random(n, seed));
            v
        };
        let caches: Vec<(Vec<u16>, Vec<u16>)> = shapes
            .iter()
            .enumerate()
            .map(|(i, (p, r))| {
                (
                    half((p + r) * kvd, 60 + i as u64),
                    half((p + r) * kvd, 70 + i as u64),
                )
            })
            .collect();
        let mut segs = Vec::new();
        let mut row0 = 0;
        for ((p, r), (k, v)) in shapes.iter().zip(&caches) {
            segs.push(KvSegment {
                row0,
                rows: *r,
                pos0: *p,
                k,
                v,
            });
            row0 += r;
        }
        let f = |h: u16| f64::from(crate::cpu::mathf::f16_value(h));
        let mut want = vec![0f64; rows * qd];
        for seg in &segs {
            for t in 0..seg.rows {
                let row = seg.row0 + t;
                for h in 0..heads {
                    let kvh = h / (heads / kv_heads);
                    let vis = seg.pos0 + t + 1;
                    let s: Vec<f64> = (0..vis)
                        .map(|j| {
                            (0..d)
                                .map(|c| {
                                    f64::from(q[row * qd + h * d + c])
                                        * f(seg.k[j * kvd + kvh * d + c])
                                })
                                .sum::<f64>()
                                / (d as f64).sqrt()
                        })
                        .collect();
                    let mx = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = s.iter().map(|x| (x - mx).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for c in 0..d {
                        want[row * qd + h * d + c] = (0..vis)
                            .map(|j| e[j] / z * f(seg.v[j * kvd + kvh * d + c]))
                            .sum();
                    }
                }
            }
        }
        let mut out = vec![f32::NAN; rows * qd];
        causal_attention(&q, &segs, heads, kv_heads, d, &mut out);
        assert_close(&out, &want, 1e-5, "causal attention");
        // The portable path, row by row.
        let mut out = vec![f32::NAN; rows * qd];
        for seg in &segs {
            for t in 0..seg.rows {
                let row = seg.row0 + t;
                for h in 0..heads {
                    let kvh = h / (heads / kv_heads);
                    attend_portable(
                        &q[row * qd + h * d..][..d],
                        seg,
                        seg.pos0 + t + 1,
                        kvh * d,
                        kvd,
                        &mut out[row * qd + h * d..][..d],
                    );
                }
            }
        }
        assert_close(&out, &want, 1e-5, "portable attention");
    }
}
