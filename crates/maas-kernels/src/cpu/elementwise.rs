//! Elementwise ops.

/// erf for f32 as a rational function of x² (odd numerator of degree 13,
/// even denominator of degree 8) on [-4, 4], where it is within ~1 ulp of the
/// true value, and ±1 beyond. Only multiplies, adds, a division and min/max:
/// the loops below compile to SIMD, unlike a libm call per element.
#[inline(always)]
fn erf_fast(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10_f32;
    p = p.mul_add(x2, 2.770_681_4e-8);
    p = p.mul_add(x2, -2.101_024e-6);
    p = p.mul_add(x2, -5.692_506_4e-5);
    p = p.mul_add(x2, -7.349_906_3e-4);
    p = p.mul_add(x2, -2.954_600_3e-3);
    p = p.mul_add(x2, -1.609_603_4e-2);
    let p = p * x;
    let mut q = -1.456_607_2e-5_f32;
    q = q.mul_add(x2, -2.133_740_6e-4);
    q = q.mul_add(x2, -1.682_827e-3);
    q = q.mul_add(x2, -7.373_329e-3);
    q = q.mul_add(x2, -1.426_474e-2);
    p / q
}

/// Exact GELU, `x·Φ(x) = x/2·(1 + erf(x/√2))`, as BERT uses.
#[inline(always)]
pub fn gelu_scalar(x: f32) -> f32 {
    0.5 * x * (1.0 + erf_fast(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// GELU over a slice. The same loop is compiled three times (AVX-512,
/// AVX2+FMA, baseline) and the best one the CPU supports is picked at run
/// time: without the FMA feature `mul_add` would be a library call per element.
pub fn gelu_inplace(x: &mut [f32]) {
    // Large activations are split over the threads in cache-sized pieces.
    const PIECE: usize = 16 * 1024;
    if x.len() >= 4 * PIECE {
        use rayon::prelude::*;
        x.par_chunks_mut(PIECE).for_each(gelu_piece);
    } else {
        gelu_piece(x);
    }
}

fn gelu_piece(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F (checked just above).
            return unsafe { gelu_avx512(x) };
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            return unsafe { gelu_avx2(x) };
        }
    }
    gelu_loop(x)
}

#[inline(always)]
fn gelu_loop(x: &mut [f32]) {
    for v in x {
        *v = gelu_scalar(*v);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,fma")]
unsafe fn gelu_avx512(x: &mut [f32]) {
    gelu_loop(x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gelu_avx2(x: &mut [f32]) {
    gelu_loop(x)
}

/// `x += y`.
pub fn add_inplace(x: &mut [f32], y: &[f32]) {
    assert_eq!(x.len(), y.len(), "add: lengths differ");
    for (a, b) in x.iter_mut().zip(y) {
        *a += *b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::testutil::{assert_close, random};

    fn erf64(x: f64) -> f64 {
        // erf by its Taylor series (converges fast for |x| ≤ 4, enough here).
        let mut sum = 0.0;
        let mut term = x;
        let mut n = 0.0;
        while term.abs() > 1e-17 || n < 5.0 {
            sum += term / (2.0 * n + 1.0);
            n += 1.0;
            term *= -x * x / n;
            if n > 200.0 {
                break;
            }
        }
        2.0 / std::f64::consts::PI.sqrt() * sum
    }

    #[test]
    fn gelu_matches_a_float64_reference() {
        let mut x: Vec<f32> = random(4096, 7).into_iter().map(|v| v * 4.0).collect();
        let want: Vec<f64> = x
            .iter()
            .map(|&v| {
                let v = f64::from(v);
                0.5 * v * (1.0 + erf64(v / std::f64::consts::SQRT_2))
            })
            .collect();
        gelu_inplace(&mut x);
        assert_close(&x, &want, 1e-6, "gelu");
    }

    #[test]
    fn add_adds() {
        let mut a = random(100, 1);
        let b = random(100, 2);
        let want: Vec<f64> = a
            .iter()
            .zip(&b)
            .map(|(x, y)| f64::from(*x) + f64::from(*y))
            .collect();
        add_inplace(&mut a, &b);
        assert_close(&a, &want, 1e-7, "add");
    }
}
