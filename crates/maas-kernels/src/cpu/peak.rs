//! The CPU's peak fp32 multiply-add rate, measured with a kernel of
//! independent FMA chains on every thread: the yardstick for GEMM efficiency.

use rayon::prelude::*;
use std::time::{Duration, Instant};

/// Measured GFLOP/s (2 flops per FMA) over all threads of the global pool.
pub fn peak_fma_gflops(duration: Duration) -> f64 {
    let threads = rayon::current_num_threads();
    let per_thread: Vec<f64> = (0..threads)
        .into_par_iter()
        .map(|_| one_thread(duration))
        .collect();
    per_thread.iter().sum()
}

fn one_thread(duration: Duration) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F (checked just above).
            return unsafe { avx512(duration) };
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            return unsafe { avx2(duration) };
        }
    }
    scalar(duration)
}

macro_rules! fma_loop {
    ($duration:expr, $lanes:expr, $zero:expr, $splat:expr, $fma:expr, $sum:expr) => {{
        let a = $splat(0.999_999f32);
        let b = $splat(1e-7f32);
        let mut acc = [$zero; 12];
        let mut iters = 0u64;
        let start = Instant::now();
        while start.elapsed() < $duration {
            for _ in 0..1000 {
                for x in acc.iter_mut() {
                    *x = $fma(*x, a, b);
                }
            }
            iters += 1000;
        }
        let secs = start.elapsed().as_secs_f64();
        std::hint::black_box(acc.iter().map(|v| $sum(*v)).sum::<f32>());
        (iters as f64 * 12.0 * $lanes as f64 * 2.0) / secs / 1e9
    }};
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn avx512(duration: Duration) -> f64 {
    use std::arch::x86_64::*;
    fma_loop!(
        duration,
        16,
        _mm512_setzero_ps(),
        |v| _mm512_set1_ps(v),
        |x, a, b| _mm512_fmadd_ps(x, a, b),
        |v| _mm512_reduce_add_ps(v)
    )
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2(duration: Duration) -> f64 {
    use std::arch::x86_64::*;
    fma_loop!(
        duration,
        8,
        _mm256_setzero_ps(),
        |v| _mm256_set1_ps(v),
        |x, a, b| _mm256_fmadd_ps(x, a, b),
        |v: __m256| {
            let mut out = [0f32; 8];
            _mm256_storeu_ps(out.as_mut_ptr(), v);
            out.iter().sum::<f32>()
        }
    )
}

fn scalar(duration: Duration) -> f64 {
    fma_loop!(
        duration,
        1,
        0f32,
        |v| v,
        |x: f32, a, b| x.mul_add(a, b),
        |v| v
    )
}
