//! The chat model on its own thread, running the continuous-batching engine:
//! requests arrive on a channel (with a oneshot reply each) and join the
//! running batch between steps; each sequence leaves when it ends, when its
//! job is cancelled, or when the job's waiter has gone.

use crate::models::{CancelFlag, ModelError, ModelOutput};
use crate::runtime::{wrong_input, DeviceThreads, Health, Inbox, JobContext, Runtime};
use futures_util::future::BoxFuture;
use maas_core::messages::Piece;
use maas_core::models::{ChatInput, JobInput, ModelKind, Prompt};
use maas_models::chat::{ChatError, ChatModel, FinishReason, Generation};
use maas_models::chat_template::Message;
use maas_models::chat_tokenizer::ChatTokenizer;
use maas_models::engine::{Engine, EngineConfig, Event, Request as EngineRequest, TokenLogprob};
use maas_models::sampling::SamplingParams;
use serde_json::{json, Value};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Instant;
use tokio::sync::{oneshot, watch};

struct Request {
    input: ChatInput,
    /// When the job was created: time to first token counts from here.
    origin: Instant,
    cancel: CancelFlag,
    sink: Option<TextSink>,
    reply: oneshot::Sender<Result<ModelOutput, ModelError>>,
}

/// Where streamed text goes as it is generated.
pub type TextSink = tokio::sync::mpsc::UnboundedSender<Piece>;

/// The chat model's runtime: the handle the supervisor sends work through.
#[derive(Clone)]
pub struct ChatHandle {
    name: String,
    slots: u32,
    threads: DeviceThreads<Request>,
}

impl ChatHandle {
    pub fn start(
        name: String,
        slots: u32,
        model: ChatModel,
        cfg: EngineConfig,
    ) -> std::io::Result<Self> {
        let label = name.clone();
        let threads = DeviceThreads::start("chat", 1, 1024, move |inbox| {
            serve(&model, &label, cfg.clone(), inbox)
        })?;
        Ok(Self {
            name,
            slots,
            threads,
        })
    }
}

impl Runtime for ChatHandle {
    fn model(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> ModelKind {
        ModelKind::Chat
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
            let JobInput::Chat(input) = input else {
                return Err(wrong_input(ModelKind::Chat, &input));
            };
            let (reply, rx) = oneshot::channel();
            threads.send(Request {
                input,
                origin: ctx.origin,
                cancel: ctx.cancel,
                sink: ctx.sink,
                reply,
            })?;
            rx.await
                .map_err(|_| ModelError::Failed("the chat thread stopped".into()))?
        })
    }

    fn panic_next(&self) {
        self.threads.panic_next();
    }
}

/// The model thread: waits while idle, otherwise takes whatever has arrived
/// and runs one step.
fn serve(model: &ChatModel, label: &str, cfg: EngineConfig, rx: &Inbox<Request>) {
    let mut engine = Engine::new(model, cfg);
    loop {
        if engine.is_idle() {
            match rx.recv() {
                Ok(r) => admit(model, label, &mut engine, r),
                Err(_) => return,
            }
        }
        while let Ok(r) = rx.try_recv() {
            admit(model, label, &mut engine, r);
        }
        if engine.step() {
            let size = engine.last_step();
            let model = [label];
            crate::metrics::BATCH_SIZE
                .with_label_values(&model)
                .observe(size.sequences as f64);
            crate::metrics::BATCH_TOKENS
                .with_label_values(&model)
                .observe(size.tokens as f64);
        }
    }
}

fn admit<'m>(model: &'m ChatModel, label: &str, engine: &mut Engine<'m, 'm>, r: Request) {
    let Request {
        input,
        origin,
        cancel,
        sink,
        reply,
    } = r;
    let prompt = match (&input.messages, &input.prompt) {
        (Some(m), _) => model.chat_prompt(
            &m.iter()
                .map(|m| Message {
                    role: m.role.clone(),
                    content: m.content.clone(),
                })
                .collect::<Vec<_>>(),
        ),
        (None, Some(Prompt::Text(p))) => model.raw_prompt(p),
        (None, Some(Prompt::Ids(ids))) => Ok(ids.clone()),
        (None, None) => {
            let _ = reply.send(Err(ModelError::InvalidInput(
                "give either messages or prompt".into(),
            )));
            return;
        }
    };
    let prompt = match prompt {
        Ok(p) => p,
        Err(e) => {
            let _ = reply.send(Err(ModelError::Failed(e.to_string())));
            return;
        }
    };
    let params = SamplingParams {
        temperature: input.temperature.unwrap_or(1.0),
        top_p: input.top_p.unwrap_or(1.0),
        top_k: input.top_k.unwrap_or(0) as usize,
        seed: input.seed,
        max_tokens: input
            .max_tokens
            .unwrap_or(maas_core::models::CHAT_DEFAULT_MAX_TOKENS) as usize,
        stop: input.stops(),
    };
    let reply = Rc::new(RefCell::new(Some(reply)));
    let waiter = reply.clone();
    let tok = &model.tokenizer;
    let mut last_token: Option<Instant> = None;
    let ttft = crate::metrics::TIME_TO_FIRST_TOKEN.with_label_values(&[label]);
    let itl = crate::metrics::INTER_TOKEN.with_label_values(&[label]);
    engine.submit(EngineRequest {
        prompt,
        params,
        logprobs: input.logprobs.map(|k| k as usize),
        cancelled: Box::new(move || {
            cancel.is_cancelled() || waiter.borrow().as_ref().is_none_or(|s| s.is_closed())
        }),
        on_event: Box::new(move |e| match e {
            Event::Text { text, logprobs } => {
                let now = Instant::now();
                match last_token {
                    None => ttft.observe(now.saturating_duration_since(origin).as_secs_f64()),
                    Some(t) => itl.observe(now.saturating_duration_since(t).as_secs_f64()),
                }
                last_token = Some(now);
                if let Some(s) = &sink {
                    let logprobs = (!logprobs.is_empty()).then(|| entries(tok, &logprobs));
                    let _ = s.send(Piece { text, logprobs });
                }
            }
            Event::Done(r) => {
                if let Some(tx) = reply.borrow_mut().take() {
                    let _ = tx.send(output(tok, r));
                }
            }
        }),
    });
}

/// Chat-style logprob entries: token text, logprob, bytes, alternatives.
fn entries(tok: &ChatTokenizer, lps: &[TokenLogprob]) -> Value {
    let one = |id: u32, lp: f32| json!({"token": tok.token_text(id), "logprob": lp, "bytes": tok.token_bytes(id)});
    Value::Array(
        lps.iter()
            .map(|l| {
                let mut e = one(l.id, l.logprob);
                e["top_logprobs"] =
                    Value::Array(l.top.iter().map(|&(id, lp)| one(id, lp)).collect());
                e
            })
            .collect(),
    )
}

fn output(
    tok: &ChatTokenizer,
    r: Result<Generation, ChatError>,
) -> Result<ModelOutput, ModelError> {
    match r {
        Ok(g) => {
            let mut output = json!({
                "text": g.text,
                "finish_reason": if g.finish_reason == FinishReason::Stop { "stop" } else { "length" },
                "prompt_tokens": g.prompt_tokens,
                "completion_tokens": g.completion_tokens,
            });
            if !g.logprobs.is_empty() {
                output["logprobs"] = entries(tok, &g.logprobs);
            }
            Ok(ModelOutput {
                output,
                prompt_tokens: g.prompt_tokens as i64,
                completion_tokens: g.completion_tokens as i64,
            })
        }
        Err(ChatError::Cancelled) => Err(ModelError::Cancelled),
        Err(
            e @ (ChatError::TooLong { .. }
            | ChatError::OverBudget { .. }
            | ChatError::BadToken { .. }),
        ) => Err(ModelError::InvalidInput(e.to_string())),
        Err(e) => Err(ModelError::Failed(e.to_string())),
    }
}
