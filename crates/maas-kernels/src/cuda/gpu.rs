//! The device side: context, compiled modules and typed launchers.

use super::{compile, driver_available, nvrtc_available, SOURCES};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("CUDA is not available: {0}")]
    Unavailable(String),
    #[error("kernel compilation failed: {0}")]
    Compile(String),
    #[error("CUDA driver error: {0}")]
    Driver(#[from] cudarc::driver::DriverError),
}

pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    funcs: HashMap<&'static str, CudaFunction>,
    pub arch: String,
}

fn grid(n: usize, block: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((n as u32).div_ceil(block).max(1), 1, 1),
        block_dim: (block, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn rows(rows: usize, block: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows.max(1) as u32, 1, 1),
        block_dim: (block, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl Gpu {
    /// Opens device `ordinal`, compiles every kernel for its architecture and loads them.
    pub fn new(ordinal: usize) -> Result<Self, GpuError> {
        if !driver_available() {
            return Err(GpuError::Unavailable(
                "libcuda.so.1 (the NVIDIA driver) not found".into(),
            ));
        }
        if !nvrtc_available() {
            return Err(GpuError::Unavailable(
                "libnvrtc.so.12 not found (put its folder on LD_LIBRARY_PATH)".into(),
            ));
        }
        let ctx = CudaContext::new(ordinal)?;
        let (major, minor) = ctx.compute_capability()?;
        let arch: &'static str = Box::leak(format!("compute_{major}{minor}").into_boxed_str());
        let stream = ctx.default_stream();
        let mut funcs = HashMap::new();
        for (name, src, kernels) in SOURCES {
            let compiled = compile(name, src, arch).map_err(GpuError::Compile)?;
            let module = ctx.load_module(Ptx::from_src(compiled.ptx))?;
            for k in *kernels {
                funcs.insert(*k, module.load_function(k)?);
            }
        }
        Ok(Self {
            ctx,
            stream,
            funcs,
            arch: arch.to_owned(),
        })
    }

    fn f(&self, name: &str) -> &CudaFunction {
        // Every name used below is listed in SOURCES and loaded in `new`.
        &self.funcs[name]
    }

    pub fn upload<T: cudarc::driver::DeviceRepr>(
        &self,
        host: &[T],
    ) -> Result<CudaSlice<T>, GpuError> {
        Ok(self.stream.clone_htod(host)?)
    }

    pub fn zeros(&self, n: usize) -> Result<CudaSlice<f32>, GpuError> {
        Ok(self.stream.alloc_zeros::<f32>(n.max(1))?)
    }

    /// Copies a device buffer back (waits for every launch before it).
    pub fn download(&self, d: &CudaSlice<f32>) -> Result<Vec<f32>, GpuError> {
        Ok(self.stream.clone_dtoh(d)?)
    }

    pub fn synchronize(&self) -> Result<(), GpuError> {
        Ok(self.stream.synchronize()?)
    }

    pub fn device_name(&self) -> String {
        self.ctx.name().unwrap_or_default()
    }

    /// `out[m×n] = x[m×k] · w[n×k]ᵀ + b[n]`.
    #[allow(clippy::too_many_arguments)]
    pub fn linear(
        &self,
        x: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        b: &CudaSlice<f32>,
        m: usize,
        k: usize,
        n: usize,
        out: &mut CudaSlice<f32>,
    ) -> Result<(), GpuError> {
        let cfg = LaunchConfig {
            grid_dim: (
                (n as u32).div_ceil(64).max(1),
                (m as u32).div_ceil(64).max(1),
                1,
            ),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let (m, k, n) = (m as i32, k as i32, n as i32);
        let mut l = self.stream.launch_builder(self.f("linear_f32"));
        l.arg(x).arg(w).arg(b).arg(out).arg(&m).arg(&k).arg(&n);
        // SAFETY: linear_f32(x, w, b, out, m, k, n) reads x[m·k], w[n·k], b[n]
        // and writes out[m·n], bounds-checked in the kernel; the caller's
        // buffers have those sizes (checked by the model's shapes).
        unsafe { l.launch(cfg) }?;
        Ok(())
    }

    pub fn zeros_i8(&self, n: usize) -> Result<CudaSlice<i8>, GpuError> {
        Ok(self.stream.alloc_zeros::<i8>(n.max(1))?)
    }

    pub fn zeros_i32(&self, n: usize) -> Result<CudaSlice<i32>, GpuError> {
        Ok(self.stream.alloc_zeros::<i32>(n.max(1))?)
    }

    /// Quantises `m` rows of `k` values to int8 per row (the activations of
    /// [`Gpu::linear_i8`]), each value first multiplied by `smooth[p]` (its
    /// channel's factor, ones when the weights are not smoothed): `q` gets
    /// m × kp bytes (zero past k), `scale` and `zero` m each.
    #[allow(clippy::too_many_arguments)]
    pub fn quantize_rows_i8(
        &self,
        x: &CudaSlice<f32>,
        smooth: &CudaSlice<f32>,
        m: usize,
        k: usize,
        kp: usize,
        q: &mut CudaSlice<i8>,
        scale: &mut CudaSlice<f32>,
        zero: &mut CudaSlice<i32>,
    ) -> Result<(), GpuError> {
        assert!(
            kp >= k && kp.is_multiple_of(4),
            "quantize_rows_i8: kp must be k rounded up to 4"
        );
        assert!(
            x.len() >= m * k
                && q.len() >= m * kp
                && scale.len() >= m
                && zero.len() >= m
                && smooth.len() >= k
        );
        if m == 0 {
            return Ok(());
        }
        let (k, kp) = (k as i32, kp as i32);
        let mut l = self.stream.launch_builder(self.f("quantize_rows_i8"));
        l.arg(x)
            .arg(smooth)
            .arg(q)
            .arg(scale)
            .arg(zero)
            .arg(&k)
            .arg(&kp);
        // SAFETY: one block per row reads x[row·k..][..k] and smooth[..k] and
        // writes q[row·kp..][..kp], scale[row] and zero[row], inside the sizes
        // asserted above.
        unsafe { l.launch(rows(m, 256)) }?;
        Ok(())
    }

    /// `out[m×n] = sx[i]·sw[j]·(q[m×kp] · w[n×kp]ᵀ − zx[i]·colsum[j]) + b[n]`:
    /// int8 rows from [`Gpu::quantize_rows_i8`] and int8 weights (row-major,
    /// zero-padded to kp) with per-channel scales `sw` and sums `colsum`.
    #[allow(clippy::too_many_arguments)]
    pub fn linear_i8(
        &self,
        q: &CudaSlice<i8>,
        sx: &CudaSlice<f32>,
        zx: &CudaSlice<i32>,
        w: &CudaSlice<i8>,
        sw: &CudaSlice<f32>,
        colsum: &CudaSlice<i32>,
        b: &CudaSlice<f32>,
        m: usize,
        kp: usize,
        n: usize,
        out: &mut CudaSlice<f32>,
    ) -> Result<(), GpuError> {
        assert!(
            kp.is_multiple_of(4),
            "linear_i8: kp must be a multiple of 4"
        );
        assert!(q.len() >= m * kp && sx.len() >= m && w.len() >= n * kp);
        assert!(sw.len() >= n && colsum.len() >= n && b.len() >= n && out.len() >= m * n);
        assert!(zx.len() >= m);
        let cfg = LaunchConfig {
            grid_dim: (
                (n as u32).div_ceil(64).max(1),
                (m as u32).div_ceil(64).max(1),
                1,
            ),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let (m, kp, n) = (m as i32, kp as i32, n as i32);
        let mut l = self.stream.launch_builder(self.f("linear_i8"));
        l.arg(q)
            .arg(sx)
            .arg(zx)
            .arg(w)
            .arg(sw)
            .arg(colsum)
            .arg(b)
            .arg(out)
            .arg(&m)
            .arg(&kp)
            .arg(&n);
        // SAFETY: the arguments are linear_i8's, in its order; it reads
        // q[m·kp], sx[m], zx[m], w[n·kp], sw[n], colsum[n], b[n] and writes
        // out[m·n], bounds-checked in the kernel; sizes asserted above.
        unsafe { l.launch(cfg) }?;
        Ok(())
    }

    /// `x = LayerNorm(x + y)` over `rows` rows of `cols`.
    #[allow(clippy::too_many_arguments)]
    pub fn add_layer_norm(
        &self,
        x: &mut CudaSlice<f32>,
        y: &CudaSlice<f32>,
        g: &CudaSlice<f32>,
        b: &CudaSlice<f32>,
        rows_n: usize,
        cols: usize,
        eps: f32,
    ) -> Result<(), GpuError> {
        let c = cols as i32;
        let mut l = self.stream.launch_builder(self.f("add_layer_norm_f32"));
        l.arg(x).arg(y).arg(g).arg(b).arg(&c).arg(&eps);
        // SAFETY: one block per row; row r touches x and y at r·cols..(r+1)·cols only.
        unsafe { l.launch(rows(rows_n, 128)) }?;
        Ok(())
    }

    /// `x = LayerNorm(x)`.
    pub fn layer_norm(
        &self,
        x: &mut CudaSlice<f32>,
        g: &CudaSlice<f32>,
        b: &CudaSlice<f32>,
        rows_n: usize,
        cols: usize,
        eps: f32,
    ) -> Result<(), GpuError> {
        let c = cols as i32;
        let mut l = self.stream.launch_builder(self.f("layer_norm_f32"));
        l.arg(x).arg(g).arg(b).arg(&c).arg(&eps);
        // SAFETY: one block per row; row r touches x at r·cols..(r+1)·cols only.
        unsafe { l.launch(rows(rows_n, 128)) }?;
        Ok(())
    }

    pub fn gelu(&self, x: &mut CudaSlice<f32>, n: usize) -> Result<(), GpuError> {
        let nn = n as i32;
        let mut l = self.stream.launch_builder(self.f("gelu_f32"));
        l.arg(x).arg(&nn);
        // SAFETY: thread i < n touches x[i] only.
        unsafe { l.launch(grid(n, 256)) }?;
        Ok(())
    }

    /// `out[t] = word[ids[t]] + pos[positions[t]] + type0`.
    #[allow(clippy::too_many_arguments)]
    pub fn embed(
        &self,
        ids: &CudaSlice<u32>,
        positions: &CudaSlice<i32>,
        word: &CudaSlice<f32>,
        pos: &CudaSlice<f32>,
        type0: &CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
        t: usize,
        h: usize,
    ) -> Result<(), GpuError> {
        let hh = h as i32;
        let mut l = self.stream.launch_builder(self.f("embed_f32"));
        l.arg(ids)
            .arg(positions)
            .arg(word)
            .arg(pos)
            .arg(type0)
            .arg(out)
            .arg(&hh);
        // SAFETY: block t reads row ids[t] of word and positions[t] of pos
        // (ids are checked against the vocabulary, positions < 512 by
        // truncation) and writes row t of out.
        unsafe { l.launch(rows(t, 128)) }?;
        Ok(())
    }

    /// Attention over packed sequences; head size must be 32.
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        &self,
        qkv: &CudaSlice<f32>,
        starts: &CudaSlice<i32>,
        lens: &CudaSlice<i32>,
        out: &mut CudaSlice<f32>,
        seqs: usize,
        heads: usize,
        scale: f32,
    ) -> Result<(), GpuError> {
        let hh = heads as i32;
        let mut l = self.stream.launch_builder(self.f("attention_f32"));
        l.arg(qkv)
            .arg(starts)
            .arg(lens)
            .arg(out)
            .arg(&hh)
            .arg(&scale);
        // SAFETY: block (seq, head) reads its sequence's rows of qkv and
        // writes its head's columns of those rows of out; lengths ≤ 512.
        unsafe { l.launch(rows(seqs * heads, 128)) }?;
        Ok(())
    }

    /// Mean over each sequence's rows, then L2 normalisation.
    pub fn mean_pool_l2(
        &self,
        x: &CudaSlice<f32>,
        starts: &CudaSlice<i32>,
        lens: &CudaSlice<i32>,
        out: &mut CudaSlice<f32>,
        seqs: usize,
        h: usize,
    ) -> Result<(), GpuError> {
        let hh = h as i32;
        let mut l = self.stream.launch_builder(self.f("mean_pool_l2_f32"));
        l.arg(x).arg(starts).arg(lens).arg(out).arg(&hh);
        // SAFETY: block s reads its sequence's rows of x and writes row s of out.
        unsafe { l.launch(rows(seqs, 128)) }?;
        Ok(())
    }

    /// RMS normalisation of `rows_n` rows of `cols` into `out`.
    #[allow(clippy::too_many_arguments)]
    pub fn rms_norm(
        &self,
        x: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
        rows_n: usize,
        cols: usize,
        eps: f32,
    ) -> Result<(), GpuError> {
        let c = cols as i32;
        let mut l = self.stream.launch_builder(self.f("rms_norm_f32"));
        l.arg(x).arg(w).arg(out).arg(&c).arg(&eps);
        // SAFETY: one block per row; row r reads x and writes out at r·cols..(r+1)·cols only.
        unsafe { l.launch(rows(rows_n, 128)) }?;
        Ok(())
    }

    /// Rotary positions on `heads` heads from column `col0` of each row
    /// (rows `stride` apart), row r at position `pos[r]`.
    #[allow(clippy::too_many_arguments)]
    pub fn rope(
        &self,
        x: &mut CudaSlice<f32>,
        pos: &CudaSlice<i32>,
        cos: &CudaSlice<f32>,
        sin: &CudaSlice<f32>,
        rows_n: usize,
        stride: usize,
        col0: usize,
        heads: usize,
        head_dim: usize,
    ) -> Result<(), GpuError> {
        let a = [
            rows_n as i32,
            stride as i32,
            col0 as i32,
            heads as i32,
            head_dim as i32,
        ];
        let mut l = self.stream.launch_builder(self.f("rope_f32"));
        l.arg(x)
            .arg(pos)
            .arg(cos)
            .arg(sin)
            .arg(&a[0])
            .arg(&a[1])
            .arg(&a[2])
            .arg(&a[3])
            .arg(&a[4]);
        // SAFETY: thread i < rows·heads·head_dim/2 rotates one pair of one
        // head of one row; positions index the tables within their length.
        unsafe { l.launch(grid(rows_n * heads * head_dim / 2, 256)) }?;
        Ok(())
    }

    /// `out[r, j] = silu(gu[r, j]) · gu[r, ffn + j]`.
    pub fn swiglu(
        &self,
        gu: &CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
        rows_n: usize,
        ffn: usize,
    ) -> Result<(), GpuError> {
        let (r, f) = (rows_n as i32, ffn as i32);
        let mut l = self.stream.launch_builder(self.f("swiglu_f32"));
        l.arg(gu).arg(out).arg(&r).arg(&f);
        // SAFETY: thread i < rows·ffn writes out[i] and reads its row of gu.
        unsafe { l.launch(grid(rows_n * ffn, 256)) }?;
        Ok(())
    }

    /// `out[m×n] = x[m×k] · Wᵀ` for GGUF blocks `w` (Q4_1 or Q8_0, `n` rows).
    #[allow(clippy::too_many_arguments)]
    pub fn q_matmul(
        &self,
        kind: crate::cpu::QType,
        w: &CudaSlice<u8>,
        x: &CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
        m: usize,
        k: usize,
        n: usize,
    ) -> Result<(), GpuError> {
        let name = match kind {
            crate::cpu::QType::Q4_1 => "q4_1_matmul_f32",
            crate::cpu::QType::Q8_0 => "q8_0_matmul_f32",
        };
        let (mm, kk, nn) = (m as i32, k as i32, n as i32);
        let mut l = self.stream.launch_builder(self.f(name));
        l.arg(w).arg(x).arg(out).arg(&mm).arg(&kk).arg(&nn);
        // SAFETY: warp j < n reads weight row j (k/32 blocks) and all of x
        // (m·k), and writes column j of out (m·n).
        unsafe { l.launch(grid(n * 32, 256)) }?;
        Ok(())
    }

    /// Rows `ids` of a Q8_0 matrix (`h` wide), dequantised into `out`.
    pub fn q8_0_embed(
        &self,
        ids: &CudaSlice<u32>,
        w: &CudaSlice<u8>,
        out: &mut CudaSlice<f32>,
        t: usize,
        h: usize,
    ) -> Result<(), GpuError> {
        let hh = h as i32;
        let mut l = self.stream.launch_builder(self.f("q8_0_embed_f32"));
        l.arg(ids).arg(w).arg(out).arg(&hh);
        // SAFETY: block t reads row ids[t] of w (ids are checked against the
        // vocabulary by the caller) and writes row t of out.
        unsafe { l.launch(rows(t, 128)) }?;
        Ok(())
    }

    /// Attention of `rows_n` new rows against their sequences' cached keys
    /// and values (head size 64): row r sees `visible[r]` positions starting
    /// at element `kv_off[r]` of the pools.
    #[allow(clippy::too_many_arguments)]
    pub fn kv_attention(
        &self,
        q: &CudaSlice<f32>,
        kpool: &CudaSlice<f32>,
        vpool: &CudaSlice<f32>,
        kv_off: &CudaSlice<i64>,
        visible: &CudaSlice<i32>,
        out: &mut CudaSlice<f32>,
        rows_n: usize,
        heads: usize,
        kv_heads: usize,
        scale: f32,
    ) -> Result<(), GpuError> {
        let (h, kvh) = (heads as i32, kv_heads as i32);
        let mut l = self.stream.launch_builder(self.f("kv_attention_f32"));
        l.arg(q)
            .arg(kpool)
            .arg(vpool)
            .arg(kv_off)
            .arg(visible)
            .arg(out)
            .arg(&h)
            .arg(&kvh)
            .arg(&scale);
        // SAFETY: block (row, head) reads that row's q, its sequence's first
        // visible positions in the pools, and writes its head of out's row.
        unsafe { l.launch(rows(rows_n * heads, 128)) }?;
        Ok(())
    }
}
