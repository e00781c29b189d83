//! `y = x·Wᵀ + b` in int8: weights quantised once at load, per output
//! channel (`w ≈ sw[j]·qw`, `qw` in −127..=127), activations per input row
//! at run time and asymmetrically (`x ≈ sx[i]·(qx − zx[i])`, `qx` in
//! −128..=127), and every dot product summed exactly in 32-bit integers, so
//! `y[i][j] = sx[i]·sw[j]·(Σ qx·qw − zx[i]·Σ qw) + b[j]`.
//!
//! The weights are packed in panels of 16 output columns, each stored as
//! groups of 4 consecutive k values per column (`[k/4][16][4]`): one 64-byte
//! load is 4 k steps of 16 columns, which is exactly what `vpdpbusd` takes.
//! Three kernels, chosen at run time, give identical integer sums:
//! - AVX-512 VNNI: `vpdpbusd` multiplies unsigned by signed bytes, so the
//!   activations go in offset by 128 (`qx + 128` as u8) and `128·Σqw` per
//!   column (kept at packing) is subtracted afterwards; 8 rows × 2 panels of
//!   accumulators stay in registers;
//! - AVX2: `vpsignb` moves each activation's sign onto the weight, so
//!   `vpmaddubsw` multiplies `|qx|` by the signed weight (at most
//!   2·128·127, no saturation) and `vpmaddwd` sums the pairs;
//! - portable Rust.

use super::linear::Threads;
use std::sync::OnceLock;

/// Output columns per panel.
const PANEL: usize = 16;
/// k values per group.
const KG: usize = 4;
/// Rows per task (a task's activations stay in cache).
const TASK_ROWS: usize = 64;
/// Panels per task.
const TASK_PANELS: usize = 4;
/// Rows and panels of the register block (16 accumulators of 16 lanes).
const MR: usize = 8;
const NP: usize = 2;

/// An n×k weight matrix (rows = output features) in int8, packed.
#[derive(Debug, Clone)]
pub struct PackedI8 {
    n: usize,
    k: usize,
    /// k rounded up to a multiple of 4 (the padding is zero).
    kp: usize,
    /// `n / 16` panels of `kp / 4` groups of 16 columns × 4 values.
    data: Vec<i8>,
    /// Per output column: its scale.
    scale: Vec<f32>,
    /// Per output column: 128·Σ qw (the VNNI kernel's offset).
    offset: Vec<i32>,
    /// Per output column: Σ qw (for the activations' zero points).
    colsum: Vec<i32>,
    /// Per input channel, when smoothed: the factor `1/s[p]` applied to the
    /// activations as they are quantised (the weights' column p holds `s[p]`).
    smooth: Option<Vec<f32>>,
}

impl PackedI8 {
    /// Quantises `w` (n×k, row-major) per row. `n` must be a multiple of 16.
    pub fn quantize(w: &[f32], n: usize, k: usize) -> Self {
        Self::quantize_inner(w, n, k, None)
    }

    /// Quantises `w` with the activations' outliers moved into the weights
    /// (smoothing, as SmoothQuant does): `act_amax[p]` is the largest
    /// |activation| seen on input channel p (from a calibration pass); column
    /// p of the weights is multiplied by `s[p] = act_amax[p]^α / w_amax[p]^(1-α)`
    /// and each activation divided by it at run time, which leaves `x·Wᵀ`
    /// unchanged and both sides with a flatter range for int8.
    pub fn quantize_smoothed(w: &[f32], n: usize, k: usize, act_amax: &[f32], alpha: f32) -> Self {
        assert_eq!(w.len(), n * k, "PackedI8: w is not n×k");
        assert_eq!(act_amax.len(), k, "PackedI8: act_amax is not k");
        let mut w_amax = vec![0f32; k];
        for row in w.chunks_exact(k) {
            for (m, v) in w_amax.iter_mut().zip(row) {
                *m = m.max(v.abs());
            }
        }
        let s: Vec<f32> = act_amax
            .iter()
            .zip(&w_amax)
            .map(|(&a, &wm)| {
                if a > 0.0 && wm > 0.0 {
                    (a.powf(alpha) / wm.powf(1.0 - alpha)).clamp(1e-4, 1e4)
                } else {
                    1.0
                }
            })
            .collect();
        let scaled: Vec<f32> = w
            .chunks_exact(k)
            .flat_map(|row| row.iter().zip(&s).map(|(v, s)| v * s))
            .collect();
        Self::quantize_inner(&scaled, n, k, Some(s.iter().map(|s| 1.0 / s).collect()))
    }

    fn quantize_inner(w: &[f32], n: usize, k: usize, smooth: Option<Vec<f32>>) -> Self {
        assert_eq!(w.len(), n * k, "PackedI8: w is not n×k");
        assert_eq!(n % PANEL, 0, "PackedI8: n must be a multiple of {PANEL}");
        let kp = k.div_ceil(KG) * KG;
        let mut data = vec![0i8; n * kp];
        let (mut scale, mut offset, mut colsum) = (vec![0f32; n], vec![0i32; n], vec![0i32; n]);
        for j in 0..n {
            let row = &w[j * k..(j + 1) * k];
            let amax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
            let s = if amax > 0.0 { amax / 127.0 } else { 1.0 };
            scale[j] = s;
            let (panel, c) = (j / PANEL, j % PANEL);
            let mut sum = 0i32;
            for (p, &v) in row.iter().enumerate() {
                let q = (v / s).round().clamp(-127.0, 127.0) as i8;
                sum += i32::from(q);
                data[Self::at(kp, panel, p / KG, c, p % KG)] = q;
            }
            offset[j] = 128 * sum;
            colsum[j] = sum;
        }
        Self {
            n,
            k,
            kp,
            data,
            scale,
            offset,
            colsum,
            smooth,
        }
    }

    fn at(kp: usize, panel: usize, group: usize, col: usize, t: usize) -> usize {
        ((panel * (kp / KG) + group) * PANEL + col) * KG + t
    }

    pub fn n(&self) -> usize {
        self.n
    }

    pub fn k(&self) -> usize {
        self.k
    }

    /// Bytes the weights take (values and per-column scales).
    pub fn bytes(&self) -> usize {
        self.data.len() + self.scale.len() * 8
    }

    /// The weights as they are used (n×k, row-major).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.n * self.k];
        for j in 0..self.n {
            for p in 0..self.k {
                let q = self.data[Self::at(self.kp, j / PANEL, p / KG, j % PANEL, p % KG)];
                let inv = self.smooth.as_ref().map_or(1.0, |s| s[p]);
                out[j * self.k + p] = self.scale[j] * f32::from(q) * inv;
            }
        }
        out
    }

    /// k rounded up to a multiple of 4.
    pub fn kp(&self) -> usize {
        self.kp
    }

    /// The per-channel scales.
    pub fn scales(&self) -> &[f32] {
        &self.scale
    }

    /// Per output channel: Σ qw (the zero points' correction).
    pub fn colsums(&self) -> &[i32] {
        &self.colsum
    }

    /// The per-input-channel factors the activations are multiplied by
    /// before they are quantised, if the weights were smoothed.
    pub fn smoothing(&self) -> Option<&[f32]> {
        self.smooth.as_deref()
    }

    /// The int8 weights row-major, n × kp, zero-padded (the GPU's layout).
    pub fn rows(&self) -> Vec<i8> {
        let mut out = vec![0i8; self.n * self.kp];
        for j in 0..self.n {
            for p in 0..self.kp {
                out[j * self.kp + p] =
                    self.data[Self::at(self.kp, j / PANEL, p / KG, j % PANEL, p % KG)];
            }
        }
        out
    }

    fn panel(&self, i: usize) -> &[i8] {
        let len = self.kp * PANEL;
        &self.data[i * len..(i + 1) * len]
    }
}

/// Activations quantised per row, asymmetrically (`x ≈ s·(q − z)` with `q`
/// in −128..=127, so a row's whole range from its minimum to its maximum gets
/// the 256 levels), zero-padded to `kp`: signed bytes, or for the VNNI kernel
/// the same offset by 128 as unsigned bytes.
struct Rows {
    kp: usize,
    q: Vec<u8>,
    scale: Vec<f32>,
    zero: Vec<i32>,
}

/// Pointer shared by tasks that write disjoint parts.
#[derive(Clone, Copy)]
struct SharedPtr<T>(*mut T);
// SAFETY: every task writes only its own elements (see each use).
unsafe impl<T> Send for SharedPtr<T> {}
unsafe impl<T> Sync for SharedPtr<T> {}

fn quantize_rows(
    kernel: I8Kernel,
    x: &[f32],
    m: usize,
    k: usize,
    kp: usize,
    smooth: Option<&[f32]>,
    threads: Threads,
) -> Rows {
    // The VNNI kernel takes the activations offset by 128, as unsigned bytes.
    let offset = kernel == I8Kernel::Avx512Vnni;
    let mut q = vec![if offset { 0x80u8 } else { 0 }; m * kp];
    let (mut scale, mut zero) = (vec![0f32; m], vec![0i32; m]);
    let flip = if offset { 0x80u8 } else { 0 };
    let (qp, sp, zp) = (
        SharedPtr(q.as_mut_ptr()),
        SharedPtr(scale.as_mut_ptr()),
        SharedPtr(zero.as_mut_ptr()),
    );
    let task = |t: usize| {
        let (qp, sp, zp) = (qp, sp, zp);
        let mut smoothed = vec![0f32; if smooth.is_some() { k } else { 0 }];
        for i in t * TASK_ROWS..((t + 1) * TASK_ROWS).min(m) {
            let mut row = &x[i * k..(i + 1) * k];
            if let Some(f) = smooth {
                for ((d, v), f) in smoothed.iter_mut().zip(row).zip(f) {
                    *d = v * f;
                }
                row = &smoothed;
            }
            // SAFETY: row i < m of q (m × kp) and of scale (m) belongs to
            // this task alone.
            let dst = unsafe { std::slice::from_raw_parts_mut(qp.0.add(i * kp), k) };
            let (s, z) = quantize_row(kernel, row, dst, flip);
            unsafe {
                *sp.0.add(i) = s;
                *zp.0.add(i) = z;
            }
        }
    };
    let tasks = m.div_ceil(TASK_ROWS);
    match threads {
        Threads::All if m * k >= 1 << 16 => super::Team::global().run(tasks, &task),
        _ => (0..tasks).for_each(task),
    }
    Rows { kp, q, scale, zero }
}

/// Quantises one row into `dst` (`q` as bytes, xor `flip`) and returns its
/// scale and zero point. Every path rounds half to even and saturates, so
/// all give the same bytes.
fn quantize_row(kernel: I8Kernel, row: &[f32], dst: &mut [u8], flip: u8) -> (f32, i32) {
    #[cfg(target_arch = "x86_64")]
    {
        if kernel == I8Kernel::Avx512Vnni {
            // SAFETY: the caller checked that the CPU has AVX-512.
            return unsafe { x86::quantize_row_avx512(row, dst, flip) };
        }
        if kernel == I8Kernel::Avx2 {
            // SAFETY: the caller checked that the CPU has AVX2.
            return unsafe { x86::quantize_row_avx2(row, dst, flip) };
        }
    }
    let (lo, hi) = row
        .iter()
        .fold((0f32, 0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let (s, z) = row_params(lo, hi);
    quantize_tail(row, dst, 1.0 / s, z, flip);
    (s, z)
}

/// Scale and zero point of a row whose values lie in `lo..=hi`: the range
/// (widened to hold 0) maps onto −128..=127.
fn row_params(lo: f32, hi: f32) -> (f32, i32) {
    let (lo, hi) = (lo.min(0.0), hi.max(0.0));
    if hi > lo {
        let s = (hi - lo) / 255.0;
        let z = (-128.0 - (lo / s).round_ties_even()).clamp(-128.0, 127.0) as i32;
        (s, z)
    } else {
        (1.0, 0)
    }
}

/// The scalar quantisation (also the vector paths' tail).
fn quantize_tail(row: &[f32], dst: &mut [u8], inv: f32, z: i32, flip: u8) {
    for (d, &v) in dst.iter_mut().zip(row) {
        let q = ((v * inv).round_ties_even() as i32 + z).clamp(-128, 127);
        *d = (q as i8 as u8) ^ flip;
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum I8Kernel {
    Avx512Vnni,
    Avx2,
    Portable,
}

/// The kernel this CPU runs (detected once).
pub fn i8_kernel() -> I8Kernel {
    static K: OnceLock<I8Kernel> = OnceLock::new();
    *K.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vnni")
            {
                return I8Kernel::Avx512Vnni;
            }
            if is_x86_feature_detected!("avx2") {
                return I8Kernel::Avx2;
            }
        }
        I8Kernel::Portable
    })
}

/// Every kernel this CPU can run (tests compare them).
pub fn i8_kernels() -> Vec<I8Kernel> {
    let best = i8_kernel();
    [I8Kernel::Avx512Vnni, I8Kernel::Avx2, I8Kernel::Portable]
        .into_iter()
        .filter(|k| {
            matches!(
                (best, k),
                (_, I8Kernel::Portable)
                    | (I8Kernel::Avx512Vnni, _)
                    | (I8Kernel::Avx2, I8Kernel::Avx2)
            )
        })
        .collect()
}

/// `out[m×n] = x[m×k] · Wᵀ + bias[n]` on this CPU's best kernel.
pub fn linear_i8(
    x: &[f32],
    w: &PackedI8,
    bias: Option<&[f32]>,
    m: usize,
    out: &mut [f32],
    threads: Threads,
) {
    linear_i8_with(i8_kernel(), x, w, bias, m, out, threads)
}

/// [`linear_i8`] on a chosen kernel (one this CPU has: see [`i8_kernels`]).
pub fn linear_i8_with(
    kernel: I8Kernel,
    x: &[f32],
    w: &PackedI8,
    bias: Option<&[f32]>,
    m: usize,
    out: &mut [f32],
    threads: Threads,
) {
    let (n, k) = (w.n, w.k);
    assert_eq!(x.len(), m * k, "linear_i8: x is not m×k");
    assert_eq!(out.len(), m * n, "linear_i8: out is not m×n");
    if let Some(b) = bias {
        assert_eq!(b.len(), n, "linear_i8: bias is not n");
    }
    assert!(
        i8_kernels().contains(&kernel),
        "linear_i8: this CPU cannot run {kernel:?}"
    );
    if m == 0 || n == 0 {
        return;
    }
    let rows = quantize_rows(kernel, x, m, k, w.kp, w.smooth.as_deref(), threads);
    let ptr = SharedPtr(out.as_mut_ptr());
    let panels = n / PANEL;
    let col_tasks = panels.div_ceil(TASK_PANELS);
    let row_tasks = m.div_ceil(TASK_ROWS);
    let task = |t: usize| {
        let ptr = ptr;
        let (rt, ct) = (t / col_tasks, t % col_tasks);
        let (r0, r1) = (rt * TASK_ROWS, ((rt + 1) * TASK_ROWS).min(m));
        let (p0, p1) = (ct * TASK_PANELS, ((ct + 1) * TASK_PANELS).min(panels));
        let mut sums = [[0i32; PANEL * NP]; MR];
        let mut p = p0;
        while p < p1 {
            let np = (p1 - p).min(NP);
            let cols = np * PANEL;
            let mut r = r0;
            while r < r1 {
                let mr = (r1 - r).min(MR);
                block(kernel, &rows, w, r, mr, p, np, &mut sums);
                for (i, s) in sums.iter_mut().enumerate().take(mr) {
                    let (sx, z) = (rows.scale[r + i], rows.zero[r + i]);
                    // Σ (q − z)·qw = Σ q·qw − z·Σ qw.
                    for (v, c) in s.iter_mut().zip(&w.colsum[p * PANEL..p * PANEL + cols]) {
                        *v -= z * c;
                    }
                    let j0 = p * PANEL;
                    // SAFETY: row r + i < m, columns j0..j0 + cols ≤ n: inside
                    // out (m×n), and only this task writes them.
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut(ptr.0.add((r + i) * n + j0), cols)
                    };
                    let sw = &w.scale[j0..j0 + cols];
                    match bias {
                        Some(b) => {
                            for (((d, &v), &sw), &b) in dst
                                .iter_mut()
                                .zip(&s[..cols])
                                .zip(sw)
                                .zip(&b[j0..j0 + cols])
                            {
                                *d = sx * sw * v as f32 + b;
                            }
                        }
                        None => {
                            for ((d, &v), &sw) in dst.iter_mut().zip(&s[..cols]).zip(sw) {
                                *d = sx * sw * v as f32;
                            }
                        }
                    }
                }
                r += mr;
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

/// Exact `Σ qx·qw` of rows `r..r+mr` against panels `p..p+np`, into `sums`.
#[allow(clippy::too_many_arguments)]
fn block(
    kernel: I8Kernel,
    rows: &Rows,
    w: &PackedI8,
    r: usize,
    mr: usize,
    p: usize,
    np: usize,
    sums: &mut [[i32; PANEL * NP]; MR],
) {
    let kp = rows.kp;
    let x = &rows.q[r * kp..(r + mr) * kp];
    match kernel {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: linear_i8_with checked that this CPU has the features;
        // every load is inside `x` (mr × kp) and the panels (kp × 16 each).
        I8Kernel::Avx512Vnni => unsafe {
            x86::block_vnni(
                x,
                kp,
                mr,
                w.panel(p),
                (np == 2).then(|| w.panel(p + 1)),
                sums,
            );
            for s in sums.iter_mut().take(mr) {
                for (v, o) in s.iter_mut().zip(&w.offset[p * PANEL..(p + np) * PANEL]) {
                    *v -= o;
                }
            }
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, for AVX2.
        I8Kernel::Avx2 => unsafe {
            for q in 0..np {
                x86::block_avx2(x, kp, mr, w.panel(p + q), q * PANEL, sums)
            }
        },
        _ => {
            for q in 0..np {
                let panel = w.panel(p + q);
                for (i, s) in sums.iter_mut().enumerate().take(mr) {
                    let xi = &x[i * kp..(i + 1) * kp];
                    let s = &mut s[q * PANEL..(q + 1) * PANEL];
                    s.fill(0);
                    for g in 0..kp / KG {
                        let wg = &panel[g * PANEL * KG..(g + 1) * PANEL * KG];
                        for (c, acc) in s.iter_mut().enumerate() {
                            for t in 0..KG {
                                *acc += i32::from(xi[g * KG + t] as i8) * i32::from(wg[c * KG + t]);
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{KG, MR, NP, PANEL};
    use std::arch::x86_64::*;

    /// [`super::quantize_row`] with AVX-512: 16 values per step.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn quantize_row_avx512(row: &[f32], dst: &mut [u8], flip: u8) -> (f32, i32) {
        let k = row.len().min(dst.len());
        let body = k / 16 * 16;
        let (mut lo, mut hi) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        for i in (0..body).step_by(16) {
            let v = _mm512_loadu_ps(row.as_ptr().add(i));
            lo = _mm512_min_ps(lo, v);
            hi = _mm512_max_ps(hi, v);
        }
        let (lo, hi) = row[body..k].iter().fold(
            (_mm512_reduce_min_ps(lo), _mm512_reduce_max_ps(hi)),
            |(lo, hi), &v| (lo.min(v), hi.max(v)),
        );
        let (s, z) = super::row_params(lo, hi);
        let inv = 1.0 / s;
        let (vinv, vz, fl) = (
            _mm512_set1_ps(inv),
            _mm512_set1_epi32(z),
            _mm_set1_epi8(flip as i8),
        );
        for i in (0..body).step_by(16) {
            // Round to nearest even (the default mode), add z, saturate to i8.
            let q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(row.as_ptr().add(i)), vinv));
            let b = _mm_xor_si128(_mm512_cvtsepi32_epi8(_mm512_add_epi32(q, vz)), fl);
            _mm_storeu_si128(dst.as_mut_ptr().add(i) as *mut __m128i, b);
        }
        super::quantize_tail(&row[body..k], &mut dst[body..k], inv, z, flip);
        (s, z)
    }

    /// [`super::quantize_row`] with AVX2: 32 values per step.
    #[target_feature(enable = "avx2")]
    pub unsafe fn quantize_row_avx2(row: &[f32], dst: &mut [u8], flip: u8) -> (f32, i32) {
        let k = row.len().min(dst.len());
        let body = k / 32 * 32;
        let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        for i in (0..body).step_by(8) {
            let v = _mm256_loadu_ps(row.as_ptr().add(i));
            lo = _mm256_min_ps(lo, v);
            hi = _mm256_max_ps(hi, v);
        }
        let (mut l, mut h) = ([0f32; 8], [0f32; 8]);
        _mm256_storeu_ps(l.as_mut_ptr(), lo);
        _mm256_storeu_ps(h.as_mut_ptr(), hi);
        let lo = l.iter().chain(&row[body..k]).fold(0f32, |a, &v| a.min(v));
        let hi = h.iter().chain(&row[body..k]).fold(0f32, |a, &v| a.max(v));
        let (s, z) = super::row_params(lo, hi);
        let inv = 1.0 / s;
        let (vinv, vz, fl) = (
            _mm256_set1_ps(inv),
            _mm256_set1_epi32(z),
            _mm256_set1_epi8(flip as i8),
        );
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        for i in (0..body).step_by(32) {
            let q = |j: usize| {
                let v = _mm256_mul_ps(_mm256_loadu_ps(row.as_ptr().add(i + j)), vinv);
                _mm256_add_epi32(_mm256_cvtps_epi32(v), vz)
            };
            let w01 = _mm256_packs_epi32(q(0), q(8));
            let w23 = _mm256_packs_epi32(q(16), q(24));
            // packs works per 128-bit lane: put the 4-byte groups back in order.
            let b = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(w01, w23), order);
            _mm256_storeu_si256(
                dst.as_mut_ptr().add(i) as *mut __m256i,
                _mm256_xor_si256(b, fl),
            );
        }
        super::quantize_tail(&row[body..k], &mut dst[body..k], inv, z, flip);
        (s, z)
    }

    /// `sums[i][c] = Σ x[i]·panel[c]` for one or two panels, with `x` as
    /// unsigned bytes offset by 128 (the caller removes the offset).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn block_vnni(
        x: &[u8],
        kp: usize,
        mr: usize,
        p0: &[i8],
        p1: Option<&[i8]>,
        sums: &mut [[i32; PANEL * NP]; MR],
    ) {
        debug_assert!(x.len() == mr * kp && p0.len() == kp * PANEL);
        let mut a0 = [_mm512_setzero_si512(); MR];
        let mut a1 = [_mm512_setzero_si512(); MR];
        match p1 {
            Some(p1) => {
                for g in 0..kp / KG {
                    let w0 = _mm512_loadu_si512(p0.as_ptr().add(g * PANEL * KG) as *const _);
                    let w1 = _mm512_loadu_si512(p1.as_ptr().add(g * PANEL * KG) as *const _);
                    for i in 0..mr {
                        let xi = (x.as_ptr().add(i * kp + g * KG) as *const i32).read_unaligned();
                        let xv = _mm512_set1_epi32(xi);
                        a0[i] = _mm512_dpbusd_epi32(a0[i], xv, w0);
                        a1[i] = _mm512_dpbusd_epi32(a1[i], xv, w1);
                    }
                }
                for i in 0..mr {
                    _mm512_storeu_si512(sums[i].as_mut_ptr() as *mut _, a0[i]);
                    _mm512_storeu_si512(sums[i].as_mut_ptr().add(PANEL) as *mut _, a1[i]);
                }
            }
            None => {
                for g in 0..kp / KG {
                    let w0 = _mm512_loadu_si512(p0.as_ptr().add(g * PANEL * KG) as *const _);
                    for i in 0..mr {
                        let xi = (x.as_ptr().add(i * kp + g * KG) as *const i32).read_unaligned();
                        a0[i] = _mm512_dpbusd_epi32(a0[i], _mm512_set1_epi32(xi), w0);
                    }
                }
                for i in 0..mr {
                    _mm512_storeu_si512(sums[i].as_mut_ptr() as *mut _, a0[i]);
                }
            }
        }
    }

    /// `sums[i][at..at + 16] = Σ x[i]·panel[c]` with signed bytes.
    #[target_feature(enable = "avx2")]
    pub unsafe fn block_avx2(
        x: &[u8],
        kp: usize,
        mr: usize,
        panel: &[i8],
        at: usize,
        sums: &mut [[i32; PANEL * NP]; MR],
    ) {
        debug_assert!(x.len() == mr * kp && panel.len() == kp * PANEL);
        let ones = _mm256_set1_epi16(1);
        let mut lo = [_mm256_setzero_si256(); MR];
        let mut hi = [_mm256_setzero_si256(); MR];
        for g in 0..kp / KG {
            let base = panel.as_ptr().add(g * PANEL * KG);
            let w0 = _mm256_loadu_si256(base as *const __m256i);
            let w1 = _mm256_loadu_si256(base.add(32) as *const __m256i);
            for i in 0..mr {
                let xi = (x.as_ptr().add(i * kp + g * KG) as *const i32).read_unaligned();
                let xv = _mm256_set1_epi32(xi);
                let ax = _mm256_abs_epi8(xv);
                let q0 = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(w0, xv));
                let q1 = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(w1, xv));
                lo[i] = _mm256_add_epi32(lo[i], _mm256_madd_epi16(q0, ones));
                hi[i] = _mm256_add_epi32(hi[i], _mm256_madd_epi16(q1, ones));
            }
        }
        for i in 0..mr {
            _mm256_storeu_si256(sums[i].as_mut_ptr().add(at) as *mut __m256i, lo[i]);
            _mm256_storeu_si256(sums[i].as_mut_ptr().add(at + 8) as *mut __m256i, hi[i]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::testutil::{assert_close, random};

    fn reference(x: &[f32], w: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut out = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                let dot: f64 = (0..k)
                    .map(|p| f64::from(x[i * k + p]) * f64::from(w[j * k + p]))
                    .sum();
                out[i * n + j] = dot + f64::from(b[j]);
            }
        }
        out
    }

    #[test]
    fn every_kernel_gives_the_same_sums_and_they_match_f32_within_int8_error() {
        // MiniLM's shapes, odd row counts, and k values that leave tails for
        // the 4-, 16- and 32-wide steps.
        for (m, k, n) in [
            (1, 384, 1152),
            (13, 384, 384),
            (70, 1536, 384),
            (9, 30, 32),
            (5, 77, 48),
        ] {
            // Rows centred on 0 and rows mostly positive (as after GELU),
            // whose zero points differ.
            let mut x = random(m * k, 1);
            for v in x.iter_mut().skip(m * k / 2) {
                *v = v.abs() * 2.0 - 0.1;
            }
            let w = random(n * k, 2);
            let b = random(n, 3);
            let packed = PackedI8::quantize(&w, n, k);
            let mut first: Option<Vec<f32>> = None;
            for kernel in i8_kernels() {
                for threads in [Threads::One, Threads::All] {
                    let mut out = vec![0f32; m * n];
                    linear_i8_with(kernel, &x, &packed, Some(&b), m, &mut out, threads);
                    match &first {
                        None => first = Some(out),
                        Some(f) => assert_eq!(f, &out, "{kernel:?} {threads:?} at {m}×{k}×{n}"),
                    }
                }
            }
            let got = first.unwrap();
            // Exact against the dequantised weights and activations' error
            // bound; within 2 % of the scale against f32.
            assert_close(&got, &reference(&x, &w, &b, m, k, n), 0.02, "int8 vs f32");
        }
    }

    #[test]
    fn the_weights_round_trip_within_half_a_step_per_channel() {
        let (n, k) = (32, 50);
        let mut w = random(n * k, 4);
        // One channel much larger than the rest keeps its own scale.
        for v in &mut w[..k] {
            *v *= 100.0;
        }
        let p = PackedI8::quantize(&w, n, k);
        let d = p.dequantize();
        for j in 0..n {
            let amax = w[j * k..(j + 1) * k]
                .iter()
                .fold(0f32, |a, v| a.max(v.abs()));
            for q in 0..k {
                let err = (d[j * k + q] - w[j * k + q]).abs();
                assert!(err <= amax / 127.0 * 0.5 + 1e-6, "channel {j}: {err}");
            }
        }
        assert!(p.bytes() < n * k * 2, "int8 is smaller than f16");
    }

    #[test]
    fn zero_rows_and_zero_weights_give_the_bias() {
        let (m, k, n) = (3, 8, 16);
        let x = vec![0f32; m * k];
        let w = vec![0f32; n * k];
        let b: Vec<f32> = (0..n).map(|j| j as f32).collect();
        let p = PackedI8::quantize(&w, n, k);
        for kernel in i8_kernels() {
            let mut out = vec![1f32; m * n];
            linear_i8_with(kernel, &x, &p, Some(&b), m, &mut out, Threads::One);
            for i in 0..m {
                assert_eq!(&out[i * n..(i + 1) * n], &b[..], "{kernel:?}");
            }
        }
    }
}
