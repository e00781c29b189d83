//! Every CUDA kernel against the CPU op of the same name (itself tested
//! against float64) on random inputs, on the GPU named by
//! `MAAS_WORKER_DEVICE=cuda:N`. Needs a GPU, so it is ignored by default;
//! scripts/gpu-check runs it with `--ignored`.

#![allow(clippy::unwrap_used)]

use maas_kernels::cpu::{self, Threads};
use maas_kernels::cuda::Gpu;
use rand::{Rng, SeedableRng};

fn device() -> usize {
    let d = std::env::var("MAAS_WORKER_DEVICE").unwrap_or_else(|_| "cuda:0".into());
    d.strip_prefix("cuda:")
        .expect("MAAS_WORKER_DEVICE must be cuda:N here")
        .parse()
        .unwrap()
}

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() / scale <= tol,
            "{what}[{i}]: gpu {g}, cpu {w}"
        );
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-check runs it"]
fn every_cuda_kernel_matches_its_cpu_twin() {
    let g = Gpu::new(device()).unwrap();
    eprintln!("testing on {} ({})", g.device_name(), g.arch);

    for (m, k, n) in [(1, 384, 384), (37, 384, 1152), (130, 1536, 384), (3, 5, 7)] {
        let (x, w, b) = (random(m * k, 1), random(n * k, 2), random(n, 3));
        let mut want = vec![0.0; m * n];
        cpu::linear(&x, &w, Some(&b), m, k, n, &mut want, Threads::All);
        let mut out = g.zeros(m * n).unwrap();
        g.linear(
            &g.upload(&x).unwrap(),
            &g.upload(&w).unwrap(),
            &g.upload(&b).unwrap(),
            m,
            k,
            n,
            &mut out,
        )
        .unwrap();
        close(&g.download(&out).unwrap()[..m * n], &want, 1e-5, "linear");
    }

    // The int8 twin: the same quantisation (half to even) and exact integer
    // sums, so only the float epilogue may differ.
    for (m, k, n) in [
        (1, 384, 1152),
        (37, 384, 384),
        (130, 1536, 384),
        (5, 77, 48),
    ] {
        let (mut x, w, b) = (random(m * k, 8), random(n * k, 9), random(n, 10));
        // Half the rows mostly positive: zero points other than the centre.
        for v in x.iter_mut().skip(m * k / 2) {
            *v = v.abs() * 2.0 - 0.1;
        }
        // Smoothed as the model does it (per-channel ranges of x).
        let mut amax = vec![0f32; k];
        for row in x.chunks_exact(k) {
            for (a, v) in amax.iter_mut().zip(row) {
                *a = a.max(v.abs());
            }
        }
        let packed = cpu::PackedI8::quantize_smoothed(&w, n, k, &amax, 0.5);
        let mut want = vec![0.0; m * n];
        cpu::linear_i8(&x, &packed, Some(&b), m, &mut want, Threads::All);
        let kp = packed.kp();
        let (mut q, mut sx, mut zx) = (
            g.zeros_i8(m * kp).unwrap(),
            g.zeros(m).unwrap(),
            g.zeros_i32(m).unwrap(),
        );
        let smooth = g.upload(packed.smoothing().unwrap()).unwrap();
        g.quantize_rows_i8(
            &g.upload(&x).unwrap(),
            &smooth,
            m,
            k,
            kp,
            &mut q,
            &mut sx,
            &mut zx,
        )
        .unwrap();
        let mut out = g.zeros(m * n).unwrap();
        g.linear_i8(
            &q,
            &sx,
            &zx,
            &g.upload(&packed.rows()).unwrap(),
            &g.upload(packed.scales()).unwrap(),
            &g.upload(packed.colsums()).unwrap(),
            &g.upload(&b).unwrap(),
            m,
            kp,
            n,
            &mut out,
        )
        .unwrap();
        close(
            &g.download(&out).unwrap()[..m * n],
            &want,
            1e-5,
            "linear_i8",
        );
    }

    let (rows, cols) = (33, 384);
    let (x, y, gm, bt) = (
        random(rows * cols, 4),
        random(rows * cols, 5),
        random(cols, 6),
        random(cols, 7),
    );
    let mut want = x.clone();
    cpu::add_layer_norm_inplace(&mut want, &y, cols, &gm, &bt, 1e-12);
    let mut dx = g.upload(&x).unwrap();
    g.add_layer_norm(
        &mut dx,
        &g.upload(&y).unwrap(),
        &g.upload(&gm).unwrap(),
        &g.upload(&bt).unwrap(),
        rows,
        cols,
        1e-12,
    )
    .unwrap();
    close(&g.download(&dx).unwrap(), &want, 1e-4, "add_layer_norm");
    let mut want = x.clone();
    cpu::layer_norm_inplace(&mut want, cols, &gm, &bt, 1e-12);
    let mut dx = g.upload(&x).unwrap();
    g.layer_norm(
        &mut dx,
        &g.upload(&gm).unwrap(),
        &g.upload(&bt).unwrap(),
        rows,
        cols,
        1e-12,
    )
    .unwrap();
    close(&g.download(&dx).unwrap(), &want, 1e-4, "layer_norm");

    let x: Vec<f32> = random(5000, 8).iter().map(|v| v * 4.0).collect();
    let mut want = x.clone();
    cpu::gelu_inplace(&mut want);
    let mut dx = g.upload(&x).unwrap();
    g.gelu(&mut dx, x.len()).unwrap();
    close(&g.download(&dx).unwrap(), &want, 1e-5, "gelu");

    let (heads, d) = (12, 32);
    let seqs = [(0usize, 5usize), (5, 1), (6, 17), (23, 256)];
    let t = 279;
    let qkv: Vec<f32> = random(t * 3 * heads * d, 9)
        .iter()
        .map(|v| v * 3.0)
        .collect();
    let mut want = vec![0.0; t * heads * d];
    cpu::attention(&qkv, &seqs, heads, d, &mut want);
    let starts: Vec<i32> = seqs.iter().map(|s| s.0 as i32).collect();
    let lens: Vec<i32> = seqs.iter().map(|s| s.1 as i32).collect();
    let (ds, dl) = (g.upload(&starts).unwrap(), g.upload(&lens).unwrap());
    let mut out = g.zeros(t * heads * d).unwrap();
    g.attention(
        &g.upload(&qkv).unwrap(),
        &ds,
        &dl,
        &mut out,
        seqs.len(),
        heads,
        1.0 / (d as f32).sqrt(),
    )
    .unwrap();
    close(&g.download(&out).unwrap(), &want, 1e-4, "attention");

    let h = 384;
    let x = random(t * h, 10);
    let mut want = vec![0.0; seqs.len() * h];
    cpu::mean_pool(&x, h, &seqs, &mut want);
    cpu::l2_normalize_inplace(&mut want, h);
    let mut out = g.zeros(seqs.len() * h).unwrap();
    g.mean_pool_l2(&g.upload(&x).unwrap(), &ds, &dl, &mut out, seqs.len(), h)
        .unwrap();
    close(&g.download(&out).unwrap(), &want, 1e-5, "mean_pool_l2");

    let (vocab, maxpos) = (100, 16);
    let (word, pos, type0) = (random(vocab * h, 11), random(maxpos * h, 12), random(h, 13));
    let ids: Vec<u32> = vec![3, 99, 0, 42];
    let positions: Vec<i32> = vec![0, 1, 2, 0];
    let mut out = g.zeros(ids.len() * h).unwrap();
    g.embed(
        &g.upload(&ids).unwrap(),
        &g.upload(&positions).unwrap(),
        &g.upload(&word).unwrap(),
        &g.upload(&pos).unwrap(),
        &g.upload(&type0).unwrap(),
        &mut out,
        ids.len(),
        h,
    )
    .unwrap();
    let got = g.download(&out).unwrap();
    for (r, (&id, &p)) in ids.iter().zip(&positions).enumerate() {
        for c in 0..h {
            let want = word[id as usize * h + c] + pos[p as usize * h + c] + type0[c];
            assert!((got[r * h + c] - want).abs() < 1e-6, "embed[{r}][{c}]");
        }
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-check runs it"]
fn every_decoder_kernel_matches_its_cpu_twin() {
    use maas_kernels::cpu::{KvSegment, QMatrix, QPath, QType};
    let g = Gpu::new(device()).unwrap();
    let (rows_n, h, ffn, heads, kv_heads, hd) =
        (5usize, 576usize, 1536usize, 9usize, 3usize, 64usize);

    // RMSNorm.
    let (x, w) = (random(rows_n * h, 11), random(h, 12));
    let mut want = vec![0.0; rows_n * h];
    cpu::rms_norm(&x, &w, h, 1e-5, &mut want);
    let mut out = g.zeros(rows_n * h).unwrap();
    g.rms_norm(
        &g.upload(&x).unwrap(),
        &g.upload(&w).unwrap(),
        &mut out,
        rows_n,
        h,
        1e-5,
    )
    .unwrap();
    close(&g.download(&out).unwrap(), &want, 1e-5, "rms_norm");

    // SwiGLU over stacked gate/up rows.
    let gu = random(rows_n * 2 * ffn, 13);
    let mut want = Vec::new();
    for r in gu.chunks(2 * ffn) {
        let mut gate = r[..ffn].to_vec();
        cpu::swiglu_inplace(&mut gate, &r[ffn..]);
        want.extend(gate);
    }
    let mut out = g.zeros(rows_n * ffn).unwrap();
    g.swiglu(&g.upload(&gu).unwrap(), &mut out, rows_n, ffn)
        .unwrap();
    close(&g.download(&out).unwrap(), &want, 1e-5, "swiglu");

    // Rotary positions: pair (2i, 2i+1) by pos·base^(-2i/d).
    let positions: Vec<i32> = vec![0, 3, 17, 100, 4095];
    let half = hd / 2;
    let (mut cos, mut sin) = (Vec::new(), Vec::new());
    for p in 0..4096 {
        for i in 0..half {
            let t = p as f64 * 100_000f64.powf(-2.0 * i as f64 / hd as f64);
            cos.push(t.cos() as f32);
            sin.push(t.sin() as f32);
        }
    }
    let xr = random(rows_n * heads * hd, 14);
    let mut want = xr.clone();
    for (r, row) in want.chunks_mut(heads * hd).enumerate() {
        let p = positions[r] as usize;
        for head in row.chunks_mut(hd) {
            for i in 0..half {
                let (a, b) = (head[2 * i], head[2 * i + 1]);
                let (c, s) = (cos[p * half + i], sin[p * half + i]);
                head[2 * i] = a * c - b * s;
                head[2 * i + 1] = a * s + b * c;
            }
        }
    }
    let mut dx = g.upload(&xr).unwrap();
    g.rope(
        &mut dx,
        &g.upload(&positions).unwrap(),
        &g.upload(&cos).unwrap(),
        &g.upload(&sin).unwrap(),
        rows_n,
        heads * hd,
        0,
        heads,
        hd,
    )
    .unwrap();
    close(&g.download(&dx).unwrap(), &want, 1e-5, "rope");

    // Quantised matmuls against the CPU's f32 tile path (same dequantised weights).
    for kind in [QType::Q4_1, QType::Q8_0] {
        for (m, k, n) in [
            (1usize, 576usize, 960usize),
            (7, 1536, 576),
            (33, 576, 3072),
        ] {
            let q = QMatrix::quantize(kind, &random(n * k, 15), n, k).unwrap();
            let x = random(m * k, 16);
            let mut want = vec![0.0; m * n];
            cpu::q_linear_path(QPath::Tiles, &x, &q, m, &mut want, Threads::All);
            let mut out = g.zeros(m * n).unwrap();
            g.q_matmul(
                kind,
                &g.upload(q.raw()).unwrap(),
                &g.upload(&x).unwrap(),
                &mut out,
                m,
                k,
                n,
            )
            .unwrap();
            close(
                &g.download(&out).unwrap(),
                &want,
                1e-4,
                &format!("{kind:?} matmul {m}x{k}x{n}"),
            );
        }
    }
    let table = QMatrix::quantize(QType::Q8_0, &random(100 * h, 17), 100, h).unwrap();
    let ids: Vec<u32> = vec![0, 99, 42];
    let mut want = vec![0.0; ids.len() * h];
    for (o, &id) in want.chunks_mut(h).zip(&ids) {
        table.row(id as usize, o);
    }
    let mut out = g.zeros(ids.len() * h).unwrap();
    g.q8_0_embed(
        &g.upload(&ids).unwrap(),
        &g.upload(table.raw()).unwrap(),
        &mut out,
        ids.len(),
        h,
    )
    .unwrap();
    close(
        &g.download(&out).unwrap(),
        &want,
        1e-6,
        "q8_0 embedding rows",
    );

    // Attention against caches: two sequences in one pool, mixed rows.
    let kvd = kv_heads * hd;
    let (len_a, len_b) = (40usize, 3usize);
    // The CPU cache holds f16; the GPU pools get the same values widened.
    let half = |n: usize, seed: u64| {
        let mut h = Vec::new();
        cpu::push_f16(&mut h, &random(n, seed));
        h
    };
    let (ka, va) = (half(len_a * kvd, 18), half(len_a * kvd, 19));
    let (kb, vb) = (half(len_b * kvd, 20), half(len_b * kvd, 21));
    // Rows: the last 2 positions of A (a prompt chunk), the last of B (decode).
    let q = random(3 * heads * hd, 22);
    let segs = [
        KvSegment {
            row0: 0,
            rows: 2,
            pos0: len_a - 2,
            k: &ka,
            v: &va,
        },
        KvSegment {
            row0: 2,
            rows: 1,
            pos0: len_b - 1,
            k: &kb,
            v: &vb,
        },
    ];
    let mut want = vec![0.0; 3 * heads * hd];
    cpu::causal_attention(&q, &segs, heads, kv_heads, hd, &mut want);
    let kpool: Vec<f32> = ka.iter().chain(&kb).map(|&h| cpu::f16_value(h)).collect();
    let vpool: Vec<f32> = va.iter().chain(&vb).map(|&h| cpu::f16_value(h)).collect();
    let off_b = (len_a * kvd) as i64;
    let kv_off: Vec<i64> = vec![0, 0, off_b];
    let visible: Vec<i32> = vec![(len_a - 1) as i32, len_a as i32, len_b as i32];
    let mut out = g.zeros(3 * heads * hd).unwrap();
    g.kv_attention(
        &g.upload(&q).unwrap(),
        &g.upload(&kpool).unwrap(),
        &g.upload(&vpool).unwrap(),
        &g.upload(&kv_off).unwrap(),
        &g.upload(&visible).unwrap(),
        &mut out,
        3,
        heads,
        kv_heads,
        1.0 / (hd as f32).sqrt(),
    )
    .unwrap();
    close(&g.download(&out).unwrap(), &want, 1e-4, "kv attention");
}
