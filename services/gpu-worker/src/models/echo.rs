//! `echo`: returns its input text, after an optional delay that a cancel
//! interrupts within 10 ms. Used by platform tests and overhead benchmarks.
//! Runs on one device thread per slot.

use super::{CancelFlag, ModelError, ModelOutput};
use crate::runtime::{wrong_input, DeviceThreads, Health, Inbox, JobContext, Runtime};
use futures_util::future::BoxFuture;
use maas_core::models::{EchoInput, JobInput, ModelKind};
use serde_json::json;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};

const STEP: Duration = Duration::from_millis(10);

/// Runs one echo job on the calling thread.
pub fn echo(input: &EchoInput, cancel: &CancelFlag) -> Result<ModelOutput, ModelError> {
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

struct Request {
    input: EchoInput,
    cancel: CancelFlag,
    reply: oneshot::Sender<Result<ModelOutput, ModelError>>,
}

pub struct EchoRuntime {
    name: String,
    slots: u32,
    threads: DeviceThreads<Request>,
}

impl EchoRuntime {
    pub fn start(name: String, slots: u32) -> std::io::Result<Self> {
        let threads =
            DeviceThreads::start("echo", slots as usize, 1024, |inbox: &Inbox<Request>| {
                while let Ok(r) = inbox.recv() {
                    let out = echo(&r.input, &r.cancel);
                    let _ = r.reply.send(out);
                }
            })?;
        Ok(Self {
            name,
            slots,
            threads,
        })
    }
}

impl Runtime for EchoRuntime {
    fn model(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> ModelKind {
        ModelKind::Echo
    }

    fn slots(&self) -> u32 {
        self.slots
    }

    fn health(&self) -> watch::Receiver<Health> {
        self.threads.health()
    }

    fn run(
        &self,
        input: JobInput,
        ctx: JobContext,
    ) -> BoxFuture<'static, Result<ModelOutput, ModelError>> {
        let threads = self.threads.clone();
        Box::pin(async move {
            let JobInput::Echo(input) = input else {
                return Err(wrong_input(ModelKind::Echo, &input));
            };
            if ctx.cancel.is_cancelled() {
                return Err(ModelError::Cancelled);
            }
            let (reply, rx) = oneshot::channel();
            threads.send(Request {
                input,
                cancel: ctx.cancel,
                reply,
            })?;
            rx.await
                .map_err(|_| ModelError::Failed("the model thread stopped".into()))?
        })
    }

    fn panic_next(&self) {
        self.threads.panic_next();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(text: &str, delay_ms: Option<u64>) -> EchoInput {
        EchoInput {
            text: text.into(),
            delay_ms,
        }
    }

    #[test]
    fn echo_returns_its_text() {
        let out = echo(&input("héllo  big\tworld", None), &CancelFlag::default()).unwrap();
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
        let r = echo(&input("x", Some(60_000)), &flag);
        t.join().unwrap();
        assert!(matches!(r, Err(ModelError::Cancelled)));
        assert!(start.elapsed() < Duration::from_secs(5));
    }
}
