//! A llama-architecture decoder (SmolLM2-135M-Instruct) on the CPU, read
//! from GGUF: token embeddings, RMSNorm, rotary positions, grouped-query
//! attention with a KV cache, SwiGLU MLP, output head tied to the embeddings.
//!
//! This first version dequantises every weight to f32 at load (135 M
//! parameters, ~0.5 GB) and uses the f32 kernels: it is the correctness
//! baseline that quantised kernels are checked against.

use maas_gguf::{GgufError, GgufFile};
use maas_kernels::cpu::{self, Threads};
use std::path::Path;

#[derive(Debug, Clone)]
pub struct LlamaConfig {
    pub layers: usize,
    pub hidden: usize,
    pub ffn: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub rope_base: f32,
    pub eps: f32,
    pub vocab: usize,
    pub context: usize,
}

struct Layer {
    attn_norm: Vec<f32>,
    wq: Vec<f32>,
    wk: Vec<f32>,
    wv: Vec<f32>,
    wo: Vec<f32>,
    ffn_norm: Vec<f32>,
    w_gate: Vec<f32>,
    w_up: Vec<f32>,
    w_down: Vec<f32>,
}

pub struct Llama {
    pub cfg: LlamaConfig,
    embed: Vec<f32>,
    out_norm: Vec<f32>,
    layers: Vec<Layer>,
}

/// Keys and values of the positions seen so far, per layer.
pub struct KvCache {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    len: usize,
}

impl KvCache {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Llama {
    pub fn load(path: &Path) -> Result<Self, GgufError> {
        let f = GgufFile::open(path)?;
        let g = &f.gguf;
        let arch = g.str("general.architecture")?.to_owned();
        let key = |k: &str| format!("{arch}.{k}");
        let hidden = g.u64(&key("embedding_length"))? as usize;
        let heads = g.u64(&key("attention.head_count"))? as usize;
        let cfg = LlamaConfig {
            layers: g.u64(&key("block_count"))? as usize,
            hidden,
            ffn: g.u64(&key("feed_forward_length"))? as usize,
            heads,
            kv_heads: g.u64(&key("attention.head_count_kv"))? as usize,
            head_dim: hidden / heads,
            rope_base: g.get(&key("rope.freq_base")).and_then(|v| v.as_f64()).unwrap_or(10000.0) as f32,
            eps: g.get(&key("attention.layer_norm_rms_epsilon")).and_then(|v| v.as_f64()).unwrap_or(1e-5) as f32,
            vocab: g.get("tokenizer.ggml.tokens").and_then(|v| v.as_array()).map_or(0, <[_]>::len),
            context: g.u64(&key("context_length"))? as usize,
        };
        let t = |name: &str| f.tensor_f32(name);
        let mut layers = Vec::with_capacity(cfg.layers);
        for i in 0..cfg.layers {
            let p = format!("blk.{i}");
            layers.push(Layer {
                attn_norm: t(&format!("{p}.attn_norm.weight"))?,
                wq: t(&format!("{p}.attn_q.weight"))?,
                wk: t(&format!("{p}.attn_k.weight"))?,
                wv: t(&format!("{p}.attn_v.weight"))?,
                wo: t(&format!("{p}.attn_output.weight"))?,
                ffn_norm: t(&format!("{p}.ffn_norm.weight"))?,
                w_gate: t(&format!("{p}.ffn_gate.weight"))?,
                w_up: t(&format!("{p}.ffn_up.weight"))?,
                w_down: t(&format!("{p}.ffn_down.weight"))?,
            });
        }
        let embed = t("token_embd.weight")?;
        if embed.len() != cfg.vocab * cfg.hidden {
            return Err(GgufError::Corrupt("token_embd does not match the vocabulary".into()));
        }
        Ok(Self { out_norm: t("output_norm.weight")?, embed, layers, cfg })
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache { k: vec![Vec::new(); self.cfg.layers], v: vec![Vec::new(); self.cfg.layers], len: 0 }
    }

    /// Rotates adjacent pairs (2i, 2i+1) of every head by position·θᵢ, the
    /// layout GGUF's permuted Q/K weights are made for.
    fn rope(&self, x: &mut [f32], heads: usize, pos0: usize) {
        let hd = self.cfg.head_dim;
        for (t, row) in x.chunks_exact_mut(heads * hd).enumerate() {
            let pos = (pos0 + t) as f32;
            for head in row.chunks_exact_mut(hd) {
                for i in 0..hd / 2 {
                    let theta = pos * self.cfg.rope_base.powf(-2.0 * i as f32 / hd as f32);
                    let (s, c) = theta.sin_cos();
                    let (a, b) = (head[2 * i], head[2 * i + 1]);
                    head[2 * i] = a * c - b * s;
                    head[2 * i + 1] = a * s + b * c;
                }
            }
        }
    }

    /// Runs `tokens` after what `cache` holds; returns the next-token logits
    /// of every new position (`[tokens × vocab]`), or of the last only.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache, all_logits: bool) -> Vec<f32> {
        let c = &self.cfg;
        let (t, h, hd) = (tokens.len(), c.hidden, c.head_dim);
        let (qd, kvd) = (c.heads * hd, c.kv_heads * hd);
        let pos0 = cache.len;
        let mut x = vec![0f32; t * h];
        for (row, &id) in x.chunks_exact_mut(h).zip(tokens) {
            row.copy_from_slice(&self.embed[id as usize * h..(id as usize + 1) * h]);
        }
        let mut hn = vec![0f32; t * h];
        let (mut q, mut k, mut v) = (vec![0f32; t * qd], vec![0f32; t * kvd], vec![0f32; t * kvd]);
        let mut ctx = vec![0f32; t * qd];
        let mut proj = vec![0f32; t * h];
        let (mut gate, mut up) = (vec![0f32; t * c.ffn], vec![0f32; t * c.ffn]);
        let scale = 1.0 / (hd as f32).sqrt();
        let group = c.heads / c.kv_heads;
        for (li, l) in self.layers.iter().enumerate() {
            cpu::rms_norm(&x, &l.attn_norm, h, c.eps, &mut hn);
            cpu::linear(&hn, &l.wq, None, t, h, qd, &mut q, Threads::All);
            cpu::linear(&hn, &l.wk, None, t, h, kvd, &mut k, Threads::All);
            cpu::linear(&hn, &l.wv, None, t, h, kvd, &mut v, Threads::All);
            self.rope(&mut q, c.heads, pos0);
            self.rope(&mut k, c.kv_heads, pos0);
            cache.k[li].extend_from_slice(&k);
            cache.v[li].extend_from_slice(&v);
            let (kc, vc) = (&cache.k[li], &cache.v[li]);
            let mut scores = vec![0f32; pos0 + t];
            for ti in 0..t {
                let visible = pos0 + ti + 1; // causal
                for head in 0..c.heads {
                    let kvh = head / group;
                    let qv = &q[ti * qd + head * hd..][..hd];
                    let mut max = f32::NEG_INFINITY;
                    for (j, s) in scores[..visible].iter_mut().enumerate() {
                        let kv = &kc[j * kvd + kvh * hd..][..hd];
                        *s = qv.iter().zip(kv).map(|(a, b)| a * b).sum::<f32>() * scale;
                        max = max.max(*s);
                    }
                    let mut sum = 0.0;
                    for s in scores[..visible].iter_mut() {
                        *s = (*s - max).exp();
                        sum += *s;
                    }
                    let out = &mut ctx[ti * qd + head * hd..][..hd];
                    out.fill(0.0);
                    for (j, s) in scores[..visible].iter().enumerate() {
                        let vv = &vc[j * kvd + kvh * hd..][..hd];
                        for (o, b) in out.iter_mut().zip(vv) {
                            *o += s / sum * b;
                        }
                    }
                }
            }
            cpu::linear(&ctx, &l.wo, None, t, qd, h, &mut proj, Threads::All);
            cpu::add_inplace(&mut x, &proj);
            cpu::rms_norm(&x, &l.ffn_norm, h, c.eps, &mut hn);
            cpu::linear(&hn, &l.w_gate, None, t, h, c.ffn, &mut gate, Threads::All);
            cpu::linear(&hn, &l.w_up, None, t, h, c.ffn, &mut up, Threads::All);
            cpu::swiglu_inplace(&mut gate, &up);
            cpu::linear(&gate, &l.w_down, None, t, c.ffn, h, &mut proj, Threads::All);
            cpu::add_inplace(&mut x, &proj);
        }
        cache.len += t;
        let rows = if all_logits { 0..t } else { t - 1..t };
        let n = rows.len();
        let mut last = vec![0f32; n * h];
        cpu::rms_norm(&x[rows.start * h..rows.end * h], &self.out_norm, h, c.eps, &mut last);
        let mut logits = vec![0f32; n * c.vocab];
        cpu::linear(&last, &self.embed, None, n, h, c.vocab, &mut logits, Threads::All);
        logits
    }
}
