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
        _ => {
            if input.is_null() {
                return Err(InputError { param: "input".into(), message: "input is required".into() });
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
    fn only_catalogue_models_parse() {
        assert!(ModelName::parse("echo").is_some());
        assert!(ModelName::parse("gpt-4").is_none());
    }

    #[test]
    fn echo_input_is_checked_field_by_field() {
        let echo = ModelName::parse("echo").unwrap();
        assert!(validate_input(&echo, &json!({"text": "hi"})).is_ok());
        assert!(validate_input(&echo, &json!({"text": "hi", "delay_ms": 10})).is_ok());
        assert_eq!(validate_input(&echo, &json!({"text": 3})).unwrap_err().param, "input");
        assert!(validate_input(&echo, &json!({"text": "a", "delay_ms": "x"})).is_err());
        assert!(validate_input(&echo, &json!({"text": "a", "delay_ms": -1})).is_err());
        assert!(validate_input(&echo, &json!({"text": "a", "extra": 1})).is_err());
        assert_eq!(
            validate_input(&echo, &json!({"text": "a", "delay_ms": ECHO_MAX_DELAY_MS + 1})).unwrap_err().param,
            "input.delay_ms"
        );
    }
}
