//! The encoder on a CUDA device: weights uploaded once, one stream, one
//! kernel per op (see `maas-kernels/cuda`), the same packed, unpadded batch
//! layout as on the CPU. Only the pooled vectors come back to the host.

use crate::bert::{EmbedError, Layer};
use cudarc::driver::CudaSlice;
use maas_kernels::cuda::{Gpu, GpuError};

impl From<GpuError> for EmbedError {
    fn from(e: GpuError) -> Self {
        EmbedError::Device(e.to_string())
    }
}

pub(crate) struct Shape {
    pub hidden: usize,
    pub ffn: usize,
    pub heads: usize,
    pub eps: f32,
}

struct GpuLayer {
    qkv_w: CudaSlice<f32>,
    qkv_b: CudaSlice<f32>,
    out_w: CudaSlice<f32>,
    out_b: CudaSlice<f32>,
    ln1_g: CudaSlice<f32>,
    ln1_b: CudaSlice<f32>,
    ff1_w: CudaSlice<f32>,
    ff1_b: CudaSlice<f32>,
    ff2_w: CudaSlice<f32>,
    ff2_b: CudaSlice<f32>,
    ln2_g: CudaSlice<f32>,
    ln2_b: CudaSlice<f32>,
}

pub(crate) struct GpuWeights {
    pub ordinal: usize,
    gpu: Gpu,
    word: CudaSlice<f32>,
    pos: CudaSlice<f32>,
    type0: CudaSlice<f32>,
    emb_ln_g: CudaSlice<f32>,
    emb_ln_b: CudaSlice<f32>,
    layers: Vec<GpuLayer>,
}

impl GpuWeights {
    #[allow(clippy::too_many_arguments)]
    pub fn upload(
        ordinal: usize,
        word: &[f32],
        pos: &[f32],
        type0: &[f32],
        emb_ln_g: &[f32],
        emb_ln_b: &[f32],
        layers: &[Layer],
    ) -> Result<Self, EmbedError> {
        let gpu = Gpu::new(ordinal)?;
        let mut up = Vec::with_capacity(layers.len());
        for l in layers {
            up.push(GpuLayer {
                qkv_w: gpu.upload(&l.qkv_w)?,
                qkv_b: gpu.upload(&l.qkv_b)?,
                out_w: gpu.upload(&l.out_w)?,
                out_b: gpu.upload(&l.out_b)?,
                ln1_g: gpu.upload(&l.ln1_g)?,
                ln1_b: gpu.upload(&l.ln1_b)?,
                ff1_w: gpu.upload(&l.ff1_w)?,
                ff1_b: gpu.upload(&l.ff1_b)?,
                ff2_w: gpu.upload(&l.ff2_w)?,
                ff2_b: gpu.upload(&l.ff2_b)?,
                ln2_g: gpu.upload(&l.ln2_g)?,
                ln2_b: gpu.upload(&l.ln2_b)?,
            });
        }
        Ok(Self {
            ordinal,
            word: gpu.upload(word)?,
            pos: gpu.upload(pos)?,
            type0: gpu.upload(type0)?,
            emb_ln_g: gpu.upload(emb_ln_g)?,
            emb_ln_b: gpu.upload(emb_ln_b)?,
            layers: up,
            gpu,
        })
    }

    pub fn forward(&self, s: &Shape, ids: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let (h, f, heads) = (s.hidden, s.ffn, s.heads);
        let t: usize = ids.iter().map(Vec::len).sum();
        if t == 0 {
            return Ok(ids.iter().map(|_| vec![0.0; h]).collect());
        }
        let mut flat = Vec::with_capacity(t);
        let mut positions = Vec::with_capacity(t);
        let (mut starts, mut lens) = (Vec::with_capacity(ids.len()), Vec::with_capacity(ids.len()));
        for seq in ids {
            starts.push(flat.len() as i32);
            lens.push(seq.len() as i32);
            flat.extend_from_slice(seq);
            positions.extend(0..seq.len() as i32);
        }
        let g = &self.gpu;
        let (d_ids, d_pos) = (g.upload(&flat)?, g.upload(&positions)?);
        let (d_starts, d_lens) = (g.upload(&starts)?, g.upload(&lens)?);
        let mut x = g.zeros(t * h)?;
        g.embed(
            &d_ids,
            &d_pos,
            &self.word,
            &self.pos,
            &self.type0,
            &mut x,
            t,
            h,
        )?;
        g.layer_norm(&mut x, &self.emb_ln_g, &self.emb_ln_b, t, h, s.eps)?;
        let mut qkv = g.zeros(t * 3 * h)?;
        let mut ctx = g.zeros(t * h)?;
        let mut proj = g.zeros(t * h)?;
        let mut ff = g.zeros(t * f)?;
        let scale = 1.0 / ((h / heads) as f32).sqrt();
        for l in &self.layers {
            g.linear(&x, &l.qkv_w, &l.qkv_b, t, h, 3 * h, &mut qkv)?;
            g.attention(&qkv, &d_starts, &d_lens, &mut ctx, ids.len(), heads, scale)?;
            g.linear(&ctx, &l.out_w, &l.out_b, t, h, h, &mut proj)?;
            g.add_layer_norm(&mut x, &proj, &l.ln1_g, &l.ln1_b, t, h, s.eps)?;
            g.linear(&x, &l.ff1_w, &l.ff1_b, t, h, f, &mut ff)?;
            g.gelu(&mut ff, t * f)?;
            g.linear(&ff, &l.ff2_w, &l.ff2_b, t, f, h, &mut proj)?;
            g.add_layer_norm(&mut x, &proj, &l.ln2_g, &l.ln2_b, t, h, s.eps)?;
        }
        let mut pooled = g.zeros(ids.len() * h)?;
        g.mean_pool_l2(&x, &d_starts, &d_lens, &mut pooled, ids.len(), h)?;
        let host = g.download(&pooled)?;
        Ok(host
            .chunks_exact(h)
            .take(ids.len())
            .map(<[f32]>::to_vec)
            .collect())
    }
}
