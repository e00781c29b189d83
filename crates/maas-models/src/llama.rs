//! A llama-architecture decoder (SmolLM2-135M-Instruct) on the CPU, read
//! from GGUF: token embeddings, RMSNorm, rotary positions, grouped-query
//! attention with a KV cache, SwiGLU MLP, output head tied to the embeddings.
//!
//! Weights stay in their GGUF block format (Q4_1 and Q8_0 here) and go
//! through the quantised kernels; Q/K/V and gate/up are stacked so that one
//! pass over the input computes each group. Other tensor types are
//! dequantised to f32 at load.
//!
//! [`Llama::step`] runs one batch that mixes sequences: some decoding one
//! token, others prefilling a chunk of their prompt; every matmul runs over
//! all their rows at once, attention per sequence against its own cache.

use maas_gguf::{GgufError, GgufFile, TensorType};
use maas_kernels::cpu::{self, KvSegment, QMatrix, QPath, QType, Threads};
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

/// A weight matrix `[rows × cols]`: quantised blocks, or f32.
enum Weight {
    Quant(QMatrix),
    F32 {
        w: Vec<f32>,
        rows: usize,
        cols: usize,
    },
}

impl Weight {
    /// Loads tensors with the same width, stacked in the order given.
    fn load(f: &GgufFile, names: &[String]) -> Result<Self, GgufError> {
        let mut parts = Vec::new();
        for name in names {
            let t = f
                .gguf
                .tensor(name)
                .ok_or_else(|| GgufError::Missing(name.clone()))?;
            let cols = *t
                .dims
                .first()
                .ok_or_else(|| GgufError::Corrupt(format!("{name} has no dimensions")))?
                as usize;
            let rows = t.elements() / cols.max(1);
            parts.push((t, rows, cols));
        }
        let kind = |k: TensorType| match k {
            TensorType::Q4_1 => Some(QType::Q4_1),
            TensorType::Q8_0 => Some(QType::Q8_0),
            _ => None,
        };
        let first = parts[0].0.kind;
        if let Some(q) = kind(first).filter(|_| parts.iter().all(|p| p.0.kind == first)) {
            let mut mats = Vec::new();
            for (t, rows, cols) in &parts {
                mats.push(
                    QMatrix::from_blocks(q, *rows, *cols, f.tensor_bytes(t).to_vec())
                        .map_err(|e| GgufError::Corrupt(format!("{}: {e}", t.name)))?,
                );
            }
            let refs: Vec<&QMatrix> = mats.iter().collect();
            return Ok(Weight::Quant(
                QMatrix::concat(&refs).map_err(|e| GgufError::Corrupt(e.to_string()))?,
            ));
        }
        let cols = parts[0].2;
        let mut w = Vec::new();
        for (t, _, c) in &parts {
            if *c != cols {
                return Err(GgufError::Corrupt(format!(
                    "{} differs in width from {}",
                    t.name, parts[0].0.name
                )));
            }
            w.extend(f.tensor_f32(&t.name)?);
        }
        Ok(Weight::F32 {
            rows: w.len() / cols,
            w,
            cols,
        })
    }

    fn rows(&self) -> usize {
        match self {
            Weight::Quant(q) => q.rows,
            Weight::F32 { rows, .. } => *rows,
        }
    }

    fn cols(&self) -> usize {
        match self {
            Weight::Quant(q) => q.cols,
            Weight::F32 { cols, .. } => *cols,
        }
    }

    /// `out[m × rows] = x[m × cols] · Wᵀ`; the first `decode` rows take the
    /// 8-bit path, the rest (prompt rows) the f32 tile path. Each row's
    /// result depends only on that row and its kind, never on the batch.
    fn matmul(&self, x: &[f32], m: usize, decode: usize, out: &mut [f32]) {
        match self {
            Weight::Quant(q) => {
                let (xd, xp) = x.split_at(decode * q.cols);
                let (od, op) = out.split_at_mut(decode * q.rows);
                cpu::q_linear_path(QPath::Int8, xd, q, decode, od, Threads::All);
                cpu::q_linear_path(QPath::Tiles, xp, q, m - decode, op, Threads::All);
            }
            Weight::F32 { w, rows, cols } => {
                cpu::linear(x, w, None, m, *cols, *rows, out, Threads::All)
            }
        }
    }

    fn row(&self, r: usize, out: &mut [f32]) {
        match self {
            Weight::Quant(q) => q.row(r, out),
            Weight::F32 { w, cols, .. } => out.copy_from_slice(&w[r * cols..(r + 1) * cols]),
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Weight::Quant(q) => q.bytes(),
            Weight::F32 { w, .. } => w.len() * 4,
        }
    }
}

struct Layer {
    attn_norm: Vec<f32>,
    /// Q, K and V stacked: `[(heads + 2·kv_heads)·head_dim × hidden]`.
    wqkv: Weight,
    wo: Weight,
    ffn_norm: Vec<f32>,
    /// Gate and up stacked: `[2·ffn × hidden]`.
    w_gate_up: Weight,
    w_down: Weight,
}

pub struct Llama {
    pub cfg: LlamaConfig,
    embed: Weight,
    out_norm: Vec<f32>,
    layers: Vec<Layer>,
    /// cos and sin of position·θᵢ, `[context × head_dim/2]` each.
    rope_cos: Vec<f32>,
    rope_sin: Vec<f32>,
}

/// Keys and values of the positions seen so far, per layer, as f16 bits.
#[derive(Clone)]
pub struct KvCache {
    k: Vec<Vec<u16>>,
    v: Vec<Vec<u16>>,
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

/// Which logits a batch entry wants back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    None,
    Last,
    All,
}

/// One sequence's share of a batch: new tokens after what its cache holds.
pub struct Step<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut KvCache,
    pub logits: Logits,
    /// Prompt tokens (prefill: f32 tile path) or a generated token (decode:
    /// 8-bit path). Fixing the path by the token's role, not by the batch,
    /// keeps a sequence's output independent of what it is batched with.
    pub prompt: bool,
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
            head_dim: hidden / heads.max(1),
            rope_base: g
                .get(&key("rope.freq_base"))
                .and_then(|v| v.as_f64())
                .unwrap_or(10000.0) as f32,
            eps: g
                .get(&key("attention.layer_norm_rms_epsilon"))
                .and_then(|v| v.as_f64())
                .unwrap_or(1e-5) as f32,
            vocab: g
                .get("tokenizer.ggml.tokens")
                .and_then(|v| v.as_array())
                .map_or(0, <[_]>::len),
            context: g.u64(&key("context_length"))? as usize,
        };
        if cfg.heads == 0
            || cfg.kv_heads == 0
            || !cfg.heads.is_multiple_of(cfg.kv_heads)
            || !cfg.head_dim.is_multiple_of(2)
            || cfg.context == 0
        {
            return Err(GgufError::Corrupt(format!(
                "unsupported attention shape: {cfg:?}"
            )));
        }
        let v = |name: &str| f.tensor_f32(name);
        let w = |names: &[&str]| {
            Weight::load(
                &f,
                &names.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(),
            )
        };
        let (qd, kvd) = (cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim);
        let mut layers = Vec::with_capacity(cfg.layers);
        for i in 0..cfg.layers {
            let p = format!("blk.{i}");
            let l = Layer {
                attn_norm: v(&format!("{p}.attn_norm.weight"))?,
                wqkv: w(&[
                    &format!("{p}.attn_q.weight"),
                    &format!("{p}.attn_k.weight"),
                    &format!("{p}.attn_v.weight"),
                ])?,
                wo: w(&[&format!("{p}.attn_output.weight")])?,
                ffn_norm: v(&format!("{p}.ffn_norm.weight"))?,
                w_gate_up: w(&[
                    &format!("{p}.ffn_gate.weight"),
                    &format!("{p}.ffn_up.weight"),
                ])?,
                w_down: w(&[&format!("{p}.ffn_down.weight")])?,
            };
            let shapes = [
                (l.wqkv.rows(), l.wqkv.cols(), qd + 2 * kvd, hidden),
                (l.wo.rows(), l.wo.cols(), hidden, qd),
                (l.w_gate_up.rows(), l.w_gate_up.cols(), 2 * cfg.ffn, hidden),
                (l.w_down.rows(), l.w_down.cols(), hidden, cfg.ffn),
            ];
            if shapes.iter().any(|(r, c, wr, wc)| r != wr || c != wc)
                || l.attn_norm.len() != hidden
                || l.ffn_norm.len() != hidden
            {
                return Err(GgufError::Corrupt(format!(
                    "{p}: weight shapes do not match the configuration"
                )));
            }
            layers.push(l);
        }
        let embed = w(&["token_embd.weight"])?;
        if embed.rows() != cfg.vocab || embed.cols() != cfg.hidden {
            return Err(GgufError::Corrupt(
                "token_embd does not match the vocabulary".into(),
            ));
        }
        let half = cfg.head_dim / 2;
        let (mut rope_cos, mut rope_sin) = (
            Vec::with_capacity(cfg.context * half),
            Vec::with_capacity(cfg.context * half),
        );
        for pos in 0..cfg.context {
            for i in 0..half {
                let theta = pos as f64
                    * f64::from(cfg.rope_base).powf(-2.0 * i as f64 / cfg.head_dim as f64);
                rope_cos.push(theta.cos() as f32);
                rope_sin.push(theta.sin() as f32);
            }
        }
        Ok(Self {
            out_norm: v("output_norm.weight")?,
            embed,
            layers,
            cfg,
            rope_cos,
            rope_sin,
        })
    }

    /// Bytes the weights take in memory.
    pub fn weight_bytes(&self) -> usize {
        self.embed.bytes()
            + self
                .layers
                .iter()
                .map(|l| l.wqkv.bytes() + l.wo.bytes() + l.w_gate_up.bytes() + l.w_down.bytes())
                .sum::<usize>()
    }

    pub fn new_cache(&self) -> KvCache {
        self.cache_for(0)
    }

    /// A cache with room for `tokens` positions reserved up front.
    pub fn cache_for(&self, tokens: usize) -> KvCache {
        let kvd = self.cfg.kv_heads * self.cfg.head_dim;
        let mk = || {
            (0..self.cfg.layers)
                .map(|_| Vec::with_capacity(tokens * kvd))
                .collect()
        };
        KvCache {
            k: mk(),
            v: mk(),
            len: 0,
        }
    }

    /// Rotates adjacent pairs (2i, 2i+1) of every head by position·θᵢ, the
    /// layout GGUF's permuted Q/K weights are made for.
    fn rope(&self, row: &mut [f32], pos: usize) {
        let half = self.cfg.head_dim / 2;
        let (cos, sin) = (
            &self.rope_cos[pos * half..][..half],
            &self.rope_sin[pos * half..][..half],
        );
        for head in row.chunks_exact_mut(self.cfg.head_dim) {
            for i in 0..half {
                let (a, b) = (head[2 * i], head[2 * i + 1]);
                head[2 * i] = a * cos[i] - b * sin[i];
                head[2 * i + 1] = a * sin[i] + b * cos[i];
            }
        }
    }

    /// Runs `tokens` after what `cache` holds; returns the next-token logits
    /// of every new position (`[tokens × vocab]`), or of the last only. One
    /// token runs as a decode step, several as a prompt.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache, all_logits: bool) -> Vec<f32> {
        let logits = if all_logits {
            Logits::All
        } else {
            Logits::Last
        };
        self.step(&mut [Step {
            tokens,
            cache,
            logits,
            prompt: tokens.len() > 1,
        }])
        .pop()
        .unwrap_or_default()
    }

    /// One batch: every entry's tokens run after its own cache, all rows
    /// through each matmul together. Returns each entry's logits as asked
    /// (`[rows × vocab]`, empty for [`Logits::None`]).
    ///
    /// Panics if a token id is outside the vocabulary or a sequence would
    /// pass the context length: callers check both first.
    pub fn step(&self, batch: &mut [Step<'_>]) -> Vec<Vec<f32>> {
        let c = &self.cfg;
        let (h, hd) = (c.hidden, c.head_dim);
        let (qd, kvd) = (c.heads * hd, c.kv_heads * hd);
        let qkv_w = qd + 2 * kvd;
        let t: usize = batch.iter().map(|s| s.tokens.len()).sum();
        if t == 0 {
            return batch.iter().map(|_| Vec::new()).collect();
        }
        // (first row, rows, cached positions before) per entry: decode rows
        // first, then prompt rows, so each kind is one block of rows.
        let mut spans = vec![(0, 0, 0); batch.len()];
        let mut row0 = 0;
        for prompt in [false, true] {
            for (s, span) in batch
                .iter()
                .zip(spans.iter_mut())
                .filter(|(s, _)| s.prompt == prompt)
            {
                assert!(
                    s.cache.len + s.tokens.len() <= c.context,
                    "sequence passes the context length"
                );
                *span = (row0, s.tokens.len(), s.cache.len);
                row0 += s.tokens.len();
            }
        }
        let decode: usize = batch
            .iter()
            .filter(|s| !s.prompt)
            .map(|s| s.tokens.len())
            .sum();
        let mut x = vec![0f32; t * h];
        for (s, &(r0, _, _)) in batch.iter().zip(&spans) {
            for (i, &id) in s.tokens.iter().enumerate() {
                assert!(
                    (id as usize) < c.vocab,
                    "token id {id} outside the vocabulary"
                );
                self.embed
                    .row(id as usize, &mut x[(r0 + i) * h..(r0 + i + 1) * h]);
            }
        }
        let mut hn = vec![0f32; t * h];
        let mut qkv = vec![0f32; t * qkv_w];
        let mut q = vec![0f32; t * qd];
        let mut ctx = vec![0f32; t * qd];
        let mut proj = vec![0f32; t * h];
        let mut gate_up = vec![0f32; t * 2 * c.ffn];
        let mut act = vec![0f32; t * c.ffn];
        for (li, l) in self.layers.iter().enumerate() {
            cpu::rms_norm(&x, &l.attn_norm, h, c.eps, &mut hn);
            l.wqkv.matmul(&hn, t, decode, &mut qkv);
            for (s, &(r0, rows, pos0)) in batch.iter_mut().zip(&spans) {
                for i in 0..rows {
                    let src = &mut qkv[(r0 + i) * qkv_w..(r0 + i + 1) * qkv_w];
                    let (qs, kv) = src.split_at_mut(qd);
                    self.rope(qs, pos0 + i);
                    self.rope(&mut kv[..kvd], pos0 + i);
                    q[(r0 + i) * qd..(r0 + i + 1) * qd].copy_from_slice(qs);
                    cpu::push_f16(&mut s.cache.k[li], &kv[..kvd]);
                    cpu::push_f16(&mut s.cache.v[li], &kv[kvd..]);
                }
            }
            let segs: Vec<KvSegment<'_>> = batch
                .iter()
                .zip(&spans)
                .map(|(s, &(row0, rows, pos0))| KvSegment {
                    row0,
                    rows,
                    pos0,
                    k: &s.cache.k[li],
                    v: &s.cache.v[li],
                })
                .collect();
            cpu::causal_attention(&q, &segs, c.heads, c.kv_heads, hd, &mut ctx);
            l.wo.matmul(&ctx, t, decode, &mut proj);
            cpu::add_inplace(&mut x, &proj);
            cpu::rms_norm(&x, &l.ffn_norm, h, c.eps, &mut hn);
            l.w_gate_up.matmul(&hn, t, decode, &mut gate_up);
            for (gu, a) in gate_up
                .chunks_exact(2 * c.ffn)
                .zip(act.chunks_exact_mut(c.ffn))
            {
                a.copy_from_slice(&gu[..c.ffn]);
                cpu::swiglu_inplace(a, &gu[c.ffn..]);
            }
            l.w_down.matmul(&act, t, decode, &mut proj);
            cpu::add_inplace(&mut x, &proj);
        }
        for (s, &(_, rows, _)) in batch.iter_mut().zip(&spans) {
            s.cache.len += rows;
        }
        // The head runs once over every row that any entry wants, decode
        // rows first (the same split as above).
        let mut rows = Vec::new();
        let mut head_decode = 0;
        for prompt in [false, true] {
            for (s, &(r0, n, _)) in batch.iter().zip(&spans).filter(|(s, _)| s.prompt == prompt) {
                let before = rows.len();
                match s.logits {
                    Logits::None => {}
                    Logits::Last => rows.push(r0 + n - 1),
                    Logits::All => rows.extend(r0..r0 + n),
                }
                if !prompt {
                    head_decode += rows.len() - before;
                }
            }
        }
        let mut picked = vec![0f32; rows.len() * h];
        for (dst, &r) in picked.chunks_exact_mut(h).zip(&rows) {
            cpu::rms_norm(&x[r * h..(r + 1) * h], &self.out_norm, h, c.eps, dst);
        }
        let mut logits = vec![0f32; rows.len() * c.vocab];
        self.embed
            .matmul(&picked, rows.len(), head_decode, &mut logits);
        // Back to the callers' order.
        let mut out = vec![Vec::new(); batch.len()];
        let mut at = 0;
        for prompt in [false, true] {
            for (i, (s, &(_, n, _))) in batch
                .iter()
                .zip(&spans)
                .enumerate()
                .filter(|(_, (s, _))| s.prompt == prompt)
            {
                let k = match s.logits {
                    Logits::None => 0,
                    Logits::Last => 1,
                    Logits::All => n,
                };
                out[i] = logits[at * c.vocab..(at + k) * c.vocab].to_vec();
                at += k;
            }
        }
        out
    }
}
