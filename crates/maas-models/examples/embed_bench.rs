//! Engine-alone throughput of all-MiniLM-L6-v2 on our CPU kernels, and the
//! CPU's measured peak fp32 FMA rate for scale.
//!
//!     cargo run --release -p maas-models --example embed_bench -- [models_dir] [seconds_per_case] [cpu|cuda:N] [16x1,64x32,…]
//!
//! Prints one JSON object per case: batch, tokens per input, sentences/s,
//! tokens/s, median batch latency, and GFLOP/s as a share of the peak.

#![allow(clippy::unwrap_used)]

use maas_models::Embedder;
use maas_models::Precision;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Multiply-adds per token of the encoder's linear layers (QKV, output,
/// two FFN matrices) over 6 layers; attention adds a length-dependent term.
fn flops(batch: usize, len: usize) -> f64 {
    let (h, f, layers, heads, d) = (384.0, 1536.0, 6.0, 12.0, 32.0);
    let linear = 2.0 * (4.0 * h * h + 2.0 * h * f) * layers;
    let attn = 2.0 * 2.0 * heads * d * len as f64 * layers;
    batch as f64 * len as f64 * (linear + attn)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = args
        .get(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("models"))
        .join("all-minilm-l6-v2");
    let secs: f64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(2.0);
    let device: maas_models::Device = args
        .get(3)
        .map(|s| s.parse().unwrap())
        .unwrap_or(maas_models::Device::Cpu);
    // Optional fifth argument: the precisions to run, each case in turn on
    // each (`f16,int8`; f16 alone by default). f16 reports as `maas`, int8
    // as `maas-int8` (`maas-cuda…` on a GPU).
    let precisions: Vec<Precision> = args
        .get(5)
        .map(String::as_str)
        .unwrap_or("f16")
        .split(',')
        .map(|p| p.parse().unwrap())
        .collect();
    let engines: Vec<(String, Embedder)> = precisions
        .iter()
        .map(|&p| {
            let base = if device == maas_models::Device::Cpu {
                "maas"
            } else {
                "maas-cuda"
            };
            let name = match p {
                Precision::F16 => base.to_string(),
                _ => format!("{base}-{}", p.as_str()),
            };
            (name, Embedder::load_with(&dir, device, p).unwrap())
        })
        .collect();
    let peak = maas_kernels::cpu::peak_fma_gflops(Duration::from_millis(500));
    if device == maas_models::Device::Cpu {
        println!(
            "{{\"peak_fp32_gflops\": {peak:.1}, \"threads\": {}}}",
            rayon::current_num_threads()
        );
    }
    // Optional fourth argument: only these cases, as `tokens×batch,…` (e.g.
    // 16x1), or `all`.
    let only: Option<Vec<(usize, usize)>> = args.get(4).filter(|s| *s != "all").map(|s| {
        s.split(',')
            .filter_map(|c| c.split_once('x'))
            .filter_map(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
            .collect()
    });
    for &len in &[16usize, 64, 256] {
        for &batch in &[1usize, 8, 32, 128] {
            if only.as_ref().is_some_and(|o| !o.contains(&(len, batch))) {
                continue;
            }
            // Inputs of exactly `len` word pieces: [CLS] + (len-2) ids + [SEP].
            let ids: Vec<Vec<u32>> = (0..batch)
                .map(|b| {
                    let mut v = vec![101u32];
                    v.extend((0..len - 2).map(|i| 1000 + ((i * 7 + b * 13) % 20000) as u32));
                    v.push(102);
                    v
                })
                .collect();
            for (engine, e) in &engines {
                e.forward(&ids).unwrap(); // warm-up
                let mut times = Vec::new();
                let start = Instant::now();
                while start.elapsed().as_secs_f64() < secs || times.len() < 3 {
                    let t = Instant::now();
                    std::hint::black_box(e.forward(&ids).unwrap());
                    times.push(t.elapsed().as_secs_f64());
                }
                times.sort_by(f64::total_cmp);
                let med = times[times.len() / 2];
                let gflops = flops(batch, len) / med / 1e9;
                println!(
                "{{\"engine\": \"{engine}\", \"batch\": {batch}, \"tokens\": {len}, \"sentences_per_s\": {:.1}, \"tokens_per_s\": {:.0}, \"median_ms\": {:.3}, \"gflops\": {gflops:.1}, \"share_of_peak\": {:.3}}}",
                batch as f64 / med,
                (batch * len) as f64 / med,
                med * 1e3,
                gflops / peak
            );
            }
        }
    }
}
