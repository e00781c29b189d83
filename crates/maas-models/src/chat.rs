//! A chat model ready to serve: SmolLM2's decoder, tokenizer and chat
//! template together, and the generation loop with stop conditions.

use crate::chat_template::{ChatTemplate, Message, TemplateError};
use crate::chat_tokenizer::{ChatTokenizer, TokenizerError};
use crate::engine::{Engine, EngineConfig, Event, Request, TokenLogprob};
use crate::llama::Llama;
use crate::sampling::SamplingParams;
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
    TooLong {
        prompt: usize,
        max: usize,
        context: usize,
    },
    #[error("the prompt and max_tokens need {need} KV-cache positions, more than this worker's budget of {budget}")]
    OverBudget { need: usize, budget: usize },
    #[error("token id {id} is outside the vocabulary of {vocab}")]
    BadToken { id: u32, vocab: usize },
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
    /// Per generated token, when asked for.
    pub logprobs: Vec<TokenLogprob>,
}

impl ChatModel {
    pub fn load(path: &Path) -> Result<Self, ChatError> {
        let f = GgufFile::open(path)?;
        let tokenizer = ChatTokenizer::from_gguf(&f.gguf)?;
        let template = ChatTemplate::new(f.gguf.str("tokenizer.chat_template")?)?;
        drop(f);
        Ok(Self {
            model: Llama::load(path)?,
            tokenizer,
            template,
        })
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
    pub fn generate(
        &self,
        prompt: &[u32],
        params: SamplingParams,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Generation, ChatError> {
        self.generate_streaming(prompt, params, cancelled, &mut |_| {})
    }

    /// As [`Self::generate`], handing the text to `on_text` as it grows: only
    /// whole UTF-8 characters, and never text that could still turn out to be
    /// the start of a stop string. (One request alone through the batching
    /// engine.)
    pub fn generate_streaming(
        &self,
        prompt: &[u32],
        params: SamplingParams,
        cancelled: &dyn Fn() -> bool,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Generation, ChatError> {
        let mut result = None;
        {
            let mut engine = Engine::new(
                self,
                EngineConfig {
                    max_seqs: 1,
                    kv_budget_tokens: self.model.cfg.context,
                    step_tokens: 512,
                },
            );
            engine.submit(Request {
                prompt: prompt.to_vec(),
                params,
                logprobs: None,
                cancelled: Box::new(cancelled),
                on_event: Box::new(|e| match e {
                    Event::Text { text, .. } => on_text(&text),
                    Event::Done(r) => result = Some(r),
                }),
            });
            while engine.step() {}
        }
        result.unwrap_or(Err(ChatError::Cancelled))
    }
}
