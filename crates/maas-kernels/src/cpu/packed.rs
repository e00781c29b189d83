//! `y = x·Wᵀ + b` with f16 weights packed once at load for a register-blocked
//! kernel: the weights are cut into panels of 16 output columns, each stored
//! k-major (`[k][16]`), so one vector load gives 16 columns of one k step.
//! The kernel keeps a block of up to 8 rows × 32 columns of the output in
//! registers and, for each k, widens two weight vectors once and multiplies
//! them with a broadcast of each row's input: every weight is converted once
//! per 8 rows (not once per row, as a dot-product kernel does), there is no
//! horizontal reduction, and the bias is added on the way out.
//!
//! Work is split into tasks of up to 64 rows × 64 columns, so a task's
//! inputs and weights stay in the core's cache while it runs.

use super::linear::Threads;

/// Output columns per panel.
const PANEL: usize = 16;
/// Rows and panels per task.
const TASK_ROWS: usize = 64;
const TASK_PANELS: usize = 4;

/// An n×k weight matrix (rows = output features) as packed f16 panels.
#[derive(Debug, Clone)]
pub struct PackedF16 {
    n: usize,
    k: usize,
    /// `n / 16` panels of `k × 16` f16 bits.
    data: Vec<u16>,
}

impl PackedF16 {
    /// Packs `w` (n×k, row-major). `n` must be a multiple of 16.
    pub fn pack(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "pack: w is not n×k");
        assert_eq!(n % PANEL, 0, "pack: n must be a multiple of {PANEL}");
        let mut data = vec![0u16; n * k];
        for panel in 0..n / PANEL {
            let base = panel * k * PANEL;
            for j in 0..PANEL {
                let row = &w[(panel * PANEL + j) * k..(panel * PANEL + j + 1) * k];
                for (p, &v) in row.iter().enumerate() {
                    data[base + p * PANEL + j] = super::mathf::f16_bits(v);
                }
            }
        }
        Self { n, k, data }
    }

    pub fn n(&self) -> usize {
        self.n
    }

    pub fn k(&self) -> usize {
        self.k
    }

    fn panel(&self, i: usize) -> &[u16] {
        &self.data[i * self.k * PANEL..(i + 1) * self.k * PANEL]
    }
}

/// `out[m×n] = x[m×k] · wᵀ + bias[n]`.
pub fn linear_packed(
    x: &[f32],
    w: &PackedF16,
    bias: Option<&[f32]>,
    m: usize,
    out: &mut [f32],
    threads: Threads,
) {
    let (n, k) = (w.n, w.k);
    assert_eq!(x.len(), m * k, "linear_packed: x is not m×k");
    assert_eq!(out.len(), m * n, "linear_packed: out is not m×n");
    if let Some(b) = bias {
        assert_eq!(b.len(), n, "linear_packed: bias is not n");
    }
    if m == 0 || n == 0 {
        return;
    }
    #[derive(Clone, Copy)]
    struct OutPtr(*mut f32);
    // SAFETY: each task writes only its own rows × columns of out.
    unsafe impl Send for OutPtr {}
    unsafe impl Sync for OutPtr {}
    let ptr = OutPtr(out.as_mut_ptr());
    let panels = n / PANEL;
    let col_tasks = panels.div_ceil(TASK_PANELS);
    let row_tasks = m.div_ceil(TASK_ROWS);
    let task = |t: usize| {
        let ptr = ptr;
        let (rt, ct) = (t / col_tasks, t % col_tasks);
        let (r0, r1) = (rt * TASK_ROWS, ((rt + 1) * TASK_ROWS).min(m));
        let (p0, p1) = (ct * TASK_PANELS, ((ct + 1) * TASK_PANELS).min(panels));
        let mut p = p0;
        while p < p1 {
            let np = (p1 - p).min(NP_MAX);
            let mut r = r0;
            while r < r1 {
                let rows = (r1 - r).min(MR_MAX);
                // SAFETY: rows r..r+rows ≤ m and columns p·16..(p+np)·16 ≤ n
                // lie inside out (m×n); this task alone writes them.
                unsafe { block(x, w, bias, r, rows, p, np, ptr.0) };
                r += rows;
            }
            p += np;
        }
    };
    let tasks = row_tasks * col_tasks;
    match threads {
        Threads::All if m * n * k >= 1 << 20 => super::Team::global().run(tasks, &task),
        _ => (0..tasks).for_each(task),
    }
}

/// Rows and panels of the register block: 6 × 4 accumulators of 16 lanes
/// (24 of the 32 vector registers), 4 widened weight vectors and a broadcast.
const MR_MAX: usize = 6;
const NP_MAX: usize = 4;

/// Output rows `r..r+rows` (≤ 6) × panels `p..p+np` (≤ 4).
///
/// # Safety
/// `out` must point to an m×n matrix that holds those rows and columns.
#[allow(clippy::too_many_arguments)]
unsafe fn block(
    x: &[f32],
    w: &PackedF16,
    bias: Option<&[f32]>,
    r: usize,
    rows: usize,
    p: usize,
    np: usize,
    out: *mut f32,
) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            macro_rules! go {
                ($($mr:literal)*) => {
                    match (rows, np) {
                        $(($mr, 4) => return block_avx512::<$mr, 4>(x, w, bias, r, p, out),
                          ($mr, 3) => return block_avx512::<$mr, 3>(x, w, bias, r, p, out),
                          ($mr, 2) => return block_avx512::<$mr, 2>(x, w, bias, r, p, out),
                          ($mr, 1) => return block_avx512::<$mr, 1>(x, w, bias, r, p, out),)*
                        _ => {}
                    }
                };
            }
            go!(1 2 3 4 5 6);
        }
        if is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
        {
            // 16 registers: up to 4 rows × one panel (two 8-lane halves).
            for q in p..p + np {
                let mut i = r;
                while i < r + rows {
                    let mr = (r + rows - i).min(4);
                    match mr {
                        4 => block_avx2::<4>(x, w, bias, i, q, out),
                        3 => block_avx2::<3>(x, w, bias, i, q, out),
                        2 => block_avx2::<2>(x, w, bias, i, q, out),
                        _ => block_avx2::<1>(x, w, bias, i, q, out),
                    }
                    i += mr;
                }
            }
            return;
        }
    }
    block_generic(x, w, bias, r, rows, p, np, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn block_avx2<const MR: usize>(
    x: &[f32],
    w: &PackedF16,
    bias: Option<&[f32]>,
    r: usize,
    p: usize,
    out: *mut f32,
) {
    use std::arch::x86_64::*;
    let (n, k) = (w.n, w.k);
    let xs = x.as_ptr().add(r * k);
    let panel = w.panel(p).as_ptr();
    let mut acc = [[_mm256_setzero_ps(); 2]; MR];
    for s in 0..k {
        let lo = _mm256_cvtph_ps(_mm_loadu_si128(panel.add(s * PANEL) as *const __m128i));
        let hi = _mm256_cvtph_ps(_mm_loadu_si128(panel.add(s * PANEL + 8) as *const __m128i));
        for (i, row) in acc.iter_mut().enumerate() {
            let xv = _mm256_set1_ps(*xs.add(i * k + s));
            row[0] = _mm256_fmadd_ps(xv, lo, row[0]);
            row[1] = _mm256_fmadd_ps(xv, hi, row[1]);
        }
    }
    for (i, row) in acc.iter().enumerate() {
        for (half, v) in row.iter().enumerate() {
            let col = p * PANEL + half * 8;
            let mut v = *v;
            if let Some(b) = bias {
                v = _mm256_add_ps(v, _mm256_loadu_ps(b.as_ptr().add(col)));
            }
            _mm256_storeu_ps(out.add((r + i) * n + col), v);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn block_avx512<const MR: usize, const NP: usize>(
    x: &[f32],
    w: &PackedF16,
    bias: Option<&[f32]>,
    r: usize,
    p: usize,
    out: *mut f32,
) {
    use std::arch::x86_64::*;
    let (n, k) = (w.n, w.k);
    let xs = x.as_ptr().add(r * k);
    let panels: [*const u16; NP] = std::array::from_fn(|q| w.panel(p + q).as_ptr());
    let mut acc = [[_mm512_setzero_ps(); NP]; MR];
    for s in 0..k {
        let wv: [__m512; NP] = std::array::from_fn(|q| {
            _mm512_cvtph_ps(_mm256_loadu_si256(
                panels[q].add(s * PANEL) as *const __m256i
            ))
        });
        for (i, row) in acc.iter_mut().enumerate() {
            let xv = _mm512_set1_ps(*xs.add(i * k + s));
            for q in 0..NP {
                row[q] = _mm512_fmadd_ps(xv, wv[q], row[q]);
            }
        }
    }
    for (i, row) in acc.iter().enumerate() {
        for q in 0..NP {
            let col = (p + q) * PANEL;
            let mut v = row[q];
            if let Some(b) = bias {
                v = _mm512_add_ps(v, _mm512_loadu_ps(b.as_ptr().add(col)));
            }
            _mm512_storeu_ps(out.add((r + i) * n + col), v);
        }
    }
}

/// Portable version of the block.
#[allow(clippy::too_many_arguments)]
unsafe fn block_generic(
    x: &[f32],
    w: &PackedF16,
    bias: Option<&[f32]>,
    r: usize,
    rows: usize,
    p: usize,
    np: usize,
    out: *mut f32,
) {
    let (n, k) = (w.n, w.k);
    for q in 0..np {
        let panel = w.panel(p + q);
        for i in r..r + rows {
            let xi = &x[i * k..(i + 1) * k];
            for j in 0..PANEL {
                let col = (p + q) * PANEL + j;
                let mut s = bias.map_or(0.0, |b| b[col]);
                for (t, &xv) in xi.iter().enumerate() {
                    s += xv * super::mathf::f16_value(panel[t * PANEL + j]);
                }
                *out.add(i * n + col) = s;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::testutil::random;

    #[test]
    fn packed_linear_matches_float64_on_the_rounded_weights() {
        for &(m, k, n) in &[
            (1, 384, 384),
            (3, 17, 48),
            (8, 64, 32),
            (9, 384, 1152),
            (16, 1536, 384),
            (70, 100, 80),
            (130, 33, 16),
        ] {
            let x = random(m * k, 1);
            let w = random(n * k, 2);
            let b = random(n, 3);
            let packed = PackedF16::pack(&w, n, k);
            for threads in [Threads::One, Threads::All] {
                let mut out = vec![f32::NAN; m * n];
                linear_packed(&x, &packed, Some(&b), m, &mut out, threads);
                let mut worst = 0f64;
                for i in 0..m {
                    for j in 0..n {
                        let mut s = f64::from(b[j]);
                        for t in 0..k {
                            let wr = f64::from(crate::cpu::f16_value(crate::cpu::f16_bits(
                                w[j * k + t],
                            )));
                            s += f64::from(x[i * k + t]) * wr;
                        }
                        worst = worst.max((s - f64::from(out[i * n + j])).abs() / (1.0 + s.abs()));
                    }
                }
                assert!(
                    worst < 1e-4,
                    "m={m} k={k} n={n} {threads:?}: worst relative error {worst}"
                );
            }
        }
    }

    #[test]
    fn the_avx2_and_portable_blocks_agree_with_the_dispatched_kernel() {
        let (m, k, n) = (7, 100, 48);
        let (x, w, b) = (random(m * k, 4), random(n * k, 5), random(n, 6));
        let packed = PackedF16::pack(&w, n, k);
        let mut want = vec![0f32; m * n];
        linear_packed(&x, &packed, Some(&b), m, &mut want, Threads::One);
        let mut generic = vec![f32::NAN; m * n];
        // SAFETY: every block lies inside the m×n output.
        unsafe {
            block_generic(
                &x,
                &packed,
                Some(&b),
                0,
                m,
                0,
                n / PANEL,
                generic.as_mut_ptr(),
            )
        };
        let close = |got: &[f32]| {
            got.iter()
                .zip(&want)
                .all(|(g, w)| (g - w).abs() <= 1e-4 * (1.0 + w.abs()))
        };
        assert!(close(&generic), "portable block");
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
        {
            let mut avx2 = vec![f32::NAN; m * n];
            for q in 0..n / PANEL {
                // SAFETY: the CPU has AVX2, FMA and F16C; rows 0..4 and 4..7 of panel q lie inside out.
                unsafe {
                    block_avx2::<4>(&x, &packed, Some(&b), 0, q, avx2.as_mut_ptr());
                    block_avx2::<3>(&x, &packed, Some(&b), 4, q, avx2.as_mut_ptr());
                }
            }
            assert!(close(&avx2), "AVX2 block");
        }
    }
}
