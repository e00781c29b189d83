//! The model catalogue: which model names the platform knows, and the shape
//! of each model's job input, checked at the API edge.

use serde::Deserialize;
use serde_json::Value;

pub const ECHO: &str = "echo";
pub const MINILM: &str = "all-minilm-l6-v2";
pub const SMOLLM2: &str = "smollm2-135m-instruct";

/// Every model name the platform accepts.
pub const CATALOGUE: [&str; 3] = [ECHO, MINILM, SMOLLM2];

/// The longest delay an `echo` job may ask for (10 minutes).
pub const ECHO_MAX_DELAY_MS: u64 = 600_000;

/// A model name that is in the catalogue.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModelName(String);

impl ModelName {
    pub fn parse(s: &str) -> Option<Self> {
        CATALOGUE.contains(&s).then(|| Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Input of the built-in `echo` model.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EchoInput {
    pub text: String,
    #[serde(default)]
    pub delay_ms: Option<u64>,
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

/// The most tokens (prompt plus completion) a valid job can use: what a
/// token budget reserves at admission, so that settled usage can never
/// exceed it. Every tokenizer here makes at most one token per byte of text
/// (word pieces hold at least one character; byte-level BPE at least one
/// byte), and a chat job generates at most `max_tokens`.
pub fn token_bound(model: &ModelName, input: &Value) -> i64 {
    let bytes = |v: &Value| v.as_str().map_or(0, |s| s.len() as i64);
    match model.as_str() {
        // Echo counts words in and the same words out.
        ECHO => {
            2 * input
                .get("text")
                .and_then(Value::as_str)
                .map_or(0, |s| s.split_whitespace().count() as i64)
        }
        MINILM => match parse_embedding_input(input.get("input").unwrap_or(input)) {
            Ok(items) => items
                .iter()
                .map(|it| match it {
                    EmbeddingItem::Text(t) => (t.len() as i64 + 2).min(EMBED_MAX_PIECES),
                    EmbeddingItem::Ids(ids) => (ids.len() as i64 + 2).min(EMBED_MAX_PIECES),
                })
                .sum(),
            Err(_) => 0,
        },
        _ => {
            let messages: i64 = input
                .get("messages")
                .and_then(Value::as_array)
                .map_or(0, |m| {
                    m.iter()
                        .map(|m| bytes(&m["role"]) + bytes(&m["content"]) + CHAT_MESSAGE_TOKENS)
                        .sum()
                });
            let prompt = match input.get("prompt") {
                Some(Value::String(s)) => s.len() as i64,
                Some(Value::Array(ids)) => ids.len() as i64,
                _ => 0,
            };
            let max_tokens = input
                .get("max_tokens")
                .and_then(Value::as_i64)
                .unwrap_or(i64::from(CHAT_DEFAULT_MAX_TOKENS));
            messages + prompt + CHAT_TEMPLATE_TOKENS + max_tokens
        }
    }
}

impl ChatInput {
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

/// Checks a job's `input` against its model's schema.
pub fn validate_input(model: &ModelName, input: &Value) -> Result<(), InputError> {
    match model.as_str() {
        ECHO => {
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
            Ok(())
        }
        SMOLLM2 => {
            let parsed: ChatInput =
                serde_json::from_value(input.clone()).map_err(|e| InputError {
                    param: "input".into(),
                    message: format!("invalid input for the chat model: {e}"),
                })?;
            parsed.validate()
        }
        MINILM => {
            let inner = input.get("input").ok_or_else(|| InputError {
                param: "input.input".into(),
                message: "expected {\"input\": string | [string] | [int] | [[int]]}".into(),
            })?;
            parse_embedding_input(inner).map(|_| ())
        }
        _ => {
            if input.is_null() {
                return Err(InputError {
                    param: "input".into(),
                    message: "input is required".into(),
                });
            }
            Ok(())
        }
    }
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
    fn only_catalogue_models_parse() {
        assert!(ModelName::parse("echo").is_some());
        assert!(ModelName::parse("gpt-4").is_none());
    }

    #[test]
    fn echo_input_is_checked_field_by_field() {
        let echo = ModelName::parse("echo").unwrap();
        assert!(validate_input(&echo, &json!({"text": "hi"})).is_ok());
        assert!(validate_input(&echo, &json!({"text": "hi", "delay_ms": 10})).is_ok());
        assert_eq!(
            validate_input(&echo, &json!({"text": 3}))
                .unwrap_err()
                .param,
            "input"
        );
        assert!(validate_input(&echo, &json!({"text": "a", "delay_ms": "x"})).is_err());
        assert!(validate_input(&echo, &json!({"text": "a", "delay_ms": -1})).is_err());
        assert!(validate_input(&echo, &json!({"text": "a", "extra": 1})).is_err());
        assert_eq!(
            validate_input(
                &echo,
                &json!({"text": "a", "delay_ms": ECHO_MAX_DELAY_MS + 1})
            )
            .unwrap_err()
            .param,
            "input.delay_ms"
        );
    }
}
