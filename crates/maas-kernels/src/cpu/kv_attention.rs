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

/// Dot product in 16 independent lanes, so that it vectorises.
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..16 {
            acc[l] += x[l] * y[l];
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
            items.push((s, t));
            work += (seg.pos0 + t + 1) * heads;
        }
    }
    let scale = 1.0 / (d as f32).sqrt();
    let group = heads / kv_heads;
    let ptr = OutPtr(out.as_mut_ptr());
    let run = |&(s, t): &(usize, usize)| {
        let ptr = ptr;
        let seg = &segs[s];
        let visible = seg.pos0 + t + 1;
        let row = seg.row0 + t;
        let mut scores = vec![0f32; visible];
        let mut acc = vec![0f32; d];
        for head in 0..heads {
            let kvh = head / group;
            let qv = &q[row * qd + head * d..][..d];
            let mut max = f32::NEG_INFINITY;
            for (j, sc) in scores.iter_mut().enumerate() {
                *sc = dot(qv, &seg.k[j * kvd + kvh * d..][..d]) * scale;
                max = max.max(*sc);
            }
            let mut sum = 0.0;
            for sc in scores.iter_mut() {
                *sc = (*sc - max).exp();
                sum += *sc;
            }
            acc.fill(0.0);
            for (j, sc) in scores.iter().enumerate() {
                let vv = &seg.v[j * kvd + kvh * d..][..d];
                for (o, x) in acc.iter_mut().zip(vv) {
                    *o += sc * x;
                }
            }
            let inv = 1.0 / sum;
            // SAFETY: (row, head) is unique to this item and lies inside out
            // (row < rows of q, checked above).
            let dst = unsafe { std::slice::from_raw_parts_mut(ptr.0.add(row * qd + head * d), d) };
            for (o, a) in dst.iter_mut().zip(&acc) {
                *o = a * inv;
            }
        }
    };
    if work * d >= 1 << 16 && items.len() > 1 {
        use rayon::prelude::*;
        items.par_iter().for_each(run);
    } else {
        items.iter().for_each(run);
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
