//! Models as types: each model kind (how a model is run) with its
//! capabilities and its job input, parsed once at the API edge and decoded
//! once in the worker; and the catalogue of built-in models, the only place a
//! model is known by name.
//!
//! Adding a model kind is one [`ModelKind`] variant, one input type (a
//! [`JobInput`] variant) and one runtime in the worker: every `match` on
//! either enum is exhaustive, so the compiler lists what else must say
//! something about the new kind.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// How a model is run, and so which input it takes and what it can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// The built-in test model: echoes its text after a delay.
    Echo,
    /// A sentence-embedding encoder (BERT family).
    Embedder,
    /// A causal language model served by the continuous-batching engine.
    Chat,
}

/// What a model kind can be asked for, by endpoint family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// `POST /v1/embeddings`.
    pub embeds: bool,
    /// `POST /v1/chat/completions` and `/v1/completions`.
    pub generates: bool,
}

impl ModelKind {
    pub const ALL: [ModelKind; 3] = [ModelKind::Echo, ModelKind::Embedder, ModelKind::Chat];

    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::Echo => "echo",
            ModelKind::Embedder => "embedder",
            ModelKind::Chat => "chat",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    pub fn capabilities(self) -> Capabilities {
        match self {
            ModelKind::Echo => Capabilities {
                embeds: false,
                generates: false,
            },
            ModelKind::Embedder => Capabilities {
                embeds: true,
                generates: false,
            },
            ModelKind::Chat => Capabilities {
                embeds: false,
                generates: true,
            },
        }
    }

    /// Parses and checks a job's `input` for this kind: the one place input
    /// is read, at the API edge and (once more, from the stored row) in the
    /// worker.
    pub fn parse_input(self, input: &Value) -> Result<JobInput, InputError> {
        match self {
            ModelKind::Echo => EchoInput::parse(input).map(JobInput::Echo),
            ModelKind::Embedder => EmbedInput::parse(input).map(JobInput::Embed),
            ModelKind::Chat => {
                let parsed: ChatInput =
                    serde_json::from_value(input.clone()).map_err(|e| InputError {
                        param: "input".into(),
                        message: format!("invalid input for a chat model: {e}"),
                    })?;
                parsed.validate()?;
                Ok(JobInput::Chat(parsed))
            }
        }
    }
}

/// A version's runtime settings, as registered with it (immutable, like the
/// version). Unknown fields are refused, so a typo is a 400, not a setting
/// silently ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionSettings {
    /// Concurrent jobs per worker. A worker's own per-model entry in
    /// `MAAS_WORKER_SLOTS` still wins (it knows its hardware).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots: Option<u32>,
    /// An embedder's batch budget, in tokens per forward pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_batch_tokens: Option<usize>,
    /// An embedder's weight precision: `f16` (the default) or `int8`
    /// (docs/models.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<String>,
}

impl VersionSettings {
    /// The precisions an embedder version may ask for.
    pub const EMBEDDER_PRECISIONS: [&'static str; 2] = ["f16", "int8"];

    /// Parses and checks a version's settings for a model of `kind`; the
    /// error names the offending field.
    pub fn parse(kind: ModelKind, v: &Value) -> Result<Self, InputError> {
        if !v.is_object() {
            return Err(InputError {
                message: "settings must be an object".into(),
                param: "settings".into(),
            });
        }
        let s: VersionSettings = serde_json::from_value(v.clone()).map_err(|e| InputError {
            message: format!("settings: {e}"),
            param: "settings".into(),
        })?;
        let bad = |field: &str, message: String| InputError {
            message,
            param: format!("settings.{field}"),
        };
        if s.slots.is_some_and(|n| !(1..=1024).contains(&n)) {
            return Err(bad("slots", "slots must be between 1 and 1024".into()));
        }
        if let Some(t) = s.max_batch_tokens {
            if kind != ModelKind::Embedder {
                return Err(bad(
                    "max_batch_tokens",
                    format!("a {} model has no batch budget", kind.as_str()),
                ));
            }
            if !(256..=1_048_576).contains(&t) {
                return Err(bad(
                    "max_batch_tokens",
                    "max_batch_tokens must be between 256 and 1048576".into(),
                ));
            }
        }
        if let Some(p) = &s.precision {
            if kind != ModelKind::Embedder {
                return Err(bad(
                    "precision",
                    format!("a {} model's precision is that of its files", kind.as_str()),
                ));
            }
            if !Self::EMBEDDER_PRECISIONS.contains(&p.as_str()) {
                return Err(bad(
                    "precision",
                    format!("precision must be one of {:?}", Self::EMBEDDER_PRECISIONS),
                ));
            }
        }
        Ok(s)
    }
}

/// The longest delay an `echo` job may ask for (10 minutes).
pub const ECHO_MAX_DELAY_MS: u64 = 600_000;

/// A job's input, typed by its model's kind.
#[derive(Debug, Clone)]
pub enum JobInput {
    Echo(EchoInput),
    Embed(EmbedInput),
    Chat(ChatInput),
}

impl JobInput {
    pub fn kind(&self) -> ModelKind {
        match self {
            JobInput::Echo(_) => ModelKind::Echo,
            JobInput::Embed(_) => ModelKind::Embedder,
            JobInput::Chat(_) => ModelKind::Chat,
        }
    }

    /// The stored form (what `GET /v1/jobs/{id}` shows and the worker decodes).
    pub fn to_value(&self) -> Value {
        match self {
            JobInput::Echo(e) => serde_json::to_value(e).unwrap_or(Value::Null),
            JobInput::Embed(e) => e.to_value(),
            JobInput::Chat(c) => serde_json::to_value(c).unwrap_or(Value::Null),
        }
    }

    /// Whether the caller asked to receive the output as it is generated.
    pub fn streams(&self) -> bool {
        matches!(self, JobInput::Chat(c) if c.stream)
    }

    /// The most tokens (prompt plus completion) this job can use: what a
    /// token budget reserves at admission, so that settled usage can never
    /// exceed it. Every tokenizer here makes at most one token per byte of
    /// text (word pieces hold at least one character; byte-level BPE at
    /// least one byte), and a chat job generates at most `max_tokens`.
    pub fn token_bound(&self) -> i64 {
        match self {
            // Echo counts words in and the same words out.
            JobInput::Echo(e) => 2 * e.text.split_whitespace().count() as i64,
            JobInput::Embed(e) => e
                .items
                .iter()
                .map(|it| match it {
                    EmbeddingItem::Text(t) => (t.len() as i64 + 2).min(EMBED_MAX_PIECES),
                    EmbeddingItem::Ids(ids) => (ids.len() as i64 + 2).min(EMBED_MAX_PIECES),
                })
                .sum(),
            JobInput::Chat(c) => {
                let messages: i64 = c.messages.as_ref().map_or(0, |m| {
                    m.iter()
                        .map(|m| (m.role.len() + m.content.len()) as i64 + CHAT_MESSAGE_TOKENS)
                        .sum()
                });
                let prompt = match &c.prompt {
                    Some(Prompt::Text(s)) => s.len() as i64,
                    Some(Prompt::Ids(ids)) => ids.len() as i64,
                    None => 0,
                };
                messages + prompt + CHAT_TEMPLATE_TOKENS + c.max_tokens_or_default()
            }
        }
    }

    /// Tokens the job is expected to use, for tokens-per-minute limits: text
    /// at about 4 bytes a token, token ids one each, plus what it may
    /// generate. At least 1.
    pub fn estimate_tokens(&self) -> i64 {
        let text = |s: &str| s.len().div_ceil(4) as i64;
        let n = match self {
            JobInput::Echo(e) => text(&e.text),
            JobInput::Embed(e) => e
                .items
                .iter()
                .map(|it| match it {
                    EmbeddingItem::Text(t) => text(t),
                    EmbeddingItem::Ids(ids) => ids.len() as i64,
                })
                .sum(),
            JobInput::Chat(c) => {
                let messages: i64 = c
                    .messages
                    .as_ref()
                    .map_or(0, |m| m.iter().map(|m| text(&m.content)).sum());
                let prompt = match &c.prompt {
                    Some(Prompt::Text(s)) => text(s),
                    Some(Prompt::Ids(ids)) => ids.len() as i64,
                    None => 0,
                };
                messages + prompt + c.max_tokens_or_default()
            }
        };
        n.max(1)
    }
}

/// Input of the built-in `echo` model.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EchoInput {
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
}

impl EchoInput {
    fn parse(input: &Value) -> Result<Self, InputError> {
        let parsed: EchoInput = serde_json::from_value(input.clone()).map_err(|e| InputError {
            param: "input".into(),
            message: format!("invalid input for model 'echo': {e}; expected {{\"text\": string, \"delay_ms\"?: integer}}"),
        })?;
        if parsed.delay_ms.unwrap_or(0) > ECHO_MAX_DELAY_MS {
            return Err(InputError {
                param: "input.delay_ms".into(),
                message: format!("input.delay_ms must be at most {ECHO_MAX_DELAY_MS}"),
            });
        }
        Ok(parsed)
    }
}

/// Input of an embedder job: `{"input": ...}` in any of OpenAI's forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbedInput {
    pub items: Vec<EmbeddingItem>,
}

impl EmbedInput {
    fn parse(input: &Value) -> Result<Self, InputError> {
        let inner = input.get("input").ok_or_else(|| InputError {
            param: "input.input".into(),
            message: "expected {\"input\": string | [string] | [int] | [[int]]}".into(),
        })?;
        parse_embedding_input(inner).map(|items| Self { items })
    }

    fn to_value(&self) -> Value {
        let items: Vec<Value> = self
            .items
            .iter()
            .map(|i| match i {
                EmbeddingItem::Text(t) => Value::String(t.clone()),
                EmbeddingItem::Ids(ids) => json!(ids),
            })
            .collect();
        json!({ "input": items })
    }
}

/// Most inputs in one embeddings request.
pub const EMBED_MAX_INPUTS: usize = 2048;
/// Most characters (over all text inputs) in one embeddings request.
pub const EMBED_MAX_CHARS: usize = 2_000_000;
/// Most token ids (over all token-id inputs) in one embeddings request.
pub const EMBED_MAX_IDS: usize = 524_288;

/// One input of an embeddings request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmbeddingItem {
    Text(String),
    Ids(Vec<u32>),
}

/// Parses OpenAI's embeddings `input`: a string, an array of strings, an
/// array of token ids, or an array of such arrays, within the request limits.
pub fn parse_embedding_input(v: &Value) -> Result<Vec<EmbeddingItem>, InputError> {
    let err = |m: String| InputError {
        param: "input".into(),
        message: m,
    };
    let bad = || {
        err("input must be a string, an array of strings, an array of token ids or an array of such arrays".into())
    };
    let ids = |a: &[Value]| -> Result<Vec<u32>, InputError> {
        a.iter()
            .map(|x| {
                x.as_u64()
                    .filter(|n| *n <= u64::from(u32::MAX))
                    .map(|n| n as u32)
                    .ok_or_else(bad)
            })
            .collect()
    };
    let items = match v {
        Value::String(s) => vec![EmbeddingItem::Text(s.clone())],
        Value::Array(items) if items.is_empty() => {
            return Err(err("input must not be empty".into()))
        }
        Value::Array(items) => match &items[0] {
            Value::String(_) => items
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(|s| EmbeddingItem::Text(s.into()))
                        .ok_or_else(bad)
                })
                .collect::<Result<_, _>>()?,
            Value::Number(_) => vec![EmbeddingItem::Ids(ids(items)?)],
            Value::Array(_) => items
                .iter()
                .map(|x| {
                    x.as_array()
                        .ok_or_else(bad)
                        .and_then(|a| ids(a))
                        .map(EmbeddingItem::Ids)
                })
                .collect::<Result<_, _>>()?,
            _ => return Err(bad()),
        },
        _ => return Err(bad()),
    };
    if items.len() > EMBED_MAX_INPUTS {
        return Err(err(format!(
            "at most {EMBED_MAX_INPUTS} inputs per request (got {})",
            items.len()
        )));
    }
    let chars: usize = items
        .iter()
        .map(|i| {
            if let EmbeddingItem::Text(t) = i {
                t.chars().count()
            } else {
                0
            }
        })
        .sum();
    if chars > EMBED_MAX_CHARS {
        return Err(err(format!(
            "at most {EMBED_MAX_CHARS} characters per request (got {chars})"
        )));
    }
    let n_ids: usize = items
        .iter()
        .map(|i| {
            if let EmbeddingItem::Ids(v) = i {
                v.len()
            } else {
                0
            }
        })
        .sum();
    if n_ids > EMBED_MAX_IDS {
        return Err(err(format!(
            "at most {EMBED_MAX_IDS} token ids per request (got {n_ids})"
        )));
    }
    if items
        .iter()
        .any(|i| matches!(i, EmbeddingItem::Ids(v) if v.is_empty()))
    {
        return Err(err("a token-id input must not be empty".into()));
    }
    Ok(items)
}

/// One chat message.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// `stop`: one string or several.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

/// A raw prompt: text (special-token text is parsed) or token ids.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Ids(Vec<u32>),
}

/// Most alternatives per token that `logprobs` may ask for.
pub const CHAT_MAX_TOP_LOGPROBS: u32 = 20;

/// Longest prompt, in token ids, a request may send.
pub const CHAT_MAX_PROMPT_IDS: usize = 8192;

/// Input of a chat model job: a conversation or a raw prompt, and sampling.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChatInput {
    #[serde(default)]
    pub messages: Option<Vec<ChatMessage>>,
    #[serde(default)]
    pub prompt: Option<Prompt>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub top_k: Option<u32>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub stop: Option<Stop>,
    /// Send the text as it is generated (to the API instance waiting for it).
    #[serde(default)]
    pub stream: bool,
    /// Report each generated token's logprob and this many alternatives.
    #[serde(default)]
    pub logprobs: Option<u32>,
}

/// Longest generation one request may ask for.
pub const CHAT_MAX_TOKENS: u32 = 4096;

/// Generation length when a request does not set `max_tokens`.
pub const CHAT_DEFAULT_MAX_TOKENS: u32 = 256;

/// Tokens the chat template may add: role markers per message, and the
/// default system message when the conversation has none.
const CHAT_TEMPLATE_TOKENS: i64 = 128;
const CHAT_MESSAGE_TOKENS: i64 = 8;

/// Longest embedding input, in word pieces with [CLS] and [SEP]; longer
/// inputs are truncated.
pub const EMBED_MAX_PIECES: i64 = 256;

impl ChatInput {
    /// The generation length asked for, or the default.
    pub fn max_tokens_or_default(&self) -> i64 {
        i64::from(self.max_tokens.unwrap_or(CHAT_DEFAULT_MAX_TOKENS))
    }

    pub fn stops(&self) -> Vec<String> {
        match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        }
    }

    /// Checks the fields' ranges; `param` names the offending field.
    pub fn validate(&self) -> Result<(), InputError> {
        let err = |param: &str, message: String| InputError {
            param: param.into(),
            message,
        };
        match (&self.messages, &self.prompt) {
            (Some(m), None) => {
                if m.is_empty() {
                    return Err(err("messages", "messages must not be empty".into()));
                }
                if let Some(bad) = m
                    .iter()
                    .find(|m| !["system", "user", "assistant"].contains(&m.role.as_str()))
                {
                    return Err(err(
                        "messages",
                        format!("unknown role '{}' (system, user or assistant)", bad.role),
                    ));
                }
            }
            (None, Some(Prompt::Text(_))) => {}
            (None, Some(Prompt::Ids(ids))) => {
                if ids.is_empty() || ids.len() > CHAT_MAX_PROMPT_IDS {
                    return Err(err(
                        "prompt",
                        format!("a prompt of token ids must hold 1 to {CHAT_MAX_PROMPT_IDS} ids"),
                    ));
                }
            }
            _ => return Err(err("input", "give either messages or prompt".into())),
        }
        if self
            .max_tokens
            .is_some_and(|m| m == 0 || m > CHAT_MAX_TOKENS)
        {
            return Err(err(
                "max_tokens",
                format!("max_tokens must be between 1 and {CHAT_MAX_TOKENS}"),
            ));
        }
        if self.temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
            return Err(err(
                "temperature",
                "temperature must be between 0 and 2".into(),
            ));
        }
        if self.top_p.is_some_and(|p| !(p > 0.0 && p <= 1.0)) {
            return Err(err("top_p", "top_p must be in (0, 1]".into()));
        }
        if self.top_k.is_some_and(|k| k > 1000) {
            return Err(err("top_k", "top_k must be at most 1000".into()));
        }
        if self.logprobs.is_some_and(|k| k > CHAT_MAX_TOP_LOGPROBS) {
            return Err(err(
                "top_logprobs",
                format!("at most {CHAT_MAX_TOP_LOGPROBS} alternatives per token"),
            ));
        }
        let stops = self.stops();
        if stops.len() > 4 || stops.iter().any(|s| s.is_empty() || s.len() > 256) {
            return Err(err(
                "stop",
                "at most 4 stop strings of 1 to 256 bytes".into(),
            ));
        }
        Ok(())
    }
}

/// Why an input was refused; `param` names the offending field for the
/// OpenAI-style error object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputError {
    pub param: String,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn embedding_inputs_take_every_openai_form_within_limits() {
        assert_eq!(
            parse_embedding_input(&json!("hi")).unwrap(),
            vec![EmbeddingItem::Text("hi".into())]
        );
        assert_eq!(parse_embedding_input(&json!(["a", "b"])).unwrap().len(), 2);
        assert_eq!(
            parse_embedding_input(&json!([1, 2, 3])).unwrap(),
            vec![EmbeddingItem::Ids(vec![1, 2, 3])]
        );
        assert_eq!(
            parse_embedding_input(&json!([[1], [2, 3]])).unwrap().len(),
            2
        );
        for bad in [
            json!([]),
            json!([1, "a"]),
            json!([-1]),
            json!({"x": 1}),
            json!(null),
            json!([[]]),
            json!([true]),
        ] {
            assert!(parse_embedding_input(&bad).is_err(), "{bad}");
        }
        let many: Vec<String> = (0..=EMBED_MAX_INPUTS).map(|i| i.to_string()).collect();
        assert!(parse_embedding_input(&json!(many)).is_err());
    }

    #[test]
    fn version_settings_are_checked_for_their_kind() {
        let ok = VersionSettings::parse(
            ModelKind::Embedder,
            &json!({"slots": 8, "max_batch_tokens": 4096, "precision": "f16"}),
        )
        .unwrap();
        assert_eq!(ok.slots, Some(8));
        assert_eq!(ok.max_batch_tokens, Some(4096));
        let int8 =
            VersionSettings::parse(ModelKind::Embedder, &json!({"precision": "int8"})).unwrap();
        assert_eq!(int8.precision.as_deref(), Some("int8"));
        assert_eq!(
            VersionSettings::parse(ModelKind::Echo, &json!({})).unwrap(),
            VersionSettings::default()
        );
        for (kind, bad, param) in [
            (ModelKind::Embedder, json!({"slot": 8}), "settings"),
            (ModelKind::Embedder, json!([]), "settings"),
            (ModelKind::Embedder, json!({"slots": 0}), "settings.slots"),
            (
                ModelKind::Embedder,
                json!({"max_batch_tokens": 10}),
                "settings.max_batch_tokens",
            ),
            (
                ModelKind::Chat,
                json!({"max_batch_tokens": 4096}),
                "settings.max_batch_tokens",
            ),
            (
                ModelKind::Embedder,
                json!({"precision": "f8"}),
                "settings.precision",
            ),
            (
                ModelKind::Chat,
                json!({"precision": "f16"}),
                "settings.precision",
            ),
        ] {
            let e = VersionSettings::parse(kind, &bad).unwrap_err();
            assert_eq!(e.param, param, "{bad}: {}", e.message);
        }
    }

    #[test]
    fn kinds_parse_by_name_and_each_has_its_capabilities() {
        assert_eq!(ModelKind::parse("gpt-4"), None);
        for k in ModelKind::ALL {
            assert_eq!(ModelKind::parse(k.as_str()), Some(k));
        }
        assert!(ModelKind::Embedder.capabilities().embeds);
        assert!(!ModelKind::Embedder.capabilities().generates);
        assert!(ModelKind::Chat.capabilities().generates);
    }

    #[test]
    fn echo_input_is_checked_field_by_field() {
        let echo = ModelKind::Echo;
        assert!(echo.parse_input(&json!({"text": "hi"})).is_ok());
        assert!(echo
            .parse_input(&json!({"text": "hi", "delay_ms": 10}))
            .is_ok());
        assert_eq!(
            echo.parse_input(&json!({"text": 3})).unwrap_err().param,
            "input"
        );
        assert!(echo
            .parse_input(&json!({"text": "a", "delay_ms": "x"}))
            .is_err());
        assert!(echo
            .parse_input(&json!({"text": "a", "delay_ms": -1}))
            .is_err());
        assert!(echo.parse_input(&json!({"text": "a", "extra": 1})).is_err());
        assert_eq!(
            echo.parse_input(&json!({"text": "a", "delay_ms": ECHO_MAX_DELAY_MS + 1}))
                .unwrap_err()
                .param,
            "input.delay_ms"
        );
    }

    #[test]
    fn stored_inputs_decode_to_the_same_input() {
        for (kind, v) in [
            (ModelKind::Echo, json!({"text": "a b", "delay_ms": 5})),
            (ModelKind::Embedder, json!({"input": "one"})),
            (ModelKind::Embedder, json!({"input": [[1, 2], [3]]})),
            (
                ModelKind::Chat,
                json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}),
            ),
            (
                ModelKind::Chat,
                json!({"prompt": [1, 2, 3], "stream": true}),
            ),
        ] {
            let parsed = kind.parse_input(&v).unwrap();
            assert_eq!(parsed.kind(), kind);
            let again = kind.parse_input(&parsed.to_value()).unwrap();
            assert_eq!(again.to_value(), parsed.to_value(), "{v}");
            assert_eq!(again.token_bound(), parsed.token_bound());
        }
        assert!(ModelKind::Chat
            .parse_input(&json!({"prompt": "x", "stream": true}))
            .unwrap()
            .streams());
    }

    #[test]
    fn token_bounds_and_estimates_follow_each_kind() {
        let echo = ModelKind::Echo
            .parse_input(&json!({"text": "a b c"}))
            .unwrap();
        assert_eq!(echo.token_bound(), 6);
        let embed = ModelKind::Embedder
            .parse_input(&json!({"input": ["abcdefgh", "x".repeat(1000)]}))
            .unwrap();
        assert_eq!(embed.token_bound(), 10 + EMBED_MAX_PIECES);
        let ids = ModelKind::Embedder
            .parse_input(&json!({"input": [[1, 2, 3], [4]]}))
            .unwrap();
        assert_eq!(ids.estimate_tokens(), 4);
        let chat = ModelKind::Chat
            .parse_input(&json!({"prompt": "abcd", "max_tokens": 10}))
            .unwrap();
        assert_eq!(chat.token_bound(), 4 + CHAT_TEMPLATE_TOKENS + 10);
        assert_eq!(chat.estimate_tokens(), 1 + 10);
        let default = ModelKind::Chat
            .parse_input(&json!({"prompt": "abcd"}))
            .unwrap();
        assert_eq!(
            default.estimate_tokens(),
            1 + i64::from(CHAT_DEFAULT_MAX_TOKENS)
        );
        let empty = ModelKind::Echo.parse_input(&json!({"text": ""})).unwrap();
        assert_eq!(empty.estimate_tokens(), 1);
    }
}
