//! Dynamic batching for models that gain from batches (the embedder): one
//! dedicated thread owns the model; requests arrive on a channel with a
//! oneshot reply each.
//!
//! Work per forward pass is bounded: a pass holds at most `max_batch_tokens`
//! word pieces, so a large request is embedded in chunks over several passes
//! (the activations of a pass grow with its tokens: ~15 KB per word piece).
//! Each pass takes the waiting requests in queue order, each contributing its
//! next sequences while they fit; a request that still has sequences left
//! goes to the back of the queue, behind those that arrived during the pass.
//! So a small request arriving while a large one runs is in the next pass,
//! not after the whole large request. Before every pass, requests that were
//! cancelled (or whose caller is gone) are dropped, so a large request stops
//! at its next chunk. Each request is answered once all its rows are in, in
//! the order of its inputs.

use crate::models::{CancelFlag, ModelError, ModelOutput};
use crate::runtime::{wrong_input, DeviceThreads, Health, Inbox, JobContext, Runtime};
use futures_util::future::BoxFuture;
use maas_core::models::{EmbedInput, EmbeddingItem, JobInput, ModelKind};
use maas_models::{EmbedInput as ModelInput, Embedder};
use serde_json::json;
use std::collections::VecDeque;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};

#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    /// Most word pieces in one forward pass; larger requests are chunked.
    pub max_batch_tokens: usize,
    pub max_wait: Duration,
}

struct Request {
    ids: Vec<Vec<u32>>,
    /// Rows of the sequences embedded so far: those of `ids[..vectors.len()]`.
    vectors: Vec<Vec<f32>>,
    /// The span of the job it serves: the batch's span links to it.
    trace: Option<maas_core::trace::TraceParent>,
    cancel: CancelFlag,
    reply: oneshot::Sender<Result<ModelOutput, ModelError>>,
}

impl Request {
    /// Sequences not embedded yet.
    fn remaining(&self) -> &[Vec<u32>] {
        &self.ids[self.vectors.len()..]
    }

    fn remaining_tokens(&self) -> usize {
        self.remaining().iter().map(Vec::len).sum()
    }

    /// Word-piece length of its `i`-th sequence not embedded yet.
    fn next_len(&self, i: usize) -> Option<usize> {
        self.remaining().get(i).map(Vec::len)
    }

    /// Nobody waits for the result any more.
    fn is_gone(&self) -> bool {
        self.cancel.is_cancelled() || self.reply.is_closed()
    }
}

/// Takes one forward pass's work from the front of `pending`: each request in
/// turn contributes its next sequences while the pass stays within `budget`
/// word pieces (`seq_len(r, i)`: the length of `r`'s `i`-th sequence still to
/// embed, `None` past its last). Returns the requests taken, each with how
/// many sequences it contributes. The pass ends at the first sequence that
/// does not fit (no overtaking); the requests after it stay queued. The
/// first sequence is always taken, however long, so every pass progresses.
fn take_pass<T>(
    pending: &mut VecDeque<T>,
    budget: usize,
    seq_len: impl Fn(&T, usize) -> Option<usize>,
) -> Vec<(T, usize)> {
    let mut out = Vec::new();
    let mut used = 0;
    while let Some(next) = pending.front() {
        let mut n = 0;
        let mut fits = true;
        while let Some(t) = seq_len(next, n) {
            let first = out.is_empty() && n == 0;
            if used + t > budget && !first {
                fits = false;
                break;
            }
            used += t;
            n += 1;
        }
        // A request with nothing left to embed is taken too (and answered).
        if n == 0 && !fits {
            break;
        }
        out.extend(pending.pop_front().map(|r| (r, n)));
        if !fits {
            break;
        }
    }
    out
}

/// Puts requests back after a pass: those that `arrived` during it first,
/// then the `unfinished` ones it served, so the next pass starts with whoever
/// has waited longest and no request waits for all of a large one.
fn requeue<T>(
    pending: &mut VecDeque<T>,
    arrived: impl IntoIterator<Item = T>,
    unfinished: impl IntoIterator<Item = T>,
) {
    pending.extend(arrived);
    pending.extend(unfinished);
}

/// The embedder's runtime: the handle the supervisor sends work through.
#[derive(Clone)]
pub struct EmbedderHandle {
    name: String,
    slots: u32,
    tokenizer_side: std::sync::Arc<Embedder>,
    threads: DeviceThreads<Request>,
}

impl EmbedderHandle {
    /// Starts the model thread.
    pub fn start(
        name: String,
        slots: u32,
        embedder: Embedder,
        cfg: BatchConfig,
    ) -> std::io::Result<Self> {
        let embedder = std::sync::Arc::new(embedder);
        let model = embedder.clone();
        let label = name.clone();
        let threads = DeviceThreads::start("embedder", 1, 1024, move |inbox| {
            run(&model, &label, inbox, cfg)
        })?;
        Ok(Self {
            name,
            slots,
            tokenizer_side: embedder,
            threads,
        })
    }

    /// Embeds one job's inputs.
    async fn embed(
        tokenizer_side: std::sync::Arc<Embedder>,
        threads: DeviceThreads<Request>,
        input: EmbedInput,
        ctx: JobContext,
    ) -> Result<ModelOutput, ModelError> {
        let inputs: Vec<ModelInput> = input
            .items
            .into_iter()
            .map(|i| match i {
                EmbeddingItem::Text(t) => ModelInput::Text(t),
                EmbeddingItem::Ids(v) => ModelInput::Ids(v),
            })
            .collect();
        // Tokenizing here, off the model thread, keeps that thread on compute.
        let ids = tokio::task::spawn_blocking(move || tokenizer_side.tokenize(&inputs))
            .await
            .map_err(|e| ModelError::Failed(e.to_string()))?
            .map_err(|e| ModelError::InvalidInput(e.to_string()))?;
        let (reply, rx) = oneshot::channel();
        threads.send(Request {
            vectors: Vec::with_capacity(ids.len()),
            ids,
            trace: ctx.trace,
            cancel: ctx.cancel,
            reply,
        })?;
        rx.await
            .map_err(|_| ModelError::Failed("the embedder thread stopped".into()))?
    }
}

impl Runtime for EmbedderHandle {
    fn model(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> ModelKind {
        ModelKind::Embedder
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
        let (tokenizer_side, threads) = (self.tokenizer_side.clone(), self.threads.clone());
        Box::pin(async move {
            match input {
                JobInput::Embed(e) => Self::embed(tokenizer_side, threads, e, ctx).await,
                other => Err(wrong_input(ModelKind::Embedder, &other)),
            }
        })
    }

    fn panic_next(&self) {
        self.threads.panic_next();
    }
}

fn run(model: &Embedder, label: &str, rx: &Inbox<Request>, cfg: BatchConfig) {
    let mut pending: VecDeque<Request> = VecDeque::new();
    loop {
        if pending.is_empty() {
            match rx.recv() {
                Ok(r) => pending.push_back(r),
                Err(_) => return,
            }
        }
        // Take everything already waiting, then wait (up to max_wait) for
        // more while the pass is below its budget. With max_wait 0 a lone
        // request starts at once; requests arriving during a forward pass
        // join the next one.
        pending.extend(rx.drain());
        let deadline = Instant::now() + cfg.max_wait;
        while pending.iter().map(Request::remaining_tokens).sum::<usize>() < cfg.max_batch_tokens {
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
        // Requests nobody waits for any more cost nothing, even halfway.
        let (live, gone): (VecDeque<_>, VecDeque<_>) =
            pending.drain(..).partition(|r| !r.is_gone());
        pending = live;
        for r in gone {
            tracing::debug!(
                embedded = r.vectors.len(),
                sequences = r.ids.len(),
                "embedding request dropped: cancelled or its caller is gone"
            );
            let _ = r.reply.send(Err(ModelError::Cancelled));
        }
        let batch = take_pass(&mut pending, cfg.max_batch_tokens, Request::next_len);
        if batch.is_empty() {
            continue;
        }
        let unfinished = run_pass(model, label, batch);
        requeue(&mut pending, rx.drain(), unfinished);
    }
}

/// Runs one forward pass over each request's share of `batch`, answers the
/// requests it completes and returns the others (or none, if the pass failed).
fn run_pass(model: &Embedder, label: &str, batch: Vec<(Request, usize)>) -> Vec<Request> {
    let all: Vec<Vec<u32>> = batch
        .iter()
        .flat_map(|(r, n)| r.remaining()[..*n].iter().cloned())
        .collect();
    let total_tokens: usize = all.iter().map(Vec::len).sum();
    let model_label = [label];
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
    for tp in batch.iter().filter_map(|(r, _)| r.trace.as_ref()) {
        maas_core::telemetry::link(&span, tp);
    }
    let _entered = span.enter();
    let t0 = Instant::now();
    let vectors = if all.is_empty() {
        Ok(Vec::new())
    } else {
        model.forward(&all)
    };
    let vectors = match vectors {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(error = %e, "embedding batch failed");
            for (r, _) in batch {
                let _ = r.reply.send(Err(ModelError::Failed(e.to_string())));
            }
            return Vec::new();
        }
    };
    tracing::debug!(
        requests = batch.len(),
        sequences = all.len(),
        tokens = total_tokens,
        compute = ?t0.elapsed(),
        "embedding batch"
    );
    let mut rows = vectors.into_iter();
    let mut unfinished = Vec::new();
    for (mut r, n) in batch {
        r.vectors.extend(rows.by_ref().take(n));
        if r.vectors.len() < r.ids.len() {
            unfinished.push(r);
            continue;
        }
        let tokens: usize = r.ids.iter().map(Vec::len).sum();
        let out = ModelOutput {
            output: json!({"embeddings": r.vectors, "prompt_tokens": tokens}),
            prompt_tokens: tokens as i64,
            completion_tokens: 0,
        };
        let _ = r.reply.send(Ok(out));
    }
    unfinished
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Requests as their sequences' lengths; a pass takes from each in turn.
    fn pass(q: &mut VecDeque<Vec<usize>>, budget: usize) -> Vec<(Vec<usize>, usize)> {
        take_pass(q, budget, |r, i| r.get(i).copied())
    }

    /// What is left of each request after a pass (the shares taken dropped).
    fn rest(batch: Vec<(Vec<usize>, usize)>) -> Vec<Vec<usize>> {
        batch
            .into_iter()
            .map(|(r, n)| r[n..].to_vec())
            .filter(|r| !r.is_empty())
            .collect()
    }

    #[test]
    fn a_pass_fills_up_to_its_token_budget_in_arrival_order() {
        let mut q: VecDeque<Vec<usize>> = [vec![100], vec![200], vec![300], vec![50]].into();
        let shares =
            |b: Vec<(Vec<usize>, usize)>| b.into_iter().map(|(r, n)| (r[0], n)).collect::<Vec<_>>();
        assert_eq!(shares(pass(&mut q, 350)), vec![(100, 1), (200, 1)]);
        assert_eq!(shares(pass(&mut q, 350)), vec![(300, 1), (50, 1)]);
        assert!(pass(&mut q, 350).is_empty());
    }

    #[test]
    fn a_large_request_is_cut_into_chunks_within_the_budget() {
        // The largest admitted request: 2,048 inputs of 256 word pieces.
        let mut q: VecDeque<Vec<usize>> = [vec![256; 2048]].into();
        let mut passes = 0;
        while let Some((r, n)) = pass(&mut q, 4096).pop() {
            assert_eq!(n, 16, "16 inputs of 256 word pieces per pass");
            passes += 1;
            requeue(&mut q, [], rest(vec![(r, n)]));
        }
        assert_eq!(passes, 2048 / 16);
    }

    #[test]
    fn a_sequence_longer_than_the_budget_forms_a_pass_alone() {
        let mut q: VecDeque<Vec<usize>> = [vec![5000, 10], vec![10]].into();
        let b = pass(&mut q, 512);
        assert_eq!(b.iter().map(|(_, n)| *n).collect::<Vec<_>>(), vec![1]);
        requeue(&mut q, [], rest(b));
        // The other request waited in front; the rest of the first follows.
        assert_eq!(pass(&mut q, 512), vec![(vec![10], 1), (vec![10], 1)]);
    }

    #[test]
    fn a_small_request_arriving_during_a_large_one_is_in_the_next_pass() {
        let mut q: VecDeque<Vec<usize>> = [vec![256; 64]].into();
        let first = pass(&mut q, 1024);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].1, 4);
        // A one-input request arrives while that pass runs.
        requeue(&mut q, [vec![7]], rest(first));
        let second = pass(&mut q, 1024);
        assert_eq!(second[0], (vec![7], 1), "the small request goes first");
        assert_eq!(second[1].1, 3, "the large one fills the rest");
        assert_eq!(second.len(), 2);
    }

    #[test]
    fn two_large_requests_take_turns() {
        let mut q: VecDeque<Vec<usize>> = [vec![1; 10], vec![2; 10]].into();
        let mut order = Vec::new();
        while !q.is_empty() {
            let b = pass(&mut q, 8);
            order.push(b.iter().map(|(r, n)| (r[0], *n)).collect::<Vec<_>>());
            requeue(&mut q, [], rest(b));
        }
        assert_eq!(
            order,
            vec![
                vec![(1, 8)],
                vec![(2, 4)],
                vec![(1, 2), (2, 3)],
                vec![(2, 3)],
            ]
        );
    }

    #[test]
    fn a_request_with_nothing_left_is_taken_and_answered() {
        let mut q: VecDeque<Vec<usize>> = [vec![], vec![3]].into();
        assert_eq!(pass(&mut q, 8), vec![(vec![], 0), (vec![3], 1)]);
    }
}
