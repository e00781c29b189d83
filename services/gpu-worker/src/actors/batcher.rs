//! Dynamic batching for models that gain from batches (the embedder): one
//! dedicated thread owns the model; requests arrive on a channel with a
//! oneshot reply each. The thread takes the first waiting request, then keeps
//! collecting until the batch holds `max_batch_tokens` word pieces or
//! `max_wait` has passed, drops requests that were cancelled (or whose caller
//! is gone) before spending compute on them, runs one packed forward pass and
//! answers each request with its own rows.

use crate::models::{CancelFlag, ModelError, ModelOutput};
use maas_models::{EmbedInput, Embedder};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    pub max_batch_tokens: usize,
    pub max_wait: Duration,
}

struct Request {
    ids: Vec<Vec<u32>>,
    /// The span of the job it serves: the batch's span links to it.
    trace: Option<maas_core::trace::TraceParent>,
    cancel: CancelFlag,
    reply: oneshot::Sender<Result<ModelOutput, ModelError>>,
}

impl Request {
    fn tokens(&self) -> usize {
        self.ids.iter().map(Vec::len).sum()
    }
}

/// Takes requests from the front of `pending` while they fit in `budget`
/// tokens; the first one is always taken, however large.
fn take_batch<T>(pending: &mut VecDeque<T>, budget: usize, tokens: impl Fn(&T) -> usize) -> Vec<T> {
    let mut out = Vec::new();
    let mut used = 0;
    while let Some(next) = pending.front() {
        let t = tokens(next);
        if !out.is_empty() && used + t > budget {
            break;
        }
        used += t;
        out.extend(pending.pop_front());
    }
    out
}

/// The handle the supervisor sends work through.
#[derive(Clone)]
pub struct EmbedderHandle {
    tokenizer_side: std::sync::Arc<Embedder>,
    tx: mpsc::SyncSender<Request>,
}

impl EmbedderHandle {
    /// Starts the model thread.
    pub fn start(embedder: Embedder, cfg: BatchConfig) -> Self {
        let embedder = std::sync::Arc::new(embedder);
        let (tx, rx) = mpsc::sync_channel::<Request>(1024);
        let model = embedder.clone();
        std::thread::Builder::new()
            .name("embedder".into())
            .spawn(move || run(&model, rx, cfg))
            .expect("spawning the embedder thread");
        Self {
            tokenizer_side: embedder,
            tx,
        }
    }

    /// Embeds one job's input: `{"input": string | [string] | [int] | [[int]]}`.
    pub async fn run(&self, input: &Value, cancel: CancelFlag) -> Result<ModelOutput, ModelError> {
        let inputs = parse_input(input).map_err(ModelError::InvalidInput)?;
        // Tokenizing here, off the model thread, keeps that thread on compute.
        let embedder = self.tokenizer_side.clone();
        let ids = tokio::task::spawn_blocking(move || embedder.tokenize(&inputs))
            .await
            .map_err(|e| ModelError::Failed(e.to_string()))?
            .map_err(|e| ModelError::InvalidInput(e.to_string()))?;
        let (reply, rx) = oneshot::channel();
        self.tx
            .try_send(Request {
                ids,
                trace: maas_core::telemetry::context_of(&tracing::Span::current()),
                cancel,
                reply,
            })
            .map_err(|_| ModelError::Failed("the embedder queue is full".into()))?;
        rx.await
            .map_err(|_| ModelError::Failed("the embedder thread stopped".into()))?
    }
}

/// Parses a job's `{"input": ...}` (OpenAI's forms, checked by the API already).
pub fn parse_input(input: &Value) -> Result<Vec<EmbedInput>, String> {
    let v = input.get("input").ok_or("input.input is required")?;
    let items = maas_core::models::parse_embedding_input(v).map_err(|e| e.message)?;
    Ok(items
        .into_iter()
        .map(|i| match i {
            maas_core::models::EmbeddingItem::Text(t) => EmbedInput::Text(t),
            maas_core::models::EmbeddingItem::Ids(v) => EmbedInput::Ids(v),
        })
        .collect())
}

fn run(model: &Embedder, rx: mpsc::Receiver<Request>, cfg: BatchConfig) {
    let mut pending: VecDeque<Request> = VecDeque::new();
    loop {
        if pending.is_empty() {
            match rx.recv() {
                Ok(r) => pending.push_back(r),
                Err(_) => return,
            }
        }
        // Take everything already waiting, then wait (up to max_wait) for
        // more while the batch is below its budget. With max_wait 0 a lone
        // request starts at once; requests arriving during a forward pass
        // form the next batch.
        while let Ok(r) = rx.try_recv() {
            pending.push_back(r);
        }
        let deadline = Instant::now() + cfg.max_wait;
        while pending.iter().map(Request::tokens).sum::<usize>() < cfg.max_batch_tokens {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match rx.recv_timeout(left) {
                Ok(r) => pending.push_back(r),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        // Requests nobody waits for any more cost nothing.
        pending.retain(|r| {
            let gone = r.cancel.is_cancelled() || r.reply.is_closed();
            !gone
        });
        let batch = take_batch(&mut pending, cfg.max_batch_tokens, Request::tokens);
        if batch.is_empty() {
            continue;
        }
        let all: Vec<Vec<u32>> = batch.iter().flat_map(|r| r.ids.iter().cloned()).collect();
        let total_tokens: usize = all.iter().map(Vec::len).sum();
        let model_label = [maas_core::models::MINILM];
        crate::metrics::BATCH_SIZE
            .with_label_values(&model_label)
            .observe(all.len() as f64);
        crate::metrics::BATCH_TOKENS
            .with_label_values(&model_label)
            .observe(total_tokens as f64);
        // One span per forward pass, linked to the span of every job it serves.
        let span = tracing::info_span!(
            "embed batch",
            requests = batch.len(),
            sequences = all.len(),
            tokens = total_tokens
        );
        for tp in batch.iter().filter_map(|r| r.trace.as_ref()) {
            maas_core::telemetry::link(&span, tp);
        }
        let _entered = span.enter();
        let t0 = Instant::now();
        let vectors = match model.forward(&all) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "embedding batch failed");
                for r in batch {
                    let _ = r.reply.send(Err(ModelError::Failed(e.to_string())));
                }
                continue;
            }
        };
        let compute = t0.elapsed();
        tracing::debug!(
            requests = batch.len(),
            sequences = all.len(),
            tokens = total_tokens,
            ?compute,
            "embedding batch"
        );
        let mut rows = vectors.into_iter();
        for r in batch {
            let n = r.ids.len();
            let tokens: usize = r.tokens();
            let embeddings: Vec<Vec<f32>> = rows.by_ref().take(n).collect();
            let out = ModelOutput {
                output: json!({"embeddings": embeddings, "prompt_tokens": tokens}),
                prompt_tokens: tokens as i64,
                completion_tokens: 0,
            };
            let _ = r.reply.send(Ok(out));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_batch_fills_up_to_its_token_budget_in_arrival_order() {
        let mut q: VecDeque<usize> = [100, 200, 300, 50].into_iter().collect();
        assert_eq!(take_batch(&mut q, 350, |t| *t), vec![100, 200]);
        assert_eq!(take_batch(&mut q, 350, |t| *t), vec![300, 50]);
        assert!(take_batch(&mut q, 350, |t| *t).is_empty());
    }

    #[test]
    fn an_oversized_request_forms_a_batch_alone() {
        let mut q: VecDeque<usize> = [5000, 10].into_iter().collect();
        assert_eq!(take_batch(&mut q, 512, |t| *t), vec![5000]);
        assert_eq!(take_batch(&mut q, 512, |t| *t), vec![10]);
    }

    #[test]
    fn job_inputs_map_to_model_inputs() {
        assert!(
            matches!(parse_input(&json!({"input": [1, 2, 3]})).unwrap()[0], EmbedInput::Ids(ref v) if v.len() == 3)
        );
        assert_eq!(parse_input(&json!({"input": ["a", "b"]})).unwrap().len(), 2);
        assert!(parse_input(&json!({})).is_err());
    }
}
