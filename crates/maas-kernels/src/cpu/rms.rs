//! RMS normalisation (llama family): `x / √(mean(x²) + eps) · w`.

/// Normalises each row of `x` (`cols` wide) into `out`.
pub fn rms_norm(x: &[f32], w: &[f32], cols: usize, eps: f32, out: &mut [f32]) {
    assert_eq!(w.len(), cols, "rms_norm: weight");
    assert_eq!(x.len(), out.len(), "rms_norm: out");
    for (row, o) in x.chunks_exact(cols).zip(out.chunks_exact_mut(cols)) {
        let ms = row.iter().map(|v| v * v).sum::<f32>() / cols as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        for ((o, v), g) in o.iter_mut().zip(row).zip(w) {
            *o = v * inv * g;
        }
    }
}

/// `gate = silu(gate) · up`, the SwiGLU activation, in place (compiled for
/// the best vector unit present).
pub fn swiglu_inplace(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "swiglu: lengths differ");
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports AVX-512F and FMA (checked just above).
            return unsafe { swiglu_avx512(gate, up) };
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            return unsafe { swiglu_avx2(gate, up) };
        }
    }
    swiglu_loop(gate, up)
}

#[inline(always)]
fn swiglu_loop(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + super::mathf::exp(-*g)) * u;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,fma")]
unsafe fn swiglu_avx512(gate: &mut [f32], up: &[f32]) {
    swiglu_loop(gate, up)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn swiglu_avx2(gate: &mut [f32], up: &[f32]) {
    swiglu_loop(gate, up)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::testutil::{assert_close, random};

    #[test]
    fn rms_norm_and_swiglu_match_float64_references() {
        let cols = 576;
        let (x, w) = (random(3 * cols, 31), random(cols, 32));
        let mut want = Vec::new();
        for row in x.chunks(cols) {
            let ms = row.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / cols as f64;
            want.extend(
                row.iter()
                    .zip(&w)
                    .map(|(v, g)| f64::from(*v) / (ms + 1e-5).sqrt() * f64::from(*g)),
            );
        }
        let mut out = vec![0.0; x.len()];
        rms_norm(&x, &w, cols, 1e-5, &mut out);
        assert_close(&out, &want, 1e-5, "rms_norm");

        let (mut g, u) = (
            random(1000, 33)
                .iter()
                .map(|v| v * 6.0)
                .collect::<Vec<f32>>(),
            random(1000, 34),
        );
        let want: Vec<f64> = g
            .iter()
            .zip(&u)
            .map(|(a, b)| {
                let a = f64::from(*a);
                a / (1.0 + (-a).exp()) * f64::from(*b)
            })
            .collect();
        swiglu_inplace(&mut g, &u);
        assert_close(&g, &want, 1e-6, "swiglu");
    }
}
