//! Linear layers with block-quantised weights (GGUF Q4_1 and Q8_0), kept
//! quantised in memory (5 or 8.5 bits per weight instead of 32), which is what
//! decides decode speed: a decode step reads every weight once.
//!
//! Q4_1 block (20 bytes per 32 weights): f16 scale `d`, f16 minimum `m`, 16
//! bytes of nibbles; weight `j` is the low nibble of byte `j`, weight `j + 16`
//! its high nibble; `w = d·q + m`. Q8_0 block (34 bytes): f16 `d`, 32 signed
//! bytes; `w = d·q`.
//!
//! Two paths:
//! - few input rows (decode): the activations are quantised per 32 values to
//!   8 bits (`x ≈ dx·qx`, with `sx = dx·Σqx`), and each block's dot product is
//!   `d·dx·Σ(q·qx) + m·sx` (Q4_1) or `d·dx·Σ(q·qx)` (Q8_0), summed in integers: `vpdpbusd` where the CPU has
//!   AVX-512 VNNI, `vpmaddubsw`/`vpmaddwd` with AVX2, plain Rust otherwise
//!   (chosen at run time);
//! - many rows (prefill): each task dequantises a tile of weight rows to f32
//!   in cache and multiplies it with the GEMM, so the weights stay small and
//!   the multiply runs at f32 GEMM speed.

use super::linear::Threads;
use std::sync::OnceLock;

/// Weights per block.
pub const QK: usize = 32;

/// The block formats these kernels take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QType {
    Q4_1,
    Q8_0,
}

impl QType {
    /// Bytes per block of 32 weights.
    pub fn block_bytes(self) -> usize {
        match self {
            QType::Q4_1 => 20,
            QType::Q8_0 => 34,
        }
    }
}

/// A `[rows × cols]` matrix of quantised blocks, row-major.
#[derive(Clone)]
pub struct QMatrix {
    pub kind: QType,
    pub rows: usize,
    pub cols: usize,
    data: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
#[error("quantised matrix: {0}")]
pub struct QuantError(String);

impl QMatrix {
    /// Takes a GGUF tensor's bytes (`rows` rows of `cols` weights).
    pub fn from_blocks(
        kind: QType,
        rows: usize,
        cols: usize,
        data: Vec<u8>,
    ) -> Result<Self, QuantError> {
        if !cols.is_multiple_of(QK) {
            return Err(QuantError(format!(
                "{cols} columns are not a whole number of {QK}-weight blocks"
            )));
        }
        if data.len() != rows * cols / QK * kind.block_bytes() {
            return Err(QuantError(format!(
                "{} bytes do not hold {rows}×{cols} {kind:?} weights",
                data.len()
            )));
        }
        Ok(Self {
            kind,
            rows,
            cols,
            data,
        })
    }

    /// Quantises f32 weights (`[rows × cols]`) as GGUF writers do: Q4_1 per
    /// block `m` = the minimum and `d` = range / 15; Q8_0 `d` = max|w| / 127.
    pub fn quantize(kind: QType, w: &[f32], rows: usize, cols: usize) -> Result<Self, QuantError> {
        if w.len() != rows * cols {
            return Err(QuantError(format!(
                "{} values are not {rows}×{cols}",
                w.len()
            )));
        }
        if !cols.is_multiple_of(QK) {
            return Err(QuantError(format!(
                "{cols} columns are not a whole number of {QK}-weight blocks"
            )));
        }
        let mut data = Vec::with_capacity(rows * cols / QK * kind.block_bytes());
        for b in w.chunks_exact(QK) {
            match kind {
                QType::Q4_1 => {
                    let min = b.iter().copied().fold(f32::INFINITY, f32::min);
                    let max = b.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let (dh, mh) = (
                        super::mathf::f16_bits((max - min) / 15.0),
                        super::mathf::f16_bits(min),
                    );
                    let (d, min) = (super::mathf::f16_value(dh), super::mathf::f16_value(mh));
                    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
                    let q = |v: f32| ((v - min) * id).round().clamp(0.0, 15.0) as u8;
                    data.extend_from_slice(&dh.to_le_bytes());
                    data.extend_from_slice(&mh.to_le_bytes());
                    for j in 0..16 {
                        data.push(q(b[j]) | (q(b[j + 16]) << 4));
                    }
                }
                QType::Q8_0 => {
                    let amax = b.iter().fold(0f32, |a, v| a.max(v.abs()));
                    let dh = super::mathf::f16_bits(amax / 127.0);
                    let d = super::mathf::f16_value(dh);
                    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
                    data.extend_from_slice(&dh.to_le_bytes());
                    data.extend(
                        b.iter()
                            .map(|v| (v * id).round().clamp(-127.0, 127.0) as i8 as u8),
                    );
                }
            }
        }
        Ok(Self {
            kind,
            rows,
            cols,
            data,
        })
    }

    /// Stacks matrices with the same width into one (for example the Q, K and
    /// V projections, so that one pass over the input does all three).
    pub fn concat(parts: &[&Self]) -> Result<Self, QuantError> {
        let cols = parts.first().map_or(0, |p| p.cols);
        let kind = parts.first().map_or(QType::Q4_1, |p| p.kind);
        if parts.iter().any(|p| p.cols != cols || p.kind != kind) {
            return Err(QuantError(
                "concatenated matrices differ in width or format".into(),
            ));
        }
        let data = parts.iter().flat_map(|p| p.data.iter().copied()).collect();
        Ok(Self {
            kind,
            rows: parts.iter().map(|p| p.rows).sum(),
            cols,
            data,
        })
    }

    fn row_bytes(&self) -> usize {
        self.cols / QK * self.kind.block_bytes()
    }

    /// Dequantises rows `r0..r1` into `out` (`(r1 − r0) × cols`).
    pub fn dequantize_rows(&self, r0: usize, r1: usize, out: &mut [f32]) {
        assert!(
            r0 <= r1 && r1 <= self.rows && out.len() == (r1 - r0) * self.cols,
            "dequantize_rows: range"
        );
        let bytes = &self.data[r0 * self.row_bytes()..r1 * self.row_bytes()];
        for (b, o) in bytes
            .chunks_exact(self.kind.block_bytes())
            .zip(out.chunks_exact_mut(QK))
        {
            let d = super::mathf::f16_value(u16::from_le_bytes([b[0], b[1]]));
            match self.kind {
                QType::Q4_1 => {
                    let m = super::mathf::f16_value(u16::from_le_bytes([b[2], b[3]]));
                    for j in 0..16 {
                        o[j] = d * f32::from(b[4 + j] & 0x0f) + m;
                        o[j + 16] = d * f32::from(b[4 + j] >> 4) + m;
                    }
                }
                QType::Q8_0 => {
                    for (v, &q) in o.iter_mut().zip(&b[2..34]) {
                        *v = d * f32::from(q as i8);
                    }
                }
            }
        }
    }

    /// All weights as f32 (tests, and reference paths).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        self.dequantize_rows(0, self.rows, &mut out);
        out
    }

    /// One row as f32 (an embedding lookup).
    pub fn row(&self, r: usize, out: &mut [f32]) {
        self.dequantize_rows(r, r + 1, out);
    }

    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    /// The blocks as stored (GGUF layout), for uploading to a GPU.
    pub fn raw(&self) -> &[u8] {
        &self.data
    }
}

/// Activations quantised to 8 bits per 32-value block.
struct Q8Rows {
    qs: Vec<i8>,
    /// Per block: scale `dx`.
    d: Vec<f32>,
    /// Per block: `dx·Σqx`.
    s: Vec<f32>,
}

fn quantize_rows(x: &[f32], k: usize) -> Q8Rows {
    let blocks = x.len() / QK;
    let mut q = Q8Rows {
        qs: vec![0; x.len()],
        d: Vec::with_capacity(blocks),
        s: Vec::with_capacity(blocks),
    };
    debug_assert_eq!(x.len() % k, 0);
    for (b, qb) in x.chunks_exact(QK).zip(q.qs.chunks_exact_mut(QK)) {
        let amax = b.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for (o, v) in qb.iter_mut().zip(b) {
            // Half away from zero, without a library call per value.
            let y = v * id;
            let r = (y + 0.5f32.copysign(y)) as i32;
            *o = r as i8;
            sum += r;
        }
        q.d.push(d);
        q.s.push(d * sum as f32);
    }
    q
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QKernel {
    Avx512Vnni,
    Avx2,
    Portable,
}

/// The dot-product kernel this CPU runs (detected once).
pub fn q_kernel() -> QKernel {
    static K: OnceLock<QKernel> = OnceLock::new();
    *K.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c");
            if avx2
                && is_x86_feature_detected!("avx512vnni")
                && is_x86_feature_detected!("avx512vl")
            {
                return QKernel::Avx512Vnni;
            }
            if avx2 {
                return QKernel::Avx2;
            }
        }
        QKernel::Portable
    })
}

/// Pointer to `out`, shared by tasks that write disjoint columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint elements (their own column range of every row).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// Weight rows per task.
const TILE_N: usize = 64;

/// Which way [`q_linear_path`] computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QPath {
    /// 8-bit activations and integer dot products (few rows, decode).
    Int8,
    /// Dequantised tiles and the f32 GEMM (many rows, prefill).
    Tiles,
}

/// `out[m×n] = x[m×k] · Wᵀ` for a quantised `W` (`n × k`) on the given
/// path. Either way, each row's result depends
/// only on that row, not on the others.
pub fn q_linear_path(
    path: QPath,
    x: &[f32],
    w: &QMatrix,
    m: usize,
    out: &mut [f32],
    threads: Threads,
) {
    match path {
        QPath::Int8 => q_linear_with(q_kernel(), x, w, m, out, threads),
        QPath::Tiles => {
            assert_eq!(x.len(), m * w.cols, "q_linear: x is not m×k");
            assert_eq!(out.len(), m * w.rows, "q_linear: out is not m×n");
            if m > 0 && w.rows > 0 {
                tile_path(
                    x,
                    w,
                    m,
                    out,
                    threads == Threads::All && m * w.rows * w.cols >= 1 << 18,
                );
            }
        }
    }
}

/// The integer path with a chosen kernel (tests compare them all).
pub fn q_linear_with(
    kernel: QKernel,
    x: &[f32],
    w: &QMatrix,
    m: usize,
    out: &mut [f32],
    threads: Threads,
) {
    let (k, n) = (w.cols, w.rows);
    assert_eq!(x.len(), m * k, "q_linear: x is not m×k");
    assert_eq!(out.len(), m * n, "q_linear: out is not m×n");
    if m == 0 || n == 0 {
        return;
    }
    let ptr = OutPtr(out.as_mut_ptr());
    let parallel = threads == Threads::All && m * n * k >= 1 << 18;
    let q = quantize_rows(x, k);
    let tile = TILE_N;
    let task = |t: usize| {
        let (n0, n1) = (t * tile, ((t + 1) * tile).min(n));
        let ptr = ptr;
        dots(kernel, &q, w, m, n0, n1, ptr, n);
    };
    run_tiles(n.div_ceil(tile), parallel, task);
}

/// Many rows: dequantised weight tiles and the f32 GEMM.
fn tile_path(x: &[f32], w: &QMatrix, m: usize, out: &mut [f32], parallel: bool) {
    let (k, n) = (w.cols, w.rows);
    let ptr = OutPtr(out.as_mut_ptr());
    let task = |t: usize| {
        let (n0, n1) = (t * TILE_N, ((t + 1) * TILE_N).min(n));
        let ptr = ptr;
        let mut tile = vec![0f32; (n1 - n0) * k];
        w.dequantize_rows(n0, n1, &mut tile);
        // The GEMM's blocking changes above 64 rows, and with it the order
        // of each sum; in pieces of at most 64 rows, a row's result does not
        // depend on how many rows come with it (so a sequence's output does
        // not depend on what it was batched with).
        // Below 5 rows it switches to another kernel: short pieces are padded
        // to 8 rows.
        let nb = n1 - n0;
        for i0 in (0..m).step_by(GEMM_ROWS) {
            let mi = GEMM_ROWS.min(m - i0);
            if mi < MIN_GEMM_ROWS {
                let mut xp = vec![0f32; MIN_GEMM_ROWS * k];
                xp[..mi * k].copy_from_slice(&x[i0 * k..(i0 + mi) * k]);
                let mut op = vec![0f32; MIN_GEMM_ROWS * nb];
                gemm_rows(&xp, MIN_GEMM_ROWS, k, &tile, nb, op.as_mut_ptr(), nb);
                for r in 0..mi {
                    // SAFETY: row i0 + r < m, columns n0..n1 < n: inside out,
                    // and only this task writes these columns.
                    let dst =
                        unsafe { std::slice::from_raw_parts_mut(ptr.0.add((i0 + r) * n + n0), nb) };
                    dst.copy_from_slice(&op[r * nb..(r + 1) * nb]);
                }
            } else {
                // SAFETY (inside gemm_rows): rows i0.. and columns n0..n1 of
                // out lie within it (row stride n) and belong to this task.
                gemm_rows(
                    &x[i0 * k..(i0 + mi) * k],
                    mi,
                    k,
                    &tile,
                    nb,
                    unsafe { ptr.0.add(i0 * n + n0) },
                    n,
                );
            }
        }
    };
    run_tiles(n.div_ceil(TILE_N), parallel, task);
}

/// Rows per GEMM call of the tile path.
const GEMM_ROWS: usize = 64;
/// Fewest rows per GEMM call (shorter pieces are zero-padded).
const MIN_GEMM_ROWS: usize = 8;

/// `dst[m × nb] = x[m × k] · tileᵀ`, `dst` with row stride `ld`.
fn gemm_rows(x: &[f32], m: usize, k: usize, tile: &[f32], nb: usize, dst: *mut f32, ld: usize) {
    assert!(
        x.len() == m * k && tile.len() == nb * k,
        "gemm_rows: shapes"
    );
    // SAFETY: x is m×k (row stride k); the tile is nb×k read as its
    // transpose (row stride 1, column stride k); the caller hands a dst with
    // room for m rows of nb values at stride ld that nothing else touches.
    unsafe {
        gemm::gemm(
            m,
            nb,
            k,
            dst,
            1,
            ld as isize,
            false,
            x.as_ptr(),
            1,
            k as isize,
            tile.as_ptr(),
            k as isize,
            1,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

fn run_tiles(tiles: usize, parallel: bool, task: impl Fn(usize) + Sync + Send) {
    if parallel {
        // A decode step runs ~150 of these back to back: the spinning team,
        // not the pool, so that no thread is woken through the OS each time.
        super::Team::global().run(tiles, &task);
    } else {
        (0..tiles).for_each(task);
    }
}

fn dots(
    kernel: QKernel,
    q: &Q8Rows,
    w: &QMatrix,
    m: usize,
    n0: usize,
    n1: usize,
    out: OutPtr,
    n: usize,
) {
    let rb = w.row_bytes();
    for j in n0..n1 {
        let wrow = &w.data[j * rb..(j + 1) * rb];
        // Up to four input rows share each unpacked weight block.
        let mut i = 0;
        while i < m {
            let g = (m - i).min(4);
            let mut acc = [0f32; 4];
            match kernel {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: q_kernel() saw these features on this CPU; slices are in bounds (checked in row_dots).
                QKernel::Avx512Vnni => unsafe {
                    x86::row_dots_vnni(w.kind, wrow, q, i, g, w.cols, &mut acc)
                },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: as above, for AVX2/FMA/F16C.
                QKernel::Avx2 => unsafe {
                    x86::row_dots_avx2(w.kind, wrow, q, i, g, w.cols, &mut acc)
                },
                _ => row_dots_portable(w.kind, wrow, q, i, g, w.cols, &mut acc),
            }
            for (r, a) in acc[..g].iter().enumerate() {
                // SAFETY: (i + r) < m and j < n: inside out (m×n); column j
                // belongs to this task's range only.
                unsafe { *out.0.add((i + r) * n + j) = *a };
            }
            i += g;
        }
    }
}

fn row_dots_portable(
    kind: QType,
    wrow: &[u8],
    q: &Q8Rows,
    i0: usize,
    g: usize,
    k: usize,
    acc: &mut [f32; 4],
) {
    let nb = k / QK;
    for (b, blk) in wrow.chunks_exact(kind.block_bytes()).enumerate() {
        let d = super::mathf::f16_value(u16::from_le_bytes([blk[0], blk[1]]));
        for r in 0..g {
            let qb = (i0 + r) * nb + b;
            let qx = &q.qs[qb * QK..(qb + 1) * QK];
            acc[r] += match kind {
                QType::Q4_1 => {
                    let mn = super::mathf::f16_value(u16::from_le_bytes([blk[2], blk[3]]));
                    let mut dot = 0i32;
                    for j in 0..16 {
                        dot += i32::from(blk[4 + j] & 0x0f) * i32::from(qx[j])
                            + i32::from(blk[4 + j] >> 4) * i32::from(qx[j + 16]);
                    }
                    d * q.d[qb] * dot as f32 + mn * q.s[qb]
                }
                QType::Q8_0 => {
                    let dot: i32 = blk[2..34]
                        .iter()
                        .zip(qx)
                        .map(|(&w, &x)| i32::from(w as i8) * i32::from(x))
                        .sum();
                    d * q.d[qb] * dot as f32
                }
            };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Q8Rows, QType, QK};
    use std::arch::x86_64::*;

    /// Blocks ahead to prefetch (measured on the decode step).
    const PREFETCH: usize = 6;

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// Shared body; `VNNI` picks the integer dot instruction, `Q8` the block format.
    #[inline(always)]
    unsafe fn row_dots<const VNNI: bool, const Q8: bool>(
        wrow: &[u8],
        q: &Q8Rows,
        i0: usize,
        g: usize,
        k: usize,
        out: &mut [f32; 4],
    ) {
        let nb = k / QK;
        let bb = if Q8 { QType::Q8_0 } else { QType::Q4_1 }.block_bytes();
        assert!(wrow.len() == nb * bb && (i0 + g) * nb <= q.d.len() && g <= 4);
        let mask = _mm_set1_epi8(0x0f);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut mins = [0f32; 4];
        let wp = wrow.as_ptr();
        for b in 0..nb {
            let blk = wp.add(b * bb);
            // A hint only: past the row's end it reads nothing.
            _mm_prefetch::<_MM_HINT_T0>(blk.wrapping_add(PREFETCH * bb) as *const i8);
            let dm = _mm_cvtph_ps(_mm_cvtsi32_si128((blk as *const i32).read_unaligned()));
            let (d, mn) = (_mm_cvtss_f32(dm), _mm_cvtss_f32(_mm_movehdup_ps(dm)));
            // Unsigned weights for the u8×i8 products: Q4_1's nibbles as they
            // are; Q8_0's magnitudes, with their signs moved onto the inputs.
            let wq = if Q8 {
                _mm256_loadu_si256(blk.add(2) as *const __m256i)
            } else {
                let raw = _mm_loadu_si128(blk.add(4) as *const __m128i);
                _mm256_set_m128i(
                    _mm_and_si128(_mm_srli_epi16::<4>(raw), mask),
                    _mm_and_si128(raw, mask),
                )
            };
            let wu = if Q8 { _mm256_sign_epi8(wq, wq) } else { wq };
            for r in 0..g {
                let qb = (i0 + r) * nb + b;
                let mut qx = _mm256_loadu_si256(q.qs.as_ptr().add(qb * QK) as *const __m256i);
                if Q8 {
                    qx = _mm256_sign_epi8(qx, wq);
                }
                let dot = if VNNI {
                    _mm256_dpbusd_epi32(_mm256_setzero_si256(), wu, qx)
                } else {
                    _mm256_madd_epi16(_mm256_maddubs_epi16(wu, qx), ones)
                };
                let scale = _mm256_set1_ps(d * *q.d.get_unchecked(qb));
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, acc[r]);
                if !Q8 {
                    mins[r] += mn * *q.s.get_unchecked(qb);
                }
            }
        }
        for r in 0..g {
            out[r] = hsum(acc[r]) + mins[r];
        }
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
    pub unsafe fn row_dots_vnni(
        kind: QType,
        wrow: &[u8],
        q: &Q8Rows,
        i0: usize,
        g: usize,
        k: usize,
        out: &mut [f32; 4],
    ) {
        match kind {
            QType::Q4_1 => row_dots::<true, false>(wrow, q, i0, g, k, out),
            QType::Q8_0 => row_dots::<true, true>(wrow, q, i0, g, k, out),
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn row_dots_avx2(
        kind: QType,
        wrow: &[u8],
        q: &Q8Rows,
        i0: usize,
        g: usize,
        k: usize,
        out: &mut [f32; 4],
    ) {
        match kind {
            QType::Q4_1 => row_dots::<false, false>(wrow, q, i0, g, k, out),
            QType::Q8_0 => row_dots::<false, true>(wrow, q, i0, g, k, out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::testutil::{assert_close, random};

    fn reference(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut want = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                want[i * n + j] = (0..k)
                    .map(|c| f64::from(x[i * k + c]) * f64::from(w[j * k + c]))
                    .sum();
            }
        }
        want
    }

    #[test]
    fn quantisation_round_trips_within_half_a_step() {
        let w = random(64 * 96, 1);
        let q = QMatrix::quantize(QType::Q4_1, &w, 64, 96).unwrap();
        assert_eq!(q.bytes(), 64 * 96 / 32 * 20);
        let back = q.dequantize();
        for (b, (a, z)) in w.chunks(32).zip(back.chunks(32)).enumerate() {
            let range = a.iter().copied().fold(f32::NEG_INFINITY, f32::max)
                - a.iter().copied().fold(f32::INFINITY, f32::min);
            for (x, y) in a.iter().zip(z) {
                assert!(
                    (x - y).abs() <= range / 30.0 + 1e-3,
                    "block {b}: {x} vs {y}"
                );
            }
        }
        assert!(QMatrix::from_blocks(QType::Q4_1, 2, 33, vec![0; 40]).is_err());
        assert!(QMatrix::from_blocks(QType::Q4_1, 2, 32, vec![0; 39]).is_err());
        assert!(QMatrix::from_blocks(QType::Q8_0, 2, 32, vec![0; 68]).is_ok());
        let q8 = QMatrix::quantize(QType::Q8_0, &w, 64, 96).unwrap();
        for (x, y) in w.iter().zip(q8.dequantize()) {
            assert!((x - y).abs() <= 1.0 / 254.0 + 1e-3, "Q8_0: {x} vs {y}");
        }
    }

    #[test]
    fn every_kernel_matches_float64_on_the_dequantised_weights() {
        let (k, n) = (576, 200);
        for kind in [QType::Q4_1, QType::Q8_0] {
            let w = QMatrix::quantize(kind, &random(n * k, 2), n, k).unwrap();
            let wf = w.dequantize();
            let mut kernels = vec![QKernel::Portable];
            #[cfg(target_arch = "x86_64")]
            {
                if is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
                {
                    kernels.push(QKernel::Avx2);
                }
                if q_kernel() == QKernel::Avx512Vnni {
                    kernels.push(QKernel::Avx512Vnni);
                }
            }
            for m in [1, 3, 4, 7, 16, 17, 70] {
                let x = random(m * k, 3 + m as u64);
                let want = reference(&x, &wf, m, k, n);
                for &kern in &kernels {
                    for threads in [Threads::One, Threads::All] {
                        let mut out = vec![f32::NAN; m * n];
                        q_linear_with(kern, &x, &w, m, &mut out, threads);
                        // The integer path quantises activations to 8 bits: about
                        // 1/254 of each block's largest value per element.
                        assert_close(
                            &out,
                            &want,
                            1e-2,
                            &format!("{kind:?} {kern:?} m={m} {threads:?}"),
                        );
                        let mut out = vec![f32::NAN; m * n];
                        q_linear_path(QPath::Tiles, &x, &w, m, &mut out, threads);
                        assert_close(
                            &out,
                            &want,
                            1e-5,
                            &format!("{kind:?} tiles m={m} {threads:?}"),
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn the_integer_kernels_agree_with_each_other_exactly_enough() {
        let (k, n, m) = (1536, 70, 5);
        for kind in [QType::Q4_1, QType::Q8_0] {
            let w = QMatrix::quantize(kind, &random(n * k, 9), n, k).unwrap();
            let x = random(m * k, 10);
            let mut a = vec![0f32; m * n];
            let mut b = vec![0f32; m * n];
            q_linear_with(QKernel::Portable, &x, &w, m, &mut a, Threads::One);
            q_linear_with(q_kernel(), &x, &w, m, &mut b, Threads::All);
            for (p, q) in a.iter().zip(&b) {
                assert!(
                    (p - q).abs() <= 1e-4 * (1.0 + p.abs()),
                    "{kind:?}: {p} vs {q}"
                );
            }
        }
    }
}
#[cfg(test)]
mod batch_independence {
    use super::*;
    use crate::cpu::testutil::random;

    /// A row's result on either path does not depend on the rows that come
    /// with it, so a sequence's output does not depend on its batch.
    #[test]
    fn a_rows_result_is_the_same_whatever_rows_come_with_it() {
        for (k, n) in [(576usize, 960usize), (1536, 576)] {
            let w = QMatrix::quantize(QType::Q4_1, &random(n * k, 2), n, k).unwrap();
            let x = random(140 * k, 5);
            for path in [QPath::Int8, QPath::Tiles] {
                let mut first = None;
                for m in [1usize, 2, 3, 4, 5, 8, 16, 17, 63, 64, 65, 100, 129, 140] {
                    let mut out = vec![0f32; m * n];
                    q_linear_path(path, &x[..m * k], &w, m, &mut out, Threads::All);
                    let row = out[..n].to_vec();
                    match &first {
                        None => first = Some(row),
                        Some(r) => assert!(r == &row, "{path:?} k={k}: row 0 changes with m={m}"),
                    }
                }
            }
        }
    }
}
