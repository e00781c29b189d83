//! all-MiniLM-L6-v2: a 6-layer BERT encoder (hidden 384, 12 heads, FFN 1536)
//! with mean pooling and L2 normalisation, as sentence-transformers runs it.
//!
//! A batch is packed without padding: the sequences' tokens are concatenated,
//! every linear layer runs once over all of them, and attention runs per
//! sequence. Inputs longer than 256 word pieces (with [CLS] and [SEP]) are
//! truncated, as sentence-transformers does for this model.

use crate::weights::{Weights, WeightsError};
use maas_kernels::cpu::{self, Threads};
use std::path::Path;
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

/// Longest sequence, in word pieces including [CLS] and [SEP].
pub const MAX_TOKENS: usize = 256;
const CLS: u32 = 101;
const SEP: u32 = 102;

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error("model files: {0}")]
    Files(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("device: {0}")]
    Device(String),
}

/// One input: text, or word-piece ids of this model's vocabulary (wrapped in
/// [CLS] … [SEP] and truncated like text).
#[derive(Debug, Clone)]
pub enum EmbedInput {
    Text(String),
    Ids(Vec<u32>),
}

pub(crate) struct Layer {
    pub(crate) qkv_w: Vec<f32>,
    pub(crate) qkv_b: Vec<f32>,
    pub(crate) out_w: Vec<f32>,
    pub(crate) out_b: Vec<f32>,
    pub(crate) ln1_g: Vec<f32>,
    pub(crate) ln1_b: Vec<f32>,
    pub(crate) ff1_w: Vec<f32>,
    pub(crate) ff1_b: Vec<f32>,
    pub(crate) ff2_w: Vec<f32>,
    pub(crate) ff2_b: Vec<f32>,
    pub(crate) ln2_g: Vec<f32>,
    pub(crate) ln2_b: Vec<f32>,
    /// The four weight matrices (qkv, out, ff1, ff2) packed once here for
    /// the CPU kernels, so no call repacks them. The f32 copies above are
    /// what the GPU path uploads.
    pub(crate) packed: Linears,
}

/// The CPU form of one weight matrix, packed once at load.
pub(crate) enum Linear {
    /// f16 panels (`cpu::linear_packed`): half the bytes of f32 to stream;
    /// the arithmetic stays f32.
    F16(cpu::PackedF16),
    /// int8 per output channel (`cpu::linear_i8`): activations quantised per
    /// row at run time, integer sums (VNNI `vpdpbusd` where present).
    Int8(cpu::PackedI8),
}

/// A layer's four weight matrices: qkv, out, ff1, ff2.
pub(crate) struct Linears {
    /// What every token row runs on.
    main: [Linear; 4],
    /// In an int8 version, f16 copies of its int8 matrices for the [CLS] and
    /// [SEP] rows (see [`Precision::Int8`]).
    f16_rows: [Option<cpu::PackedF16>; 4],
}

impl Linears {
    fn f16(w: [&[f32]; 4], h: usize, f: usize) -> Self {
        let shapes = [(3 * h, h), (h, h), (f, h), (h, f)];
        Self {
            main: std::array::from_fn(|i| {
                let (n, k) = shapes[i];
                Linear::F16(cpu::PackedF16::pack(w[i], n, k))
            }),
            f16_rows: Default::default(),
        }
    }

    /// int8, smoothed with the calibration's activation ranges `amax`, for
    /// the matrices in [`INT8_MATRICES`], with f16 copies for the rows that
    /// stay f16.
    fn int8(w: [&[f32]; 4], amax: &LayerRanges, h: usize, f: usize) -> Self {
        let shapes = [(3 * h, h), (h, h), (f, h), (h, f)];
        let f16 = |i: usize| cpu::PackedF16::pack(w[i], shapes[i].0, shapes[i].1);
        Self {
            main: std::array::from_fn(|i| {
                let (n, k) = shapes[i];
                if INT8_MATRICES[i] {
                    Linear::Int8(cpu::PackedI8::quantize_smoothed(
                        w[i], n, k, &amax[i], SMOOTHING,
                    ))
                } else {
                    Linear::F16(f16(i))
                }
            }),
            f16_rows: std::array::from_fn(|i| INT8_MATRICES[i].then(|| f16(i))),
        }
    }

    /// `out = x · W[i]ᵀ + b` over `t` rows; in an int8 version the rows
    /// `f16_rows` (ascending) are then computed again in f16.
    fn run(&self, i: usize, x: &[f32], b: &[f32], t: usize, out: &mut [f32], f16_rows: &[usize]) {
        match &self.main[i] {
            Linear::F16(p) => cpu::linear_packed(x, p, Some(b), t, out, Threads::All),
            Linear::Int8(p) => cpu::linear_i8(x, p, Some(b), t, out, Threads::All),
        }
        let Some(p) = &self.f16_rows[i] else { return };
        if f16_rows.is_empty() {
            return;
        }
        let (k, n, r) = (p.k(), p.n(), f16_rows.len());
        let mut xs = Vec::with_capacity(r * k);
        for &row in f16_rows {
            xs.extend_from_slice(&x[row * k..(row + 1) * k]);
        }
        let mut ys = vec![0f32; r * n];
        cpu::linear_packed(&xs, p, Some(b), r, &mut ys, Threads::All);
        for (&row, y) in f16_rows.iter().zip(ys.chunks_exact(n)) {
            out[row * n..(row + 1) * n].copy_from_slice(y);
        }
    }
}

/// Per input channel, the largest |activation| that reached each of a
/// layer's four linear layers during calibration.
pub(crate) type LayerRanges = [Vec<f32>; 4];

/// How much of the activations' range moves into the weights (0: none,
/// 1: all) when an int8 version is smoothed.
pub(crate) const SMOOTHING: f32 = 0.5;

/// Which of qkv, out, ff1, ff2 an int8 version runs in int8 on the CPU:
/// all four, for every row but each sequence's [CLS] and [SEP]. Those two
/// rows carry far larger activations than the others in a few channels, and
/// in int8 they are where most of the error comes from. Measured on the
/// reference inputs, the worst cosine is 0.9992 with them in f16 and 0.9973
/// without. (The GPU keeps its own choice: `bert_gpu::INT8_MATRICES`.)
pub(crate) const INT8_MATRICES: [bool; 4] = [true, true, true, true];

/// The text an int8 version is calibrated on at load: varied prose,
/// questions, code, numbers and lists, so every channel's usual range shows.
/// (Not the accuracy test's inputs.)
const CALIBRATION: &[&str] = &[
    "The committee will meet on Thursday to review the budget for the coming year.",
    "How do I reset my password if I no longer have access to my email?",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "fn main() { let v: Vec<u32> = (0..10).map(|x| x * x).collect(); println!(\"{v:?}\"); }",
    "Order #48213 shipped on 2024-03-17: 3 items, total $129.95 (tax included).",
    "She walked along the quiet beach at dawn, listening to the waves and the gulls.",
    "Error: connection refused (os error 111) while contacting 10.0.0.12:5432",
    "Ingredients: two cups of flour, one egg, a pinch of salt, and warm milk.",
    "The stock market fell sharply after the central bank raised interest rates again.",
    "SELECT name, count(*) FROM users WHERE created_at > now() - interval '7 days' GROUP BY name;",
    "Why is the sky blue? Because air scatters short wavelengths more than long ones.",
    "Le chat dort sur le canapé pendant que la pluie tombe dehors.",
    "Q3 revenue grew 12% year over year, driven by subscriptions in Europe and Asia.",
    "1. Unplug the router. 2. Wait thirty seconds. 3. Plug it back in and wait for the light.",
    "I absolutely loved this movie!!! The soundtrack alone is worth the ticket :)",
    "Mitochondria are membrane-bound organelles that generate most of the cell's ATP.",
];

/// The precision of the encoder's linear layers (embeddings, attention,
/// LayerNorm and pooling stay f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// f16 weights, f32 arithmetic: within 1e-4 of the reference.
    #[default]
    F16,
    /// The four linear layers in int8 (weights per channel, smoothed with
    /// ranges calibrated at load; activations per row, asymmetric), except
    /// for the [CLS] and [SEP] rows, which stay f16.
    Int8,
}

impl Precision {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::F16 => "f16",
            Self::Int8 => "int8",
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f16" => Ok(Self::F16),
            "int8" => Ok(Self::Int8),
            _ => Err(format!("unknown precision '{s}' (expected f16 or int8)")),
        }
    }
}

thread_local! {
    /// The CPU forward pass's activations, reused between calls on a thread.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Largest activation buffer kept between calls (64 MiB: a batch of ~4,000
/// tokens); a larger batch allocates its own.
const SCRATCH_KEEP_FLOATS: usize = 16 << 20;

#[derive(Debug, Clone, serde::Deserialize)]
struct Config {
    hidden_size: usize,
    num_attention_heads: usize,
    num_hidden_layers: usize,
    intermediate_size: usize,
    vocab_size: usize,
    max_position_embeddings: usize,
    layer_norm_eps: f32,
    type_vocab_size: usize,
}

/// Where the encoder runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    /// CUDA device ordinal.
    Cuda(usize),
}

impl std::str::FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(Self::Cpu),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| format!("unknown device '{s}' (expected cpu or cuda:N)")),
        }
    }
}

/// The weights of one encoder, on the host.
struct HostWeights {
    word: Vec<f32>,
    pos: Vec<f32>,
    token_type0: Vec<f32>,
    emb_ln_g: Vec<f32>,
    emb_ln_b: Vec<f32>,
    layers: Vec<Layer>,
}

// One per loaded model: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
enum Backend {
    Cpu(HostWeights),
    Cuda(crate::bert_gpu::GpuWeights),
}

pub struct Embedder {
    cfg: Config,
    precision: Precision,
    tokenizer: Tokenizer,
    backend: Backend,
}

/// The output of one batch.
pub struct Embeddings {
    /// One unit-length vector per input.
    pub vectors: Vec<Vec<f32>>,
    /// Word pieces per input (after truncation), for usage accounting.
    pub tokens: Vec<usize>,
}

impl Embedder {
    /// Loads `config.json`, `tokenizer.json` and `model.safetensors` from `dir`, for the CPU.
    pub fn load(dir: &Path) -> Result<Self, EmbedError> {
        Self::load_on(dir, Device::Cpu)
    }

    /// Loads the model for `device` (its weights are uploaded there), in f16.
    pub fn load_on(dir: &Path, device: Device) -> Result<Self, EmbedError> {
        Self::load_with(dir, device, Precision::F16)
    }

    /// Loads the model for `device` with its linear layers in `precision`.
    pub fn load_with(dir: &Path, device: Device, precision: Precision) -> Result<Self, EmbedError> {
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name))
                .map_err(|e| EmbedError::Files(format!("{}: {e}", dir.join(name).display())))
        };
        let cfg: Config = serde_json::from_str(&read("config.json")?)
            .map_err(|e| EmbedError::Files(format!("config.json: {e}")))?;
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        // The file ships truncation at 128 and fixed padding; sentence-
        // transformers truncates at 256 and pads nothing that we would use.
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        tokenizer.with_padding(None);

        let w = Weights::open(&dir.join("model.safetensors"))?;
        let (h, f) = (cfg.hidden_size, cfg.intermediate_size);
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            let mut qkv_w = w.f32(&format!("{p}.attention.self.query.weight"), &[h, h])?;
            qkv_w.extend(w.f32(&format!("{p}.attention.self.key.weight"), &[h, h])?);
            qkv_w.extend(w.f32(&format!("{p}.attention.self.value.weight"), &[h, h])?);
            let mut qkv_b = w.f32(&format!("{p}.attention.self.query.bias"), &[h])?;
            qkv_b.extend(w.f32(&format!("{p}.attention.self.key.bias"), &[h])?);
            qkv_b.extend(w.f32(&format!("{p}.attention.self.value.bias"), &[h])?);
            let out_w = w.f32(&format!("{p}.attention.output.dense.weight"), &[h, h])?;
            let ff1_w = w.f32(&format!("{p}.intermediate.dense.weight"), &[f, h])?;
            let ff2_w = w.f32(&format!("{p}.output.dense.weight"), &[h, f])?;
            // f16 first: an int8 version is calibrated with it (below).
            layers.push(Layer {
                packed: Linears::f16([&qkv_w, &out_w, &ff1_w, &ff2_w], h, f),
                qkv_w,
                qkv_b,
                out_w,
                out_b: w.f32(&format!("{p}.attention.output.dense.bias"), &[h])?,
                ln1_g: w.f32(&format!("{p}.attention.output.LayerNorm.weight"), &[h])?,
                ln1_b: w.f32(&format!("{p}.attention.output.LayerNorm.bias"), &[h])?,
                ff1_w,
                ff1_b: w.f32(&format!("{p}.intermediate.dense.bias"), &[f])?,
                ff2_w,
                ff2_b: w.f32(&format!("{p}.output.dense.bias"), &[h])?,
                ln2_g: w.f32(&format!("{p}.output.LayerNorm.weight"), &[h])?,
                ln2_b: w.f32(&format!("{p}.output.LayerNorm.bias"), &[h])?,
            });
        }
        let token_types = w.f32(
            "embeddings.token_type_embeddings.weight",
            &[cfg.type_vocab_size, h],
        )?;
        let mut host = HostWeights {
            word: w.f32("embeddings.word_embeddings.weight", &[cfg.vocab_size, h])?,
            pos: w.f32(
                "embeddings.position_embeddings.weight",
                &[cfg.max_position_embeddings, h],
            )?,
            token_type0: token_types[..h].to_vec(),
            emb_ln_g: w.f32("embeddings.LayerNorm.weight", &[h])?,
            emb_ln_b: w.f32("embeddings.LayerNorm.bias", &[h])?,
            layers,
        };
        // int8: the activations' ranges per channel from an f16 pass over
        // the calibration text, then each linear layer quantised smoothed.
        let ranges = match precision {
            Precision::F16 => None,
            Precision::Int8 => {
                let mut ids = Vec::with_capacity(CALIBRATION.len());
                for text in CALIBRATION {
                    let e = tokenizer
                        .encode(*text, true)
                        .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
                    ids.push(e.get_ids().to_vec());
                }
                let mut ranges: Vec<LayerRanges> = (0..cfg.num_hidden_layers)
                    .map(|_| [vec![0.0; h], vec![0.0; h], vec![0.0; h], vec![0.0; f]])
                    .collect();
                forward_cpu(&cfg, &host, &ids, Some(&mut ranges));
                Some(ranges)
            }
        };
        if let (Device::Cpu, Some(ranges)) = (device, &ranges) {
            for (l, r) in host.layers.iter_mut().zip(ranges) {
                l.packed = Linears::int8([&l.qkv_w, &l.out_w, &l.ff1_w, &l.ff2_w], r, h, f);
            }
        }
        let backend = match device {
            Device::Cpu => Backend::Cpu(host),
            Device::Cuda(ordinal) => {
                if h / cfg.num_attention_heads != 32 {
                    return Err(EmbedError::Files(
                        "the CUDA attention kernel needs a head size of 32".into(),
                    ));
                }
                Backend::Cuda(crate::bert_gpu::GpuWeights::upload(
                    ordinal,
                    ranges.as_deref(),
                    &host.word,
                    &host.pos,
                    &host.token_type0,
                    &host.emb_ln_g,
                    &host.emb_ln_b,
                    &host.layers,
                )?)
            }
        };
        Ok(Self {
            backend,
            tokenizer,
            cfg,
            precision,
        })
    }

    /// The precision of the linear layers.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The device this model runs on.
    pub fn device(&self) -> Device {
        match &self.backend {
            Backend::Cpu(_) => Device::Cpu,
            Backend::Cuda(g) => Device::Cuda(g.ordinal),
        }
    }

    pub fn dim(&self) -> usize {
        self.cfg.hidden_size
    }

    /// Word-piece ids of each input, [CLS] … [SEP], truncated to 256.
    pub fn tokenize(&self, inputs: &[EmbedInput]) -> Result<Vec<Vec<u32>>, EmbedError> {
        inputs
            .iter()
            .map(|input| match input {
                EmbedInput::Text(t) => self
                    .tokenizer
                    .encode(t.as_str(), true)
                    .map(|e| e.get_ids().to_vec())
                    .map_err(|e| EmbedError::Tokenizer(e.to_string())),
                EmbedInput::Ids(ids) => {
                    if let Some(bad) = ids.iter().find(|&&i| i as usize >= self.cfg.vocab_size) {
                        return Err(EmbedError::InvalidInput(format!(
                            "token id {bad} is outside the vocabulary (0..{})",
                            self.cfg.vocab_size
                        )));
                    }
                    let mut v = Vec::with_capacity(ids.len().min(MAX_TOKENS - 2) + 2);
                    v.push(CLS);
                    v.extend(ids.iter().take(MAX_TOKENS - 2));
                    v.push(SEP);
                    Ok(v)
                }
            })
            .collect()
    }

    /// Embeds a batch of inputs.
    pub fn embed(&self, inputs: &[EmbedInput]) -> Result<Embeddings, EmbedError> {
        let ids = self.tokenize(inputs)?;
        let vectors = self.forward(&ids)?;
        Ok(Embeddings {
            tokens: ids.iter().map(Vec::len).collect(),
            vectors,
        })
    }

    /// Runs the encoder over tokenized sequences and pools them.
    pub fn forward(&self, ids: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, EmbedError> {
        match &self.backend {
            Backend::Cpu(w) => Ok(forward_cpu(&self.cfg, w, ids, None)),
            Backend::Cuda(g) => g.forward(&self.gpu_shape(), ids),
        }
    }

    fn gpu_shape(&self) -> crate::bert_gpu::Shape {
        crate::bert_gpu::Shape {
            hidden: self.cfg.hidden_size,
            ffn: self.cfg.intermediate_size,
            heads: self.cfg.num_attention_heads,
            eps: self.cfg.layer_norm_eps,
        }
    }
}

/// The encoder on the CPU. With `ranges`, also records per layer the largest
/// |activation| per channel that reaches each linear layer (calibration).
fn forward_cpu(
    cfg: &Config,
    w: &HostWeights,
    ids: &[Vec<u32>],
    mut ranges: Option<&mut [LayerRanges]>,
) -> Vec<Vec<f32>> {
    let (h, f, heads) = (
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.num_attention_heads,
    );
    let eps = cfg.layer_norm_eps;
    let mut seqs = Vec::with_capacity(ids.len());
    let mut t = 0;
    for s in ids {
        seqs.push((t, s.len()));
        t += s.len();
    }
    if t == 0 {
        return ids.iter().map(|_| vec![0.0; h]).collect();
    }
    // Embeddings: word + position + token type 0, then LayerNorm.
    // Activations live in one buffer per thread, kept between calls: a
    // large batch's fresh allocation would cost a page fault per 4 KiB.
    // Every element is written before it is read.
    let mut buf = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
    buf.resize(t * (6 * h + f), 0.0);
    let (x, rest) = buf.split_at_mut(t * h);
    let (qkv, rest) = rest.split_at_mut(t * 3 * h);
    let (ctx, rest) = rest.split_at_mut(t * h);
    let (proj, ff) = rest.split_at_mut(t * h);
    for (s, &(start, _)) in ids.iter().zip(&seqs) {
        for (p, &id) in s.iter().enumerate() {
            let row = &mut x[(start + p) * h..(start + p + 1) * h];
            let wr = &w.word[id as usize * h..(id as usize + 1) * h];
            let pe = &w.pos[p * h..(p + 1) * h];
            for i in 0..h {
                row[i] = wr[i] + pe[i] + w.token_type0[i];
            }
        }
    }
    cpu::layer_norm_inplace(x, h, &w.emb_ln_g, &w.emb_ln_b, eps);

    let mut record = |layer: usize, i: usize, x: &[f32]| {
        if let Some(r) = ranges.as_deref_mut() {
            let r = &mut r[layer][i];
            for row in x.chunks_exact(r.len()) {
                for (m, v) in r.iter_mut().zip(row) {
                    *m = m.max(v.abs());
                }
            }
        }
    };
    // The [CLS] and [SEP] rows: each sequence's first and last.
    let ends: Vec<usize> = seqs
        .iter()
        .flat_map(|&(start, len)| [start, start + len - 1].into_iter().take(len.min(2)))
        .collect();
    for (n, l) in w.layers.iter().enumerate() {
        let lin = &l.packed;
        record(n, 0, x);
        lin.run(0, x, &l.qkv_b, t, qkv, &ends);
        cpu::attention(qkv, &seqs, heads, h / heads, ctx);
        record(n, 1, ctx);
        lin.run(1, ctx, &l.out_b, t, proj, &ends);
        cpu::add_layer_norm_inplace(x, proj, h, &l.ln1_g, &l.ln1_b, eps);
        record(n, 2, x);
        lin.run(2, x, &l.ff1_b, t, ff, &ends);
        cpu::gelu_inplace(ff);
        record(n, 3, ff);
        lin.run(3, ff, &l.ff2_b, t, proj, &ends);
        cpu::add_layer_norm_inplace(x, proj, h, &l.ln2_g, &l.ln2_b, eps);
    }
    let mut pooled = vec![0.0f32; seqs.len() * h];
    cpu::mean_pool(x, h, &seqs, &mut pooled);
    cpu::l2_normalize_inplace(&mut pooled, h);
    // Kept for the next call unless it is unusually large.
    if buf.capacity() <= SCRATCH_KEEP_FLOATS {
        SCRATCH.with(|s| *s.borrow_mut() = buf);
    }
    pooled.chunks_exact(h).map(<[f32]>::to_vec).collect()
}
