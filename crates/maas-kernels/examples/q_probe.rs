use maas_kernels::cpu::{q_linear_path, QMatrix, QPath, QType, Threads};
use std::time::Instant;
fn main() {
    for (kind, n, k) in [(QType::Q8_0, 49152usize, 576usize), (QType::Q4_1, 3072, 576), (QType::Q4_1, 576, 1536), (QType::Q4_1, 960, 576)] {
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
        let q = QMatrix::quantize(kind, &w, n, k).unwrap();
        let x: Vec<f32> = (0..k).map(|i| (i as f32).sin()).collect();
        let mut out = vec![0f32; n];
        for _ in 0..5 { q_linear_path(QPath::Int8, &x, &q, 1, &mut out, Threads::All); }
        let reps = (200_000_000 / q.bytes()).max(10);
        let t0 = Instant::now();
        for _ in 0..reps { q_linear_path(QPath::Int8, &x, &q, 1, &mut out, Threads::All); }
        let dt = t0.elapsed().as_secs_f64() / reps as f64;
        println!("{kind:?} {n}x{k}: {:.1} us, {:.1} GB/s", dt * 1e6, q.bytes() as f64 / dt / 1e9);
    }
}
