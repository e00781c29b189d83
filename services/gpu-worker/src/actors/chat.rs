//! The chat model on its own thread, fed by a channel with a oneshot reply
//! per request. Requests run one after another for now (continuous batching
//! is the next step); a cancel stops a generation before its next token.

use crate::models::{CancelFlag, ModelError, ModelOutput};
use maas_core::models::ChatInput;
use maas_models::chat::{ChatError, ChatModel, FinishReason};
use maas_models::chat_template::Message;
use maas_models::sampling::SamplingParams;
use serde_json::{json, Value};
use std::sync::mpsc;
use tokio::sync::oneshot;

struct Request {
    input: ChatInput,
    cancel: CancelFlag,
    sink: Option<TextSink>,
    reply: oneshot::Sender<Result<ModelOutput, ModelError>>,
}

/// Where streamed text goes as it is generated.
pub type TextSink = tokio::sync::mpsc::UnboundedSender<String>;

#[derive(Clone)]
pub struct ChatHandle {
    tx: mpsc::SyncSender<Request>,
}

impl ChatHandle {
    pub fn start(model: ChatModel) -> Self {
        let (tx, rx) = mpsc::sync_channel::<Request>(256);
        std::thread::Builder::new()
            .name("chat".into())
            .spawn(move || {
                while let Ok(r) = rx.recv() {
                    if r.cancel.is_cancelled() || r.reply.is_closed() {
                        let _ = r.reply.send(Err(ModelError::Cancelled));
                        continue;
                    }
                    let out = run(&model, &r.input, &r.cancel, r.sink.as_ref());
                    let _ = r.reply.send(out);
                }
            })
            .expect("spawning the chat thread");
        Self { tx }
    }

    pub async fn run(&self, input: &Value, cancel: CancelFlag, sink: Option<TextSink>) -> Result<ModelOutput, ModelError> {
        let input: ChatInput = serde_json::from_value(input.clone()).map_err(|e| ModelError::InvalidInput(e.to_string()))?;
        input.validate().map_err(|e| ModelError::InvalidInput(e.message))?;
        let (reply, rx) = oneshot::channel();
        self.tx.try_send(Request { input, cancel, sink, reply }).map_err(|_| ModelError::Failed("the chat queue is full".into()))?;
        rx.await.map_err(|_| ModelError::Failed("the chat thread stopped".into()))?
    }
}

fn run(model: &ChatModel, input: &ChatInput, cancel: &CancelFlag, sink: Option<&TextSink>) -> Result<ModelOutput, ModelError> {
    let prompt = match (&input.messages, &input.prompt) {
        (Some(m), _) => {
            let msgs: Vec<Message> = m.iter().map(|m| Message { role: m.role.clone(), content: m.content.clone() }).collect();
            model.chat_prompt(&msgs)
        }
        (None, Some(p)) => model.raw_prompt(p),
        (None, None) => return Err(ModelError::InvalidInput("give either messages or prompt".into())),
    }
    .map_err(|e| ModelError::Failed(e.to_string()))?;
    let params = SamplingParams {
        temperature: input.temperature.unwrap_or(1.0),
        top_p: input.top_p.unwrap_or(1.0),
        top_k: input.top_k.unwrap_or(0) as usize,
        seed: input.seed,
        max_tokens: input.max_tokens.unwrap_or(256) as usize,
        stop: input.stops(),
    };
    let mut on_text = |t: &str| {
        if let Some(s) = sink {
            let _ = s.send(t.to_owned());
        }
    };
    match model.generate_streaming(&prompt, params, &|| cancel.is_cancelled(), &mut on_text) {
        Ok(g) => Ok(ModelOutput {
            output: json!({
                "text": g.text,
                "finish_reason": if g.finish_reason == FinishReason::Stop { "stop" } else { "length" },
                "prompt_tokens": g.prompt_tokens,
                "completion_tokens": g.completion_tokens,
            }),
            prompt_tokens: g.prompt_tokens as i64,
            completion_tokens: g.completion_tokens as i64,
        }),
        Err(ChatError::Cancelled) => Err(ModelError::Cancelled),
        Err(e @ ChatError::TooLong { .. }) => Err(ModelError::InvalidInput(e.to_string())),
        Err(e) => Err(ModelError::Failed(e.to_string())),
    }
}
