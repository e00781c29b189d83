//! Times each CPU op at the shapes of an embeddings batch of T tokens.
//!     cargo run --release -p maas-kernels --example op_bench -- [T] [seq_len]
use maas_kernels::cpu::{self, Threads};
use std::time::Instant;

fn time<F: FnMut()>(name: &str, flop: f64, mut f: F) {
    f();
    let mut v = Vec::new();
    for _ in 0..7 {
        let t = Instant::now();
        f();
        v.push(t.elapsed().as_secs_f64());
    }
    v.sort_by(f64::total_cmp);
    let m = v[3];
    println!(
        "{name:<28} {:>9.3} ms  {:>7.1} GFLOP/s",
        m * 1e3,
        flop / m / 1e9
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let t: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(2048);
    let len: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(64);
    let (h, f) = (384, 1536);
    let x: Vec<f32> = (0..t * f)
        .map(|i| ((i % 97) as f32 - 48.0) / 50.0)
        .collect();
    let w: Vec<f32> = (0..f * h * 3)
        .map(|i| ((i % 89) as f32 - 44.0) / 500.0)
        .collect();
    let b = vec![0.1f32; f * 3];
    let mut out = vec![0f32; t * f * 3];
    for (name, k, n) in [
        ("qkv 384->1152", h, 3 * h),
        ("out 384->384", h, h),
        ("ff1 384->1536", h, f),
        ("ff2 1536->384", f, h),
    ] {
        for th in [Threads::One, Threads::All] {
            time(&format!("{name} {th:?}"), 2.0 * (t * k * n) as f64, || {
                cpu::linear(
                    &x[..t * k],
                    &w[..n * k],
                    Some(&b[..n]),
                    t,
                    k,
                    n,
                    &mut out[..t * n],
                    th,
                )
            });
        }
    }
    // The same layers with packed f16 weights (the f16 version's path) and
    // with int8 weights and activations.
    for (name, k, n) in [
        ("qkv 384->1152", h, 3 * h),
        ("out 384->384", h, h),
        ("ff1 384->1536", h, f),
        ("ff2 1536->384", f, h),
    ] {
        let f16 = cpu::PackedF16::pack(&w[..n * k], n, k);
        let i8w = cpu::PackedI8::quantize(&w[..n * k], n, k);
        let flop = 2.0 * (t * k * n) as f64;
        time(&format!("{name} f16 All"), flop, || {
            cpu::linear_packed(
                &x[..t * k],
                &f16,
                Some(&b[..n]),
                t,
                &mut out[..t * n],
                Threads::All,
            )
        });
        time(&format!("{name} int8 All"), flop, || {
            cpu::linear_i8(
                &x[..t * k],
                &i8w,
                Some(&b[..n]),
                t,
                &mut out[..t * n],
                Threads::All,
            )
        });
    }
    println!("int8 kernel: {:?}", cpu::i8_kernel());
    let seqs: Vec<(usize, usize)> = (0..t / len).map(|i| (i * len, len)).collect();
    let qkv = &x[..t * 3 * h];
    let mut ctx = vec![0f32; t * h];
    time("attention", 4.0 * (t * len * h) as f64, || {
        cpu::attention(qkv, &seqs, 12, 32, &mut ctx)
    });
    let mut g = x[..t * f].to_vec();
    time("gelu", 0.0, || cpu::gelu_inplace(&mut g));
    let mut y = x[..t * h].to_vec();
    let gamma = vec![1.0f32; h];
    time("add_layer_norm", 0.0, || {
        cpu::add_layer_norm_inplace(&mut y, &ctx, h, &gamma, &gamma, 1e-12)
    });
}
