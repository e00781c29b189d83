//! CPU kernels.

mod attention;
mod elementwise;
mod int8;
mod kv_attention;
mod linear;
mod mathf;
mod norm;
mod packed;
mod peak;
mod pool;
mod quant;
mod rms;
mod team;

pub use attention::attention;
pub use elementwise::{add_inplace, gelu_inplace, gelu_scalar};
pub use int8::{i8_kernel, i8_kernels, linear_i8, linear_i8_with, I8Kernel, PackedI8};
pub use kv_attention::{causal_attention, push_f16, KvSegment};
pub use linear::{linear, Threads, SMALL_M};
pub use mathf::{exp_scaled_inplace, f16_bits, f16_value};
pub use norm::{add_layer_norm_inplace, layer_norm_inplace};
pub use packed::{linear_packed, PackedF16};
pub use peak::peak_fma_gflops;
pub use pool::{l2_normalize_inplace, mean_pool};
pub use quant::{
    q_kernel, q_linear_path, q_linear_with, QKernel, QMatrix, QPath, QType, QuantError,
};
pub use rms::{rms_norm, swiglu_inplace};
pub use team::Team;

#[cfg(test)]
pub(crate) mod testutil {
    use rand::{Rng, SeedableRng};

    pub fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    /// Largest absolute difference relative to the reference's scale.
    pub fn assert_close(got: &[f32], want: &[f64], tol: f64, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        let scale = want.iter().fold(1e-6f64, |m, v| m.max(v.abs()));
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            let err = (f64::from(*g) - w).abs() / scale;
            assert!(
                err <= tol,
                "{what}: element {i}: got {g}, want {w} (relative error {err:e})"
            );
        }
    }
}
