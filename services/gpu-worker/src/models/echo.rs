//! `echo`: returns its input text, after an optional delay that a cancel
//! interrupts within 10 ms. Used by platform tests and overhead benchmarks.

use super::{CancelFlag, Model, ModelError, ModelOutput};
use maas_core::models::EchoInput;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

pub struct Echo;

const STEP: Duration = Duration::from_millis(10);

impl Model for Echo {
    fn name(&self) -> &'static str {
        maas_core::models::ECHO
    }

    fn run(&mut self, input: &Value, cancel: &CancelFlag) -> Result<ModelOutput, ModelError> {
        let input: EchoInput = serde_json::from_value(input.clone())
            .map_err(|e| ModelError::InvalidInput(e.to_string()))?;
        let until = Instant::now() + Duration::from_millis(input.delay_ms.unwrap_or(0));
        loop {
            if cancel.is_cancelled() {
                return Err(ModelError::Cancelled);
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(STEP));
        }
        // A "token" of echo is a word: counted in, and out again.
        let words = input.text.split_whitespace().count() as i64;
        Ok(ModelOutput {
            output: json!({"text": input.text}),
            prompt_tokens: words,
            completion_tokens: words,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_returns_its_text() {
        let out = Echo
            .run(
                &json!({"text": "héllo  big\tworld"}),
                &CancelFlag::default(),
            )
            .unwrap();
        assert_eq!(out.output, json!({"text": "héllo  big\tworld"}));
        assert_eq!(
            (out.prompt_tokens, out.completion_tokens),
            (3, 3),
            "a word is a token, in and out"
        );
    }

    #[test]
    fn a_cancel_interrupts_the_delay() {
        let flag = CancelFlag::default();
        let f2 = flag.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            f2.cancel();
        });
        let start = Instant::now();
        let r = Echo.run(&json!({"text": "x", "delay_ms": 60_000}), &flag);
        t.join().unwrap();
        assert!(matches!(r, Err(ModelError::Cancelled)));
        assert!(start.elapsed() < Duration::from_secs(5));
    }
}
