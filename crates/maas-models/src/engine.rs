//! Continuous batching for the chat model.
//!
//! The engine keeps a set of running sequences and a FIFO of waiting ones.
//! Each [`Engine::step`] is one forward pass over a batch that mixes
//! sequences: every decoding sequence contributes its last token, and
//! sequences still reading their prompt contribute a chunk of it (chunked
//! prefill), within a per-step token budget, so that a long prompt never
//! stalls the others for more than one chunk. Sequences join and leave
//! between steps.
//!
//! KV-cache memory is reserved at admission: a sequence needs room for its
//! prompt plus `max_tokens`, and is admitted only while the reserved total
//! stays within the budget (otherwise it waits; one that could never fit is
//! refused at once). Nothing is pre-empted, so an admitted sequence always
//! finishes.

use crate::chat::{ChatError, ChatModel, FinishReason, Generation};
use crate::llama::{KvCache, Logits, Step};
use crate::sampling::{Sampler, SamplingParams};
use std::collections::VecDeque;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Most sequences decoding together.
    pub max_seqs: usize,
    /// KV-cache positions that may be reserved at once, over all sequences.
    pub kv_budget_tokens: usize,
    /// Most tokens in one forward pass (decode tokens plus prefill chunks).
    pub step_tokens: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_seqs: 16,
            kv_budget_tokens: 32_768,
            step_tokens: 256,
        }
    }
}

/// The log-probability of a generated token and, if asked, of the most
/// likely alternatives at that position (from the model's distribution
/// before temperature and filtering).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub id: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// What a request hears as it runs.
pub enum Event {
    /// New text (whole UTF-8 characters, never the possible start of a stop
    /// string) and the logprobs of the tokens generated since the last event.
    Text {
        text: String,
        logprobs: Vec<TokenLogprob>,
    },
    Done(Result<Generation, ChatError>),
}

pub struct Request<'a> {
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
    /// `Some(k)`: report each token's logprob and its top `k` alternatives.
    pub logprobs: Option<usize>,
    /// Checked before every step; a cancelled sequence leaves the batch.
    pub cancelled: Box<dyn Fn() -> bool + 'a>,
    pub on_event: Box<dyn FnMut(Event) + 'a>,
}

struct Seq<'a> {
    req: Request<'a>,
    sampler: Sampler,
    /// Prompt then generated tokens.
    tokens: Vec<u32>,
    prompt_len: usize,
    /// Positions already in the cache.
    fed: usize,
    cache: Option<KvCache>,
    need: usize,
    text: String,
    emitted: usize,
    hold: usize,
    logprobs: Vec<TokenLogprob>,
    sent_logprobs: usize,
    cancelled: bool,
}

pub struct Engine<'m, 'a> {
    model: &'m ChatModel,
    cfg: EngineConfig,
    waiting: VecDeque<Seq<'a>>,
    active: Vec<Seq<'a>>,
    reserved: usize,
    last_step: StepSize,
}

/// What the last step ran: sequences and tokens (for metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepSize {
    pub sequences: usize,
    pub tokens: usize,
}

/// Where the engine stands (for metrics and logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineLoad {
    pub running: usize,
    pub waiting: usize,
    pub kv_reserved_tokens: usize,
}

impl<'m, 'a> Engine<'m, 'a> {
    pub fn new(model: &'m ChatModel, mut cfg: EngineConfig) -> Self {
        cfg.max_seqs = cfg.max_seqs.max(1);
        cfg.step_tokens = cfg.step_tokens.max(cfg.max_seqs + 1);
        Self {
            model,
            cfg,
            waiting: VecDeque::new(),
            active: Vec::new(),
            reserved: 0,
            last_step: StepSize::default(),
        }
    }

    pub fn load(&self) -> EngineLoad {
        EngineLoad {
            running: self.active.len(),
            waiting: self.waiting.len(),
            kv_reserved_tokens: self.reserved,
        }
    }

    /// The size of the last step that ran.
    pub fn last_step(&self) -> StepSize {
        self.last_step
    }

    pub fn is_idle(&self) -> bool {
        self.active.is_empty() && self.waiting.is_empty()
    }

    /// Queues a request; one that can never run is answered at once.
    pub fn submit(&mut self, mut req: Request<'a>) {
        let context = self.model.model.cfg.context;
        let (prompt, max) = (req.prompt.len(), req.params.max_tokens);
        let refuse = if prompt == 0 || prompt + max > context {
            Some(ChatError::TooLong {
                prompt,
                max,
                context,
            })
        } else if prompt + max > self.cfg.kv_budget_tokens {
            Some(ChatError::OverBudget {
                need: prompt + max,
                budget: self.cfg.kv_budget_tokens,
            })
        } else {
            let vocab = self.model.model.cfg.vocab;
            req.prompt
                .iter()
                .find(|&&t| t as usize >= vocab)
                .map(|&t| ChatError::BadToken { id: t, vocab })
        };
        if let Some(e) = refuse {
            (req.on_event)(Event::Done(Err(e)));
            return;
        }
        let hold = req
            .params
            .stop
            .iter()
            .map(String::len)
            .max()
            .unwrap_or(1)
            .saturating_sub(1);
        let sampler = Sampler::new(req.params.clone());
        let tokens = req.prompt.clone();
        self.waiting.push_back(Seq {
            sampler,
            prompt_len: tokens.len(),
            tokens,
            fed: 0,
            cache: None,
            need: prompt + max,
            text: String::new(),
            emitted: 0,
            hold,
            logprobs: Vec::new(),
            sent_logprobs: 0,
            cancelled: false,
            req,
        });
    }

    /// Runs one step; returns false when there was nothing to run.
    pub fn step(&mut self) -> bool {
        // Cancelled requests leave before any compute.
        for s in self.waiting.iter_mut().chain(self.active.iter_mut()) {
            s.cancelled = s.cancelled || (s.req.cancelled)();
        }
        let mut kept = VecDeque::with_capacity(self.waiting.len());
        for mut s in self.waiting.drain(..) {
            if s.cancelled {
                (s.req.on_event)(Event::Done(Err(ChatError::Cancelled)));
            } else {
                kept.push_back(s);
            }
        }
        self.waiting = kept;
        let mut i = 0;
        while i < self.active.len() {
            if self.active[i].cancelled {
                let mut s = self.active.remove(i);
                self.reserved -= s.need;
                (s.req.on_event)(Event::Done(Err(ChatError::Cancelled)));
            } else {
                i += 1;
            }
        }
        // Admit in arrival order while there is a slot and KV room.
        while let Some(front) = self.waiting.front() {
            if self.active.len() >= self.cfg.max_seqs
                || self.reserved + front.need > self.cfg.kv_budget_tokens
            {
                break;
            }
            let mut s = self.waiting.pop_front().expect("front exists");
            s.cache = Some(self.model.model.cache_for(s.need));
            self.reserved += s.need;
            self.active.push(s);
        }
        if self.active.is_empty() {
            return false;
        }
        // Plan: decoders one token each, then prompt chunks, oldest first.
        let decoding = self
            .active
            .iter()
            .filter(|s| s.tokens.len() - s.fed == 1)
            .count();
        let mut left = self.cfg.step_tokens.saturating_sub(decoding);
        let mut take = vec![0usize; self.active.len()];
        for (t, s) in take.iter_mut().zip(&self.active) {
            let pending = s.tokens.len() - s.fed;
            if pending == 1 {
                *t = 1;
            } else if left > 0 {
                *t = pending.min(left);
                left -= *t;
            }
        }
        self.last_step = StepSize {
            sequences: take.iter().filter(|&&n| n > 0).count(),
            tokens: take.iter().sum(),
        };
        let logits = {
            let mut batch: Vec<Step<'_>> = Vec::new();
            let mut idx = Vec::new();
            for (i, (s, &n)) in self.active.iter_mut().zip(&take).enumerate() {
                if n == 0 {
                    continue;
                }
                let done_prompt = s.fed + n == s.tokens.len();
                let tokens = &s.tokens[s.fed..s.fed + n];
                let cache = s.cache.as_mut().expect("admitted sequences have a cache");
                let prompt = s.fed < s.prompt_len;
                batch.push(Step {
                    tokens,
                    cache,
                    logits: if done_prompt {
                        Logits::Last
                    } else {
                        Logits::None
                    },
                    prompt,
                });
                idx.push(i);
            }
            let out = self.model.model.step(&mut batch);
            idx.into_iter().zip(out).collect::<Vec<_>>()
        };
        for (i, &n) in take.iter().enumerate() {
            self.active[i].fed += n;
        }
        let mut finished = Vec::new();
        for (i, row) in logits {
            if row.is_empty() {
                continue;
            }
            if let Some(reason) = self.advance(i, &row) {
                finished.push((i, reason));
            }
        }
        // Remove from the back so indices stay valid (and order is kept).
        finished.sort_by_key(|f| std::cmp::Reverse(f.0));
        for (i, reason) in finished {
            let s = self.active.remove(i);
            self.reserved -= s.need;
            self.finish(s, reason);
        }
        true
    }

    /// Samples the next token of sequence `i` from its logits and handles
    /// the end conditions; returns the finish reason when it is done.
    fn advance(&mut self, i: usize, logits: &[f32]) -> Option<FinishReason> {
        let tok = &self.model.tokenizer;
        let s = &mut self.active[i];
        let next = s.sampler.sample(logits);
        if tok.end_of_generation.contains(&next) {
            return Some(FinishReason::Stop);
        }
        if let Some(k) = s.req.logprobs {
            s.logprobs.push(logprob_of(logits, next, k));
        }
        s.tokens.push(next);
        let generated = &s.tokens[s.prompt_len..];
        s.text = tok.decode(generated).unwrap_or_default();
        if let Some(cut) = s
            .req
            .params
            .stop
            .iter()
            .filter(|x| !x.is_empty())
            .filter_map(|x| s.text.find(x.as_str()))
            .min()
        {
            s.text.truncate(cut);
            return Some(FinishReason::Stop);
        }
        // A trailing U+FFFD is a character whose bytes are not all here yet.
        let mut safe = s
            .text
            .trim_end_matches('\u{FFFD}')
            .len()
            .min(s.text.len().saturating_sub(s.hold));
        while !s.text.is_char_boundary(safe) {
            safe -= 1;
        }
        if safe > s.emitted {
            let text = s.text[s.emitted..safe].to_owned();
            s.emitted = safe;
            let logprobs = s.logprobs[s.sent_logprobs..].to_vec();
            s.sent_logprobs = s.logprobs.len();
            (s.req.on_event)(Event::Text { text, logprobs });
        }
        if generated.len() >= s.req.params.max_tokens {
            return Some(FinishReason::Length);
        }
        None
    }

    fn finish(&self, mut s: Seq<'a>, reason: FinishReason) {
        if s.text.len() > s.emitted || s.logprobs.len() > s.sent_logprobs {
            let text = s.text.get(s.emitted..).unwrap_or_default().to_owned();
            let logprobs = s.logprobs[s.sent_logprobs..].to_vec();
            (s.req.on_event)(Event::Text { text, logprobs });
        }
        let g = Generation {
            text: std::mem::take(&mut s.text),
            finish_reason: reason,
            prompt_tokens: s.prompt_len,
            completion_tokens: s.tokens.len() - s.prompt_len,
            logprobs: std::mem::take(&mut s.logprobs),
        };
        (s.req.on_event)(Event::Done(Ok(g)));
    }
}

/// log-softmax of the chosen token and the `k` most likely ones.
fn logprob_of(logits: &[f32], id: u32, k: usize) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut e = logits.to_vec();
    maas_kernels::cpu::exp_scaled_inplace(&mut e, 1.0, max);
    let lse = max + e.iter().sum::<f32>().ln();
    let mut top = Vec::new();
    if k > 0 {
        let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
        let k = k.min(idx.len());
        idx.select_nth_unstable_by(k - 1, |a, b| {
            logits[*b as usize].total_cmp(&logits[*a as usize])
        });
        idx.truncate(k);
        idx.sort_by(|a, b| logits[*b as usize].total_cmp(&logits[*a as usize]));
        top = idx
            .into_iter()
            .map(|t| (t, logits[t as usize] - lse))
            .collect();
    }
    TokenLogprob {
        id,
        logprob: logits[id as usize] - lse,
        top,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logprobs_are_a_log_softmax_with_the_best_alternatives_first() {
        let logits = [1.0f32, 3.0, 2.0, -1.0];
        let lp = logprob_of(&logits, 2, 2);
        let z: f32 = logits.iter().map(|l| l.exp()).sum();
        assert!((lp.logprob - (2f32.exp() / z).ln()).abs() < 1e-6);
        assert_eq!(lp.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 2]);
        assert!((lp.top[0].1 - (3f32.exp() / z).ln()).abs() < 1e-6);
        assert!(logprob_of(&logits, 0, 0).top.is_empty());
    }
}
