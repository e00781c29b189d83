//! Causal grouped-query attention against a KV cache (decoder models), for a
//! batch that mixes sequences: some decoding one token, some prefilling a
//! chunk of their prompt. Each query row sees its own sequence's cached
//! positions up to and including itself.

/// One sequence's part of a batch.
pub struct KvSegment<'a> {
    /// First row of this sequence's queries in the batch.
    pub row0: usize,
    /// Number of new positions (query rows).
    pub rows: usize,
    /// Positions cached before these rows.
    pub pos0: usize,
    /// Keys and values of positions `0..pos0 + rows`, `[pos × kv_heads·d]`.
    pub k: &'a [f32],
    pub v: &'a [f32],
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

/// Dot product in 16 independent lanes, so that it vectorises.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..16 {
            acc[l] = x[l].mul_add(y[l], acc[l]);
        }
    }
    acc.iter().sum::<f32>() + ra.iter().zip(rb).map(|(x, y)| x * y).sum::<f32>()
}

/// `out[row, head] = softmax(q·Kᵀ/√d) · V` over the visible positions, for
/// every query row of every segment. `q` and `out` are `[rows × heads·d]`.
pub fn causal_attention(q: &[f32], segs: &[KvSegment], heads: usize, kv_heads: usize, d: usize, out: &mut [f32]) {
    let (qd, kvd) = (heads * d, kv_heads * d);
    assert!(heads % kv_heads == 0, "causal_attention: heads are not a multiple of kv heads");
    assert_eq!(q.len(), out.len(), "causal_attention: q and out differ");
    let mut items = Vec::new();
    let mut work = 0usize;
    for (s, seg) in segs.iter().enumerate() {
        let total = seg.pos0 + seg.rows;
        assert!((seg.row0 + seg.rows) * qd <= q.len(), "causal_attention: segment rows");
        assert!(seg.k.len() >= total * kvd && seg.v.len() >= total * kvd, "causal_attention: cache too short");
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
        attend(&q[row * qd + head * d..row * qd + (head + 1) * d], seg, seg.pos0 + t + 1, kvh * d, kv_heads * d, dst);
    };
    if work * d >= 1 << 16 && items.len() > 1 {
        super::Team::global().run(items.len(), &|i| run(&items[i]));
    } else {
        items.iter().for_each(run);
    }
}

/// One query row and head over `visible` positions (keys and values of
/// its kv head at column `col` of rows `kvd` wide); compiled for the best
/// vector unit present (without FMA/AVX the loops would be SSE2).
fn attend(q: &[f32], seg: &KvSegment, visible: usize, col: usize, kvd: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports AVX-512F and FMA (checked just above).
            return unsafe { attend_avx512(q, seg, visible, col, kvd, out) };
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            return unsafe { attend_avx2(q, seg, visible, col, kvd, out) };
        }
    }
    attend_body(q, seg, visible, col, kvd, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,fma")]
unsafe fn attend_avx512(q: &[f32], seg: &KvSegment, visible: usize, col: usize, kvd: usize, out: &mut [f32]) {
    attend_body(q, seg, visible, col, kvd, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_avx2(q: &[f32], seg: &KvSegment, visible: usize, col: usize, kvd: usize, out: &mut [f32]) {
    attend_body(q, seg, visible, col, kvd, out)
}

#[inline(always)]
fn attend_body(q: &[f32], seg: &KvSegment, visible: usize, col: usize, kvd: usize, out: &mut [f32]) {
    let d = q.len();
    let scale = 1.0 / (d as f32).sqrt();
    let mut scores = vec![0f32; visible];
    let mut max = f32::NEG_INFINITY;
    for (j, sc) in scores.iter_mut().enumerate() {
        *sc = dot(q, &seg.k[j * kvd + col..][..d]) * scale;
        max = max.max(*sc);
    }
    for sc in scores.iter_mut() {
        *sc = super::mathf::exp(*sc - max);
    }
    let sum = sum(&scores);
    out.fill(0.0);
    for (j, sc) in scores.iter().enumerate() {
        let vv = &seg.v[j * kvd + col..][..d];
        for (o, x) in out.iter_mut().zip(vv) {
            *o = sc.mul_add(*x, *o);
        }
    }
    let inv = 1.0 / sum;
    for o in out.iter_mut() {
        *o *= inv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::testutil::{assert_close, random};

    #[test]
    fn mixed_segments_match_float64() {
        let (heads, kv_heads, d) = (9, 3, 64);
        let (qd, kvd) = (heads * d, kv_heads * d);
        // Segment A: 5 new rows after 7 cached; B: 1 row after 40; C: a fresh 3-row prompt.
        let shapes = [(7, 5), (40, 1), (0, 3)];
        let rows: usize = shapes.iter().map(|s| s.1).sum();
        let q = random(rows * qd, 50);
        let caches: Vec<(Vec<f32>, Vec<f32>)> =
            shapes.iter().enumerate().map(|(i, (p, r))| (random((p + r) * kvd, 60 + i as u64), random((p + r) * kvd, 70 + i as u64))).collect();
        let mut segs = Vec::new();
        let mut row0 = 0;
        for ((p, r), (k, v)) in shapes.iter().zip(&caches) {
            segs.push(KvSegment { row0, rows: *r, pos0: *p, k, v });
            row0 += r;
        }
        let mut want = vec![0f64; rows * qd];
        for seg in &segs {
            for t in 0..seg.rows {
                let row = seg.row0 + t;
                for h in 0..heads {
                    let kvh = h / (heads / kv_heads);
                    let vis = seg.pos0 + t + 1;
                    let s: Vec<f64> = (0..vis)
                        .map(|j| (0..d).map(|c| f64::from(q[row * qd + h * d + c]) * f64::from(seg.k[j * kvd + kvh * d + c])).sum::<f64>() / (d as f64).sqrt())
                        .collect();
                    let mx = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = s.iter().map(|x| (x - mx).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for c in 0..d {
                        want[row * qd + h * d + c] = (0..vis).map(|j| e[j] / z * f64::from(seg.v[j * kvd + kvh * d + c])).sum();
                    }
                }
            }
        }
        let mut out = vec![f32::NAN; rows * qd];
        causal_attention(&q, &segs, heads, kv_heads, d, &mut out);
        assert_close(&out, &want, 1e-5, "causal attention");
    }
}
