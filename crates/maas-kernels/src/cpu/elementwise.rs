//! Elementwise ops.

/// Exact GELU, `x·Φ(x) = x/2·(1 + erf(x/√2))`, as BERT uses.
#[inline]
pub fn gelu_scalar(x: f32) -> f32 {
    0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2))
}

pub fn gelu_inplace(x: &mut [f32]) {
    for v in x {
        *v = gelu_scalar(*v);
    }
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
        let want: Vec<f64> = x.iter().map(|&v| {
            let v = f64::from(v);
            0.5 * v * (1.0 + erf64(v / std::f64::consts::SQRT_2))
        }).collect();
        gelu_inplace(&mut x);
        assert_close(&x, &want, 1e-6, "gelu");
    }

    #[test]
    fn add_adds() {
        let mut a = random(100, 1);
        let b = random(100, 2);
        let want: Vec<f64> = a.iter().zip(&b).map(|(x, y)| f64::from(*x) + f64::from(*y)).collect();
        add_inplace(&mut a, &b);
        assert_close(&a, &want, 1e-7, "add");
    }
}
