//! A chat model ready to serve: SmolLM2's decoder, tokenizer and chat
//! template together, and the generation loop with stop conditions.

use crate::chat_template::{ChatTemplate, Message, TemplateError};
use crate::chat_tokenizer::{ChatTokenizer, TokenizerError};
use crate::llama::Llama;
use crate::sampling::{Sampler, SamplingParams};
use maas_gguf::{GgufError, GgufFile};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error("the prompt ({prompt} tokens) and max_tokens ({max}) exceed the context of {context} tokens")]
    TooLong { prompt: usize, max: usize, context: usize },
    #[error("cancelled")]
    Cancelled,
}

pub struct ChatModel {
    pub model: Llama,
    pub tokenizer: ChatTokenizer,
    template: ChatTemplate,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
}

#[derive(Debug, Clone)]
pub struct Generation {
    pub text: String,
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

impl ChatModel {
    pub fn load(path: &Path) -> Result<Self, ChatError> {
        let f = GgufFile::open(path)?;
        let tokenizer = ChatTokenizer::from_gguf(&f.gguf)?;
        let template = ChatTemplate::new(f.gguf.str("tokenizer.chat_template")?)?;
        drop(f);
        Ok(Self { model: Llama::load(path)?, tokenizer, template })
    }

    /// Prompt ids of a conversation, ready for the assistant's turn.
    pub fn chat_prompt(&self, messages: &[Message]) -> Result<Vec<u32>, ChatError> {
        Ok(self.template.encode(&self.tokenizer, messages, true)?)
    }

    /// Prompt ids of raw text; special-token text is parsed, as llama.cpp does.
    pub fn raw_prompt(&self, text: &str) -> Result<Vec<u32>, ChatError> {
        Ok(self.tokenizer.encode(text, true)?)
    }

    /// Generates after `prompt` until an end-of-generation token, a stop
    /// string (not included in the text) or `max_tokens`; `cancelled` is
    /// checked before every step.
    pub fn generate(&self, prompt: &[u32], params: SamplingParams, cancelled: &dyn Fn() -> bool) -> Result<Generation, ChatError> {
        self.generate_streaming(prompt, params, cancelled, &mut |_| {})
    }

    /// As [`Self::generate`], handing the text to `on_text` as it grows: only
    /// whole UTF-8 characters, and never text that could still turn out to be
    /// the start of a stop string.
    pub fn generate_streaming(
        &self,
        prompt: &[u32],
        params: SamplingParams,
        cancelled: &dyn Fn() -> bool,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Generation, ChatError> {
        let context = self.model.cfg.context;
        if prompt.is_empty() || prompt.len() + params.max_tokens > context {
            return Err(ChatError::TooLong { prompt: prompt.len(), max: params.max_tokens, context });
        }
        let stop = params.stop.clone();
        let max = params.max_tokens;
        let mut sampler = Sampler::new(params);
        let mut cache = self.model.new_cache();
        let mut logits = self.model.forward(prompt, &mut cache, false);
        let mut out: Vec<u32> = Vec::new();
        let mut finish = FinishReason::Length;
        let mut text = String::new();
        let hold = stop.iter().map(|s| s.len()).max().unwrap_or(1).saturating_sub(1);
        let mut emitted = 0usize;
        while out.len() < max {
            if cancelled() {
                return Err(ChatError::Cancelled);
            }
            let next = sampler.sample(&logits);
            if self.tokenizer.end_of_generation.contains(&next) {
                finish = FinishReason::Stop;
                break;
            }
            out.push(next);
            text = self.tokenizer.decode(&out)?;
            if let Some(cut) = stop.iter().filter(|s| !s.is_empty()).filter_map(|s| text.find(s.as_str())).min() {
                text.truncate(cut);
                finish = FinishReason::Stop;
                break;
            }
            // A trailing U+FFFD is a character whose bytes are not all here yet.
            let mut safe = text.trim_end_matches('\u{FFFD}').len().min(text.len().saturating_sub(hold));
            while !text.is_char_boundary(safe) {
                safe -= 1;
            }
            if safe > emitted {
                on_text(&text[emitted..safe]);
                emitted = safe;
            }
            if out.len() == max {
                break;
            }
            logits = self.model.forward(&[next], &mut cache, false);
        }
        if text.len() > emitted {
            on_text(&text[emitted..]);
        }
        Ok(Generation { text, finish_reason: finish, prompt_tokens: prompt.len(), completion_tokens: out.len() })
    }
}
