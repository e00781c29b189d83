//! The supervisor: registration and heartbeats, dispatched jobs in, results
//! out. Every job's life on this worker:
//!
//! 1. `dispatched → running` in Postgres (conditional on this worker and
//!    attempt; a redelivery of our own running attempt is accepted);
//! 2. the model's runtime runs it on its device threads;
//! 3. `running → succeeded | failed` with its usage record, in one transaction;
//! 4. hot status to Redis, a wake-up to the sync caller's API instance;
//! 5. only then the delivery is acked and the slot reported free.
//!
//! A crash anywhere before 5 leaves the job on this worker in Postgres; the
//! scheduler re-dispatches it once our heartbeats stop.

use crate::models::{CancelFlag, ModelError};
use crate::runtime::{JobContext, Loaded, Runtime};
use actix::prelude::*;
use chrono::Utc;
use maas_core::messages::{Dispatch, ModelSlots, Reply, RunningAttempt, WorkerEvent};
use maas_core::trace::TraceParent;
use maas_core::Code;
use maas_mq::lapin::message::Delivery;
use maas_mq::lapin::options::{BasicAckOptions, BasicRejectOptions};
use maas_mq::{Broker, PublishOpts};
use maas_store::cache::{key_bucket, tenant_bucket, Cache, RATE_WINDOW_MS};
use maas_store::jobs::{self, Outcome, Usage};
use serde_json::json;
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;
use uuid::Uuid;

/// What a job needs from the outside world.
#[derive(Clone)]
pub struct Deps {
    pub worker_id: String,
    pub db: PgPool,
    pub cache: Cache,
    pub broker: Arc<Broker>,
    /// Results and usage commit with a WAL flush (see `jobs::complete`).
    pub durable_results: bool,
    /// Most bytes a job's output may take as JSON.
    pub max_output_bytes: usize,
}

pub struct Supervisor {
    deps: Deps,
    /// The model versions this worker holds, by route (`name@version`).
    loaded: Loaded,
    /// Attempts received and not yet finished: job → (attempt, cancel flag, route).
    running: HashMap<Uuid, (i32, CancelFlag, String)>,
    draining: bool,
    heartbeat: Duration,
    /// New for every process, so a restart under a fixed worker id is visible.
    incarnation: String,
}

impl Supervisor {
    pub fn new(deps: Deps, loaded: Loaded, heartbeat: Duration) -> Self {
        let incarnation = Uuid::new_v4().simple().to_string();
        Self {
            deps,
            loaded,
            running: HashMap::new(),
            draining: false,
            heartbeat,
            incarnation,
        }
    }

    /// The slots this worker offers: those of every healthy version that
    /// is not draining.
    fn offered(&self) -> Vec<ModelSlots> {
        self.loaded.offered()
    }

    fn send_heartbeat(&self, ctx: &mut Context<Self>) {
        let offered = self.offered();
        for (key, _, _) in self.loaded.all() {
            let slots = offered
                .iter()
                .find(|s| s.model == key)
                .map_or(0, |s| s.slots);
            let (model, version) = maas_core::metrics::model_labels(&key);
            crate::metrics::SLOTS
                .with_label_values(&[model, version])
                .set(i64::from(slots));
        }
        let event = WorkerEvent::Heartbeat {
            worker_id: self.deps.worker_id.clone(),
            incarnation: self.incarnation.clone(),
            models: offered,
            draining: self.draining,
            running: self
                .running
                .iter()
                .map(|(id, (attempt, _, _))| RunningAttempt {
                    job_id: *id,
                    attempt: *attempt,
                })
                .collect(),
        };
        let broker = self.deps.broker.clone();
        // A stale heartbeat is worse than none (it could revive a worker the
        // scheduler has declared dead): let the broker drop it after three
        // periods, which stays below the scheduler's timeout (5 periods by default).
        let ttl = (self.heartbeat.as_millis() as u64)
            .saturating_mul(3)
            .max(500);
        ctx.spawn(
            async move {
                let opts = PublishOpts {
                    traceparent: None,
                    persistent: false,
                    expiration_ms: Some(ttl),
                };
                match broker
                    .publish_to_queue(&broker.names.events(), &event, opts)
                    .await
                {
                    Ok(()) => {}
                    // Reconnecting: the heartbeat after the queues are back
                    // says everything this one would have.
                    Err(maas_mq::MqError::Unavailable) => {
                        tracing::debug!("heartbeat not sent: the broker is away")
                    }
                    Err(e) => tracing::warn!(error = %e, "heartbeat not sent"),
                }
            }
            .into_actor(self),
        );
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.send_heartbeat(ctx);
        ctx.run_interval(self.heartbeat, |act, ctx| act.send_heartbeat(ctx));
        // A version that becomes ready or draining, or whose health
        // changes, is announced at once, not at the next period: the
        // scheduler starts or stops sending it work.
        let (changed, me) = (self.loaded.changed.clone(), ctx.address());
        ctx.spawn(
            async move {
                loop {
                    changed.notified().await;
                    me.do_send(Heartbeat);
                }
            }
            .into_actor(self),
        );
        tracing::info!(worker_id = %self.deps.worker_id, models = ?self.offered(), "worker supervisor started");
    }
}

/// A dispatch delivery from this worker's queue.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Dispatched(pub Delivery);

/// A cancel broadcast.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CancelRequested(pub Uuid);

/// Send a heartbeat now (the worker's queues were just declared again).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Heartbeat;

/// Stop taking work; tell the scheduler.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Drain;

/// How many jobs are still in progress.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct InFlight;

impl Handler<Dispatched> for Supervisor {
    type Result = ();

    fn handle(&mut self, Dispatched(delivery): Dispatched, ctx: &mut Context<Self>) {
        let dispatch: Dispatch = match serde_json::from_slice(&delivery.data) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "malformed dispatch dead-lettered");
                ctx.spawn(
                    async move {
                        let _ = delivery.reject(BasicRejectOptions { requeue: false }).await;
                    }
                    .into_actor(self),
                );
                return;
            }
        };
        let cancel = CancelFlag::default();
        self.running.insert(
            dispatch.job_id,
            (dispatch.attempt, cancel.clone(), dispatch.model.clone()),
        );
        let runtime = self.loaded.get(&dispatch.model);
        let deps = self.deps.clone();
        let incoming = maas_mq::traceparent_of(&delivery.properties);
        let job_id = dispatch.job_id;
        // The job's span on this worker, continuing the trace from the scheduler.
        let parent = incoming.as_deref().and_then(TraceParent::parse);
        let (model_name, model_version) = maas_core::metrics::model_labels(&dispatch.model);
        let span = tracing::info_span!(
            "run job",
            job_id = %job_id,
            tenant_id = %dispatch.tenant_id,
            model = %model_name,
            model.version = %model_version,
            attempt = dispatch.attempt,
            trace_id = parent.as_ref().map(TraceParent::trace_id_hex).unwrap_or_default(),
        );
        if let Some(p) = &parent {
            maas_core::telemetry::set_parent(&span, p);
        }
        let traceparent = maas_core::telemetry::context_of(&span)
            .map(|tp| tp.to_string())
            .or(incoming);
        ctx.spawn(
            run_attempt(deps, runtime, dispatch, delivery, cancel, traceparent)
                .instrument(span)
                .into_actor(self)
                .map(move |_, act, _| {
                    act.running.remove(&job_id);
                }),
        );
    }
}

impl Handler<CancelRequested> for Supervisor {
    type Result = ();

    fn handle(&mut self, CancelRequested(job_id): CancelRequested, _: &mut Context<Self>) {
        if let Some((_, flag, _)) = self.running.get(&job_id) {
            tracing::info!(%job_id, "cancelling running job");
            flag.cancel();
        }
    }
}

impl Handler<Heartbeat> for Supervisor {
    type Result = ();

    fn handle(&mut self, _: Heartbeat, ctx: &mut Context<Self>) {
        self.send_heartbeat(ctx);
    }
}

impl Handler<Drain> for Supervisor {
    type Result = ();

    fn handle(&mut self, _: Drain, ctx: &mut Context<Self>) {
        self.draining = true;
        self.send_heartbeat(ctx);
    }
}

impl Handler<InFlight> for Supervisor {
    type Result = usize;

    fn handle(&mut self, _: InFlight, _: &mut Context<Self>) -> usize {
        self.running.len()
    }
}

/// How many jobs of one version (`name@version`) are in progress here.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct RunningFor(pub String);

impl Handler<RunningFor> for Supervisor {
    type Result = usize;

    fn handle(&mut self, RunningFor(key): RunningFor, _: &mut Context<Self>) -> usize {
        self.running.values().filter(|(_, _, k)| *k == key).count()
    }
}

/// The longest one database step may take before it is tried again on
/// another connection.
const STEP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a worker keeps trying to start a job while Postgres is away
/// before it lets the job go (the scheduler queues it again).
const START_PATIENCE: Duration = Duration::from_secs(60);
/// How long a worker keeps trying to record a result it has in hand while
/// Postgres is away: long, since giving up means running the job again.
const RESULT_PATIENCE: Duration = Duration::from_secs(600);

/// Retries a Postgres step while Postgres is unreachable (capped backoff,
/// up to `patience`); any other error is returned at once, since repeating
/// a statement Postgres refused only gets it refused again.
async fn with_retries<T, F, Fut>(
    what: &str,
    patience: Duration,
    mut f: F,
) -> Result<T, maas_store::StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, maas_store::StoreError>>,
{
    let deadline = Instant::now() + patience;
    let mut backoff =
        maas_core::backoff::Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    let mut tries = 0u32;
    loop {
        // A connection whose peer vanished without a reset (a cut network)
        // would leave a query waiting for ever: each try is bounded, and
        // one that runs out counts as Postgres being unreachable.
        let tried = tokio::time::timeout(STEP_TIMEOUT, f()).await.unwrap_or(Err(
            maas_store::StoreError::Db(maas_store::sqlx::Error::PoolTimedOut),
        ));
        match tried {
            Ok(v) => return Ok(v),
            Err(e) if e.is_unavailable() && Instant::now() < deadline => {
                tries += 1;
                if tries == 1 || tries.is_multiple_of(20) {
                    tracing::warn!(error = %e, step = what, tries, "database unreachable; retrying");
                }
                backoff.wait().await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Records an attempt's end (see [`record_once`]). A result that finds the
/// job still `dispatched` to this attempt had its start lost (the start is a
/// relaxed commit, and a crash of Postgres can take the last of those with
/// it): the start is recorded again, then the result.
async fn record_outcome(
    deps: &Deps,
    job_id: Uuid,
    attempt: i32,
    outcome: &Outcome,
) -> Result<(Option<jobs::Job>, Option<Outcome>), maas_store::StoreError> {
    let first = record_once(deps, job_id, attempt, outcome).await?;
    if first.0.is_some() {
        return Ok(first);
    }
    let restarted = with_retries("mark running", START_PATIENCE, || {
        jobs::mark_running(&deps.db, job_id, &deps.worker_id, attempt)
    })
    .await?;
    if restarted.is_none() {
        return Ok(first);
    }
    tracing::warn!(%job_id, attempt, "the job's start was lost by the database; recorded it again with the result");
    record_once(deps, job_id, attempt, outcome).await
}

/// Records an attempt's end once. A result Postgres refuses to store (text
/// it cannot hold, a value past its limits) fails the job with
/// `result_rejected` instead, so it is neither lost silently nor retried
/// forever.
async fn record_once(
    deps: &Deps,
    job_id: Uuid,
    attempt: i32,
    outcome: &Outcome,
) -> Result<(Option<jobs::Job>, Option<Outcome>), maas_store::StoreError> {
    let copy = |o: &Outcome| match o {
        Outcome::Succeeded { output, usage } => Outcome::Succeeded {
            output: output.clone(),
            usage: *usage,
        },
        Outcome::Failed { error } => Outcome::Failed {
            error: error.clone(),
        },
    };
    let first = with_retries("complete", RESULT_PATIENCE, || {
        jobs::complete(
            &deps.db,
            job_id,
            &deps.worker_id,
            attempt,
            copy(outcome),
            deps.durable_results,
        )
    })
    .await;
    match first {
        Ok(job) => Ok((job, None)),
        Err(e) if !e.is_unavailable() => {
            tracing::error!(%job_id, error = %e, "Postgres refused the result; failing the job");
            let failed = Outcome::Failed {
                error: json!({
                    "code": Code::ResultRejected,
                    "message": "the job's result could not be stored (the database refused it)",
                }),
            };
            let job = with_retries("complete", RESULT_PATIENCE, || {
                jobs::complete(
                    &deps.db,
                    job_id,
                    &deps.worker_id,
                    attempt,
                    copy(&failed),
                    deps.durable_results,
                )
            })
            .await?;
            Ok((job, Some(failed)))
        }
        Err(e) => Err(e),
    }
}

async fn run_attempt(
    deps: Deps,
    runtime: Option<Arc<dyn Runtime>>,
    d: Dispatch,
    delivery: Delivery,
    cancel: CancelFlag,
    traceparent: Option<String>,
) {
    let (job_id, attempt) = (d.job_id, d.attempt);
    // A model that is not here or not healthy runs nothing: the job goes
    // back untouched (our heartbeat stops listing the attempt, and the
    // scheduler queues it again for a worker that can run it).
    let runtime = match runtime {
        Some(r) if r.health().borrow().is_ready() => r,
        _ => {
            tracing::warn!(%job_id, model = %d.model, "model not served here (not loaded or unhealthy); handing the job back");
            let _ = delivery.ack(BasicAckOptions::default()).await;
            return;
        }
    };
    let started = with_retries("mark running", START_PATIENCE, || {
        jobs::mark_running(&deps.db, job_id, &deps.worker_id, attempt)
    })
    .await;
    let job = match started {
        Ok(Some(job)) => Some(job),
        Ok(None) => {
            // Not ours to run any more (cancelled, or handed elsewhere); or our
            // own earlier delivery of this attempt that is already running.
            match jobs::get(&deps.db, job_id).await {
                Ok(Some(j))
                    if j.status == maas_core::JobStatus::Running
                        && j.worker_id.as_deref() == Some(&deps.worker_id)
                        && j.attempts == attempt =>
                {
                    Some(j)
                }
                _ => None,
            }
        }
        Err(e) => {
            // Let it go: once the heartbeat stops listing this attempt, the
            // scheduler queues the job again (a redelivery loop on this
            // worker would help nobody).
            tracing::error!(%job_id, error = %e, "could not start the job; handing it back");
            let _ = delivery.ack(BasicAckOptions::default()).await;
            return;
        }
    };
    if let Some(job) = job {
        // Off the critical path: the cache keeps the newest version whatever
        // the order of writes, and the result below is written after this.
        // A batch's lines are never polled one by one (see the scheduler):
        // no hot-status write for them.
        if job.batch_id.is_none() {
            let cache = deps.cache.clone();
            let running = job.clone();
            tokio::spawn(async move { cache.put_job_logged(&running).await });
        }
        tracing::info!(%job_id, attempt, model = %d.model, "job running");
        let t0 = Instant::now();
        // Streamed output goes, in order, to the API instance holding the caller.
        // The input is decoded once, here, for the model's kind.
        let input = runtime
            .kind()
            .parse_input(&d.input)
            .map_err(|e| ModelError::InvalidInput(e.message));
        let wants_stream = input.as_ref().is_ok_and(|i| i.streams());
        let (sink, forwarder) = match (&d.reply_to, wants_stream) {
            (Some(reply_to), true) => {
                let (tx, mut rx) =
                    tokio::sync::mpsc::unbounded_channel::<maas_core::messages::Piece>();
                let (broker, queue) = (deps.broker.clone(), reply_to.clone());
                let task = tokio::spawn(async move {
                    let mut seq = 0u32;
                    while let Some(p) = rx.recv().await {
                        let opts = PublishOpts {
                            traceparent: None,
                            persistent: false,
                            expiration_ms: Some(60_000),
                        };
                        let chunk = Reply::Chunk {
                            job_id,
                            seq,
                            attempt: Some(attempt),
                            text: p.text,
                            logprobs: p.logprobs,
                        };
                        let _ = broker.publish_to_queue(&queue, &chunk, opts).await;
                        seq += 1;
                    }
                });
                (Some(tx), Some(task))
            }
            _ => (None, None),
        };
        let origin = Instant::now()
            .checked_sub((Utc::now() - job.created_at).to_std().unwrap_or_default())
            .unwrap_or_else(Instant::now);
        let (model_label, version_label) = maas_core::metrics::model_labels(&d.model);
        let busy = crate::metrics::SLOTS_BUSY.with_label_values(&[model_label, version_label]);
        busy.inc();
        let result = match input {
            Ok(input) => {
                let ctx = JobContext {
                    cancel,
                    sink,
                    origin,
                    trace: maas_core::telemetry::context_of(&tracing::Span::current()),
                };
                runtime.run(input, ctx).await
            }
            Err(e) => Err(e),
        };
        busy.dec();
        let compute_ms = t0.elapsed().as_millis() as i64;
        crate::metrics::INFERENCE
            .with_label_values(&[model_label, version_label])
            .observe(t0.elapsed().as_secs_f64());
        if let Some(task) = forwarder {
            // Every chunk is out before the result is recorded and announced.
            let _ = task.await;
        }
        // An output too large to store and cache fails the job instead.
        let cap = deps.max_output_bytes;
        let size = result.as_ref().map_or(0, |o| json_len(&o.output));
        let outcome = match result {
            Ok(_) if size > cap => Some(Outcome::Failed {
                error: json!({
                    "code": Code::OutputTooLarge,
                    "message": format!("the output is {size} bytes as JSON, over the limit of {cap} bytes; split the request"),
                }),
            }),
            Ok(out) => Some(Outcome::Succeeded {
                output: out.output,
                usage: Usage {
                    prompt_tokens: out.prompt_tokens,
                    completion_tokens: out.completion_tokens,
                    compute_ms,
                },
            }),
            Err(ModelError::Cancelled) => None,
            Err(ModelError::InvalidInput(m)) => Some(Outcome::Failed {
                error: json!({"code": Code::InvalidInput, "message": m}),
            }),
            Err(ModelError::Failed(m)) => Some(Outcome::Failed {
                error: json!({"code": Code::ModelError, "message": m}),
            }),
        };
        match outcome {
            None => {
                crate::metrics::JOBS
                    .with_label_values(&[model_label, version_label, "cancelled"])
                    .inc();
                tracing::info!(%job_id, "job stopped by cancel");
            }
            Some(outcome) => {
                let done = record_outcome(&deps, job_id, attempt, &outcome).await;
                match done {
                    Ok((Some(job), replaced)) => {
                        tracing::info!(%job_id, status = %job.status, compute_ms, "job finished");
                        let outcome = replaced.unwrap_or(outcome);
                        record_finished(&job, &outcome);
                        if job.batch_id.is_none() {
                            deps.cache.put_job_logged(&job).await;
                        }
                        settle_rate(&deps, &job, &outcome).await;
                    }
                    Ok((None, _)) => {
                        crate::metrics::JOBS
                            .with_label_values(&[model_label, version_label, "dropped"])
                            .inc();
                        tracing::info!(%job_id, "result dropped: the job was cancelled or reassigned meanwhile");
                    }
                    Err(e) => {
                        // Postgres stayed away past our patience. The job is
                        // still ours there; once our heartbeat stops listing
                        // the attempt, the scheduler queues it again.
                        // No `Finished`: the slot stays counted until the
                        // scheduler settles the attempt against Postgres.
                        tracing::error!(%job_id, error = %e, "could not record the result; the job will run again");
                        let _ = delivery.ack(BasicAckOptions::default()).await;
                        return;
                    }
                }
            }
        }
    }
    if let Some(reply_to) = &d.reply_to {
        let opts = PublishOpts {
            traceparent: traceparent.as_deref(),
            persistent: false,
            expiration_ms: Some(60_000),
        };
        if let Err(e) = deps
            .broker
            .publish_to_queue(reply_to, &Reply::Done { job_id }, opts)
            .await
        {
            tracing::debug!(%job_id, error = %e, "sync caller not notified (it polls as well)");
        }
    }
    if let Err(e) = delivery.ack(BasicAckOptions::default()).await {
        tracing::warn!(%job_id, error = %e, "ack failed");
    }
    let finished = WorkerEvent::Finished {
        worker_id: deps.worker_id.clone(),
        job_id,
        attempt,
    };
    // A lost slot release is repaired by the next heartbeat's reconciliation.
    let opts = PublishOpts {
        persistent: false,
        ..PublishOpts::traced(traceparent.as_deref())
    };
    if let Err(e) = deps
        .broker
        .publish_to_queue(&deps.broker.names.events(), &finished, opts)
        .await
    {
        tracing::warn!(%job_id, error = %e, "slot release not sent");
    }
}

/// Settles the tokens-per-minute estimate a job was charged at admission
/// with what it used (before the caller is told it finished).
async fn settle_rate(deps: &Deps, job: &jobs::Job, outcome: &Outcome) {
    if job.rate_tokens == 0 {
        return;
    }
    let used = match outcome {
        Outcome::Succeeded { usage, .. } => usage.prompt_tokens + usage.completion_tokens,
        Outcome::Failed { .. } => 0,
    };
    let mut buckets = vec![tenant_bucket(job.tenant_id, "tokens")];
    buckets.extend(job.key_id.map(|k| key_bucket(k, "tokens")));
    if let Err(e) = deps
        .cache
        .rate_settle(&buckets, used - job.rate_tokens, RATE_WINDOW_MS)
        .await
    {
        tracing::warn!(job_id = %job.id, error = %e, "could not settle the job's token charge");
    }
}

/// The metrics of a job whose result was recorded.
fn record_finished(job: &jobs::Job, outcome: &Outcome) {
    use crate::metrics::{BATCH_LINES, END_TO_END, JOBS, TOKENS};
    let version = job.model_version.as_deref().unwrap_or("");
    JOBS.with_label_values(&[job.model.as_str(), version, job.status.as_str()])
        .inc();
    if job.batch_id.is_some() {
        let tenant = maas_core::metrics::tenant_label(job.tenant_id);
        BATCH_LINES
            .with_label_values(&[&tenant, &job.model, job.status.as_str()])
            .inc();
    }
    if let Some(end) = job.finished_at {
        END_TO_END
            .with_label_values(&[job.model.as_str(), job.status.as_str()])
            .observe((end - job.created_at).num_milliseconds().max(0) as f64 / 1000.0);
    }
    if let Outcome::Succeeded { usage, .. } = outcome {
        let tenant = maas_core::metrics::tenant_label(job.tenant_id);
        TOKENS
            .with_label_values(&[&job.model, "prompt", &tenant])
            .inc_by(usage.prompt_tokens.max(0) as u64);
        TOKENS
            .with_label_values(&[&job.model, "completion", &tenant])
            .inc_by(usage.completion_tokens.max(0) as u64);
    }
}

/// Bytes of `v` as JSON, counted without building the text.
fn json_len(v: &serde_json::Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut n = Count(0);
    let _ = serde_json::to_writer(&mut n, v);
    n.0
}
