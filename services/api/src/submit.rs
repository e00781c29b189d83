//! Submitting a job and waiting for it: shared by the native jobs API and
//! the OpenAI-compatible endpoints.
//!
//! The row is written as `queued`, then announced on RabbitMQ with a
//! publisher confirm; only then is the caller answered. A sync caller waits on
//! this instance's reply queue; if it goes away, its job is cancelled.

use crate::auth::Principal;
use crate::error::ApiError;
use crate::state::AppState;
use maas_core::messages::{CancelJob, JobSubmitted};
use maas_core::models::JobInput;
use maas_core::Code;
use maas_core::{JobMode, Lane};
use maas_mq::PublishOpts;
use maas_store::jobs::{self, Job, NewJob};
use maas_store::registry::Resolved;
use serde_json::json;
use std::time::Duration;
use uuid::Uuid;

/// The error code of a job that was stored but could not be queued.
pub const ENQUEUE_FAILED: &str = "enqueue_failed";

pub struct Submission<'a> {
    /// The exact version that will run it.
    pub model: &'a Resolved,
    /// Parsed and checked against the model's kind already.
    pub input: &'a JobInput,
    pub mode: JobMode,
    pub lane: Lane,
    pub idempotency_key: Option<String>,
    pub traceparent: String,
    /// Sync only: how long to wait.
    pub timeout: Duration,
    /// Sync only: hand back the output as it streams instead of waiting.
    pub stream: bool,
}

// One per request, moved once: boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Submitted {
    /// The tenant used this idempotency key before: the first job, as it stands.
    Replayed(Job),
    /// An async job, queued.
    Accepted(Job),
    /// A sync job after waiting: finished, or still going when the wait ran out.
    Waited(Job),
    /// A streaming job, published: its chunks arrive on `waiter`; dropping
    /// `guard` (the caller went away) cancels it unless disarmed.
    Streaming {
        job: Job,
        waiter: crate::replies::StreamWaiter,
        done: crate::replies::Waiter,
        guard: CancelOnDrop,
    },
}

/// Reads a job through the hot cache, falling back to Postgres; `None` when
/// it does not exist or belongs to another tenant.
pub(crate) async fn load_job(
    state: &AppState,
    id: Uuid,
    tenant_id: Uuid,
) -> Result<Option<Job>, ApiError> {
    match state.cache.get_job(id).await {
        Ok(Some(job)) => return Ok((job.tenant_id == tenant_id).then_some(job)),
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "job cache unavailable; reading Postgres"),
    }
    let job = jobs::get_for_tenant(&state.db, id, tenant_id).await?;
    if let Some(j) = &job {
        state.cache.put_job_logged(j).await;
    }
    Ok(job)
}

/// Cancels the job of a sync caller who went away before it finished.
pub struct CancelOnDrop {
    state: Option<AppState>,
    job_id: Uuid,
    tenant_id: Uuid,
}

impl CancelOnDrop {
    /// The job finished or failed on its own: nothing to cancel.
    pub fn disarm(&mut self) {
        self.state = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(state) = self.state.take() {
            let (job_id, tenant_id) = (self.job_id, self.tenant_id);
            actix_web::rt::spawn(async move {
                tracing::info!(%job_id, "sync caller disconnected; cancelling its job");
                if let Err(e) = cancel(&state, job_id, tenant_id).await {
                    tracing::warn!(%job_id, error = %e, "could not cancel the job of a disconnected caller");
                }
            });
        }
    }
}

/// Cancels a job of `tenant_id`: queued jobs at once, running ones by telling
/// every worker (the one running it stops within one step).
pub(crate) async fn cancel(
    state: &AppState,
    id: Uuid,
    tenant_id: Uuid,
) -> Result<Option<Result<Job, Job>>, ApiError> {
    if let Some(job) = jobs::cancel(&state.db, id, tenant_id).await? {
        state.cache.put_job_logged(&job).await;
        if job.worker_id.is_some() {
            let exchange = state.broker.names.cancel_exchange();
            let opts = PublishOpts {
                traceparent: job.traceparent.as_deref(),
                persistent: false,
                expiration_ms: Some(60_000),
            };
            if let Err(e) = state
                .broker
                .publish(&exchange, "", &CancelJob { job_id: job.id }, opts)
                .await
            {
                // The job is cancelled in Postgres already: the worker's result
                // will be refused; only the compute is not stopped early.
                tracing::warn!(job_id = %job.id, error = %e, "could not broadcast cancel");
            }
        }
        tracing::info!(job_id = %job.id, "job cancelled");
        return Ok(Some(Ok(job)));
    }
    Ok(jobs::get_for_tenant(&state.db, id, tenant_id)
        .await?
        .map(Err))
}

/// Admits, records, announces and (for sync jobs) waits.
///
/// Admission, in order: the tokens-per-minute limits take the job's
/// estimate (in Redis); then, in the transaction that stores the job, the
/// queue caps, the concurrency cap and the token budget are checked and the
/// budget reservation is made (in Postgres). The worker that finishes the job
/// settles both with its recorded usage.
pub async fn submit(
    state: &AppState,
    principal: &Principal,
    sub: Submission<'_>,
) -> Result<Submitted, ApiError> {
    let route = sub.model.route();
    if !state
        .served
        .contains(&state.db, &route, state.registry.read_at())
        .await?
    {
        return Err(ApiError::ModelUnavailable { model: route });
    }
    // A sync caller is answered by a worker through the broker: with the
    // broker away it gets a quick 503 instead of a wait that cannot end
    // well. An async job needs only its row (see `crate::outbox`).
    if sub.mode == JobMode::Sync && !state.broker.is_connected() {
        return Err(ApiError::Unavailable {
            message: "the job queue is unavailable; retry".into(),
            retry_after_secs: 2,
        });
    }
    let charged = crate::ratelimit::admit_tokens(state, principal, sub.input).await?;
    let caps = jobs::QueueCaps {
        global_max_queued: Some(state.settings.max_queued_jobs),
    };
    let stored = sub.input.to_value();
    let inserted = jobs::insert(
        &state.db,
        NewJob {
            tenant_id: principal.tenant_id,
            key_id: Some(principal.key_id),
            model: &sub.model.model,
            model_version: Some(&sub.model.version),
            mode: sub.mode,
            lane: sub.lane,
            input: &stored,
            idempotency_key: sub.idempotency_key.as_deref(),
            traceparent: Some(&sub.traceparent),
            reply_to: (sub.mode == JobMode::Sync).then_some(state.reply_queue.as_str()),
            caps,
            rate_tokens: charged,
            budget_tokens: &|| sub.input.token_bound(),
        },
    )
    .await;
    let (job, created) = match inserted {
        Ok(done) => done,
        Err(e) => {
            // Refused: the charge goes back.
            crate::ratelimit::refund_tokens(state, principal, charged).await;
            let reason = match &e {
                maas_store::StoreError::TenantQueueFull { .. } => Some("max_queued"),
                maas_store::StoreError::TenantBusy { .. } => Some("max_concurrent"),
                maas_store::StoreError::BudgetExhausted { .. } => Some("token_budget"),
                maas_store::StoreError::QueueFull { .. } => Some("platform_queue"),
                _ => None,
            };
            if let Some(reason) = reason {
                crate::observe::refused(reason, principal.tenant_id);
            }
            return Err(e.into());
        }
    };
    if !created {
        // A replay runs nothing new: its charge goes back.
        crate::ratelimit::refund_tokens(state, principal, charged).await;
        // The first submission was refused after all (its job could not be
        // queued): the replay answers with that refusal, not a 202.
        if job.error.as_ref().and_then(|e| e["code"].as_str()) == Some(ENQUEUE_FAILED) {
            return Err(ApiError::Unavailable {
                message: "the job queue was unavailable when this Idempotency-Key was first used; \
                          the job was not queued (use a new key to submit it again)"
                    .into(),
                retry_after_secs: 2,
            });
        }
        return Ok(Submitted::Replayed(job));
    }
    tracing::Span::current().record("job_id", job.id.to_string());
    crate::observe::JOBS_SUBMITTED
        .with_label_values(&[
            job.model.as_str(),
            job.mode.as_str(),
            &maas_core::metrics::tenant_label(job.tenant_id),
        ])
        .inc();
    tracing::info!(job_id = %job.id, tenant_id = %job.tenant_id, model = %job.model, mode = %job.mode, "job accepted");

    let waiter = (sub.mode == JobMode::Sync).then(|| state.replies.register(job.id));
    let stream =
        (sub.mode == JobMode::Sync && sub.stream).then(|| state.replies.register_stream(job.id));
    // From here a sync caller that goes away cancels its job.
    let mut guard = CancelOnDrop {
        state: waiter.as_ref().map(|_| state.clone()),
        job_id: job.id,
        tenant_id: job.tenant_id,
    };
    let msg = JobSubmitted {
        job_id: job.id,
        tenant_id: job.tenant_id,
        model: job.route(),
        lane: sub.lane,
        created_at: job.created_at,
        reply_to: waiter.as_ref().map(|_| state.reply_queue.clone()),
    };
    let jobs_queue = state.broker.names.jobs();
    // An async job's announcement survives a broker restart; a sync job's
    // caller is waiting (and the scheduler's sweep finds the row anyway).
    let opts = PublishOpts {
        persistent: sub.mode == JobMode::Async,
        ..PublishOpts::traced(Some(&sub.traceparent))
    };
    if let Err(e) = state.broker.publish_to_queue(&jobs_queue, &msg, opts).await {
        if sub.mode == JobMode::Async {
            // Accepted all the same: the row is queued; the relay announces
            // it when the broker is back (and the scheduler's sweep would
            // find it regardless).
            tracing::warn!(job_id = %job.id, error = %e, "job accepted while the broker is away; its announcement waits in the outbox");
            state.outbox.push(msg, sub.traceparent.clone());
            state.cache.put_job_logged(&job).await;
            return Ok(Submitted::Accepted(job));
        }
        tracing::error!(job_id = %job.id, error = %e, "could not enqueue job");
        guard.state = None;
        let error = json!({"code": ENQUEUE_FAILED, "message": "the job could not be queued"});
        return match jobs::fail_unqueued(&state.db, job.id, &error).await? {
            Some(j) => {
                state.cache.put_job_logged(&j).await;
                // It never ran: its rate charge goes back (its budget
                // reservation was released with the transition).
                crate::ratelimit::refund_tokens(state, principal, charged).await;
                Err(ApiError::Unavailable {
                    message: "the job queue is unavailable; retry".into(),
                    retry_after_secs: 2,
                })
            }
            // The broker had stored it after all and the job is under way:
            // answer as for any accepted job rather than invite a duplicate.
            None => Ok(Submitted::Waited(
                jobs::get(&state.db, job.id).await?.unwrap_or(job),
            )),
        };
    }
    let Some(waiter) = waiter else {
        // Pollers of an async job read its queued state from the cache.
        state.cache.put_job_logged(&job).await;
        return Ok(Submitted::Accepted(job));
    };
    if let Some(stream) = stream {
        return Ok(Submitted::Streaming {
            job,
            waiter: stream,
            done: waiter,
            guard,
        });
    }
    let deadline = tokio::time::Instant::now() + sub.timeout;
    let mut current = job;
    loop {
        // The reply wakes us at once; the periodic re-read covers a reply lost
        // to a restart (a job rebuilt from Postgres carries no reply queue).
        let slice = deadline.min(tokio::time::Instant::now() + Duration::from_secs(1));
        let _ = tokio::time::timeout_at(slice, waiter.notify.notified()).await;
        match load_job(state, current.id, current.tenant_id).await {
            Ok(Some(j)) => current = j,
            // The row is gone: a crash of Postgres took its relaxed insert
            // with it before anything else was written. Nothing will run;
            // the caller, not answered yet, is told to retry.
            Ok(None) => {
                guard.state = None;
                tracing::warn!(job_id = %current.id, "the job's row was lost by the database; the caller is told to retry");
                return Err(ApiError::Unavailable {
                    message: "the job was lost by a database restart before it ran; retry".into(),
                    retry_after_secs: 1,
                });
            }
            // A passing read error (Postgres restarting) is not the end of
            // the job: keep waiting for it until the deadline.
            Err(e) => {
                tracing::warn!(job_id = %current.id, error = %e, "could not read the job; still waiting")
            }
        }
        if current.status.is_terminal() || tokio::time::Instant::now() >= deadline {
            break;
        }
    }
    guard.state = None;
    if !current.status.is_terminal() {
        // The caller leaves with a job id to poll: the row (inserted with a
        // relaxed commit) must outlive a crash of the database host now.
        if let Err(e) = jobs::flush_wal(&state.db).await {
            tracing::warn!(job_id = %current.id, error = %e, "could not flush the job's row to disk");
        }
    }
    if let (Some(start), Some(end)) = (current.started_at, current.finished_at) {
        if let Ok(mut h) = principal.rate.lock() {
            h.timing = Some((
                (start - current.created_at).num_milliseconds(),
                (end - start).num_milliseconds(),
            ));
        }
    }
    Ok(Submitted::Waited(current))
}

/// The result of a sync call that must answer with the job's output (the
/// OpenAI-style endpoints): the succeeded job, or the error its end maps to.
/// A job still going when the wait ran out is cancelled (nobody will poll it)
/// and answers 504.
pub(crate) async fn completed(
    state: &AppState,
    tenant_id: Uuid,
    job: Job,
    invalid_param: Option<&str>,
) -> Result<Job, ApiError> {
    use maas_core::JobStatus;
    match job.status {
        JobStatus::Succeeded => Ok(job),
        JobStatus::Failed => {
            let code = job
                .error
                .as_ref()
                .and_then(|e| e["code"].as_str())
                .unwrap_or_default();
            let message = job
                .error
                .as_ref()
                .and_then(|e| e["message"].as_str())
                .unwrap_or("the job failed")
                .to_owned();
            Err(match code {
                "invalid_input" => ApiError::invalid(message, invalid_param),
                // The request asks for more output than a job may hold.
                "output_too_large" => ApiError::InvalidRequest {
                    message,
                    param: invalid_param.map(str::to_owned),
                    code: Code::OutputTooLarge,
                },
                // Its workers kept dying: nothing wrong with the request.
                "worker_lost" => ApiError::Unavailable {
                    message: "the job's workers were lost; retry".into(),
                    retry_after_secs: 5,
                },
                _ => ApiError::internal(format!("job {} failed: {message}", job.id)),
            })
        }
        JobStatus::Cancelled | JobStatus::Expired => Err(ApiError::Conflict {
            message: format!("the job was {}", job.status),
            code: Code::JobNotCompleted,
        }),
        JobStatus::Queued | JobStatus::Dispatched | JobStatus::Running => {
            let _ = cancel(state, job.id, tenant_id).await;
            Err(ApiError::Timeout {
                message: format!(
                    "the result was not ready within {} ms",
                    state.settings.sync_timeout_ms
                ),
            })
        }
    }
}
