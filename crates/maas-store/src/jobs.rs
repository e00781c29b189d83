//! The jobs table and every transition of the job state machine.
//!
//! Each transition is one conditional statement whose `WHERE` names the
//! states (and, for worker-side transitions, the worker and attempt) it may
//! start from. A transition that finds no row did not happen: the job was
//! cancelled, re-dispatched or finished by someone else first, and the caller
//! drops its work. That is what makes at-least-once delivery safe.

use crate::{Result, StoreError};
use chrono::{DateTime, Utc};
use maas_core::{JobMode, JobStatus, Lane};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct Job {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub key_id: Option<Uuid>,
    pub model: String,
    pub mode: JobMode,
    pub lane: Lane,
    pub status: JobStatus,
    pub input: Option<Value>,
    pub output: Option<Value>,
    pub error: Option<Value>,
    pub usage: Option<Value>,
    pub attempts: i32,
    pub worker_id: Option<String>,
    pub idempotency_key: Option<String>,
    pub traceparent: Option<String>,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub dispatched_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Tokens charged against tokens-per-minute limits at admission.
    #[serde(default)]
    pub rate_tokens: i64,
    /// Tokens reserved from the token budget at admission.
    #[serde(default)]
    pub budget_tokens: i64,
    /// Attempts that began to run (`attempts` numbers every dispatch).
    #[serde(default)]
    pub starts: i32,
    /// The reply queue of the API instance holding a sync caller.
    #[serde(default)]
    pub reply_to: Option<String>,
    /// The exact version of `model` the job runs on (resolved at submission).
    #[serde(default)]
    pub model_version: Option<String>,
    /// A line of a 1h batch: served before its tenant's other batch-lane work.
    #[serde(default)]
    pub urgent: bool,
    /// The Batch API batch the job is a line of.
    #[serde(default)]
    pub batch_id: Option<String>,
}

impl Job {
    /// What the job is routed by: `model@version` (workers announce their
    /// slots under it), or the bare model for a job from before versions.
    pub fn route(&self) -> String {
        match &self.model_version {
            Some(v) => crate::registry::route_key(&self.model, v),
            None => self.model.clone(),
        }
    }
}

const COLS: &str = "id, tenant_id, key_id, model, mode, lane, status, input, output, error, usage, attempts, \
                    worker_id, idempotency_key, traceparent, version, created_at, dispatched_at, started_at, finished_at, \
                    rate_tokens, budget_tokens, starts, reply_to, model_version, urgent, batch_id";

pub struct NewJob<'a> {
    pub tenant_id: Uuid,
    pub key_id: Option<Uuid>,
    pub model: &'a str,
    /// The version it resolved to.
    pub model_version: Option<&'a str>,
    pub mode: JobMode,
    pub lane: Lane,
    pub input: &'a Value,
    pub idempotency_key: Option<&'a str>,
    pub traceparent: Option<&'a str>,
    /// The reply queue of the API instance holding a sync caller.
    pub reply_to: Option<&'a str>,
    pub caps: QueueCaps,
    /// Tokens charged against tokens-per-minute limits (recorded for settling).
    pub rate_tokens: i64,
    /// An upper bound of the tokens the job can use: what it reserves from
    /// the tenant's token budget, when it has one (computed only then).
    pub budget_tokens: &'a (dyn Fn() -> i64 + Sync),
}

/// Admission bounds checked in the inserting transaction, besides the
/// tenant's own quota (read there, so an admin's change holds at once).
#[derive(Debug, Clone, Copy, Default)]
pub struct QueueCaps {
    /// Most queued jobs on the whole platform (a bound, not exact).
    pub global_max_queued: Option<i64>,
}

/// Inserts a queued job. With an idempotency key already used by this
/// tenant, nothing is inserted and the first job is returned with `false`.
///
/// A sync job's caller is waiting and retries on failure, so its row need not
/// be flushed to disk before the answer (`synchronous_commit = off` for that
/// transaction); an async job's row is durable before the 202.
pub async fn insert(pool: &PgPool, j: NewJob<'_>) -> Result<(Job, bool)> {
    let mut tx = pool.begin().await?;
    if j.mode == JobMode::Sync {
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await?;
    }
    // A replay of a known idempotency key answers with its job, full or not.
    let replay = match j.idempotency_key {
        Some(k) => {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM jobs WHERE tenant_id = $1 AND idempotency_key = $2",
            )
            .bind(j.tenant_id)
            .bind(k)
            .fetch_one(&mut *tx)
            .await?
                > 0
        }
        None => false,
    };
    let mut budget_period = None;
    if !replay {
        if let Some(max) = j.caps.global_max_queued {
            let queued: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM jobs WHERE status = 'queued' AND batch_id IS NULL",
            )
            .fetch_one(&mut *tx)
            .await?;
            if queued >= max {
                return Err(StoreError::QueueFull { max });
            }
        }
        let quota = sqlx::query_as::<_, crate::quotas::Quota>(
            "SELECT rpm, tpm, max_concurrent, max_queued, token_budget, budget_period FROM quotas WHERE tenant_id = $1",
        )
        .bind(j.tenant_id)
        .fetch_optional(&mut *tx)
        .await?
        .unwrap_or_default();
        if quota.max_queued.is_some()
            || quota.max_concurrent.is_some()
            || quota.token_budget.is_some()
        {
            // One admission at a time per tenant, until this transaction ends:
            // every check below is exact under concurrency.
            sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1::text, 7))")
                .bind(j.tenant_id)
                .execute(&mut *tx)
                .await?;
        }
        let max_sync = quota.max_concurrent.filter(|_| j.mode == JobMode::Sync);
        if quota.max_queued.is_some() || max_sync.is_some() {
            let (unfinished, sync): (i64, i64) = sqlx::query_as(
                "SELECT count(*), count(*) FILTER (WHERE mode = 'sync') FROM jobs
                 WHERE tenant_id = $1 AND status IN ('queued', 'dispatched', 'running') AND batch_id IS NULL",
            )
            .bind(j.tenant_id)
            .fetch_one(&mut *tx)
            .await?;
            if let Some(max) = quota.max_queued.filter(|max| unfinished >= *max) {
                return Err(StoreError::TenantQueueFull { max });
            }
            if let Some(max) = max_sync.filter(|max| sync >= *max) {
                return Err(StoreError::TenantBusy { max });
            }
        }
        if let Some(limit) = quota.token_budget {
            let period = crate::budget::Period::parse(quota.budget_period.as_deref())
                .unwrap_or(crate::budget::Period::Month);
            let needed = (j.budget_tokens)();
            let standing = crate::budget::open(&mut tx, j.tenant_id, period).await?;
            if standing.spent + standing.reserved + needed > limit {
                return Err(StoreError::BudgetExhausted {
                    limit,
                    period,
                    remaining: (limit - standing.spent - standing.reserved).max(0),
                    needed,
                });
            }
            budget_period = Some((standing.period_start, needed));
        }
    }
    let inserted = sqlx::query_as::<_, Job>(&format!(
        "INSERT INTO jobs (id, tenant_id, key_id, model, mode, lane, status, input, idempotency_key, traceparent,
                           rate_tokens, budget_tokens, budget_period_start, reply_to, model_version)
         VALUES ($1, $2, $3, $4, $5, $6, 'queued', $7, $8, $9, $10, $11, $12, $13, $14)
         ON CONFLICT (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
         RETURNING {COLS}"
    ))
    .bind(Uuid::new_v4())
    .bind(j.tenant_id)
    .bind(j.key_id)
    .bind(j.model)
    .bind(j.mode.as_str())
    .bind(j.lane.as_str())
    .bind(j.input)
    .bind(j.idempotency_key)
    .bind(j.traceparent)
    .bind(j.rate_tokens)
    .bind(budget_period.map_or(0, |(_, t)| t))
    .bind(budget_period.map(|(p, _)| p))
    .bind(j.reply_to)
    .bind(j.model_version)
    .fetch_optional(&mut *tx)
    .await?;
    if let (Some(_), Some((period_start, tokens))) = (&inserted, budget_period) {
        crate::budget::reserve(&mut tx, j.tenant_id, period_start, tokens).await?;
    }
    tx.commit().await?;
    if let Some(job) = inserted {
        return Ok((job, true));
    }
    let existing = sqlx::query_as::<_, Job>(&format!(
        "SELECT {COLS} FROM jobs WHERE tenant_id = $1 AND idempotency_key = $2"
    ))
    .bind(j.tenant_id)
    .bind(j.idempotency_key)
    .fetch_one(pool)
    .await?;
    Ok((existing, false))
}

pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<Job>> {
    Ok(
        sqlx::query_as::<_, Job>(&format!("SELECT {COLS} FROM jobs WHERE id = $1"))
            .bind(id)
            .fetch_optional(pool)
            .await?,
    )
}

/// A tenant's job, or `None` when it does not exist or belongs to another tenant.
pub async fn get_for_tenant(pool: &PgPool, id: Uuid, tenant_id: Uuid) -> Result<Option<Job>> {
    Ok(sqlx::query_as::<_, Job>(&format!(
        "SELECT {COLS} FROM jobs WHERE id = $1 AND tenant_id = $2"
    ))
    .bind(id)
    .bind(tenant_id)
    .fetch_optional(pool)
    .await?)
}

/// Newest first. `after` is the id of the last job of the previous page.
pub async fn list_for_tenant(
    pool: &PgPool,
    tenant_id: Uuid,
    after: Option<Uuid>,
    status: Option<JobStatus>,
    limit: i64,
) -> Result<Vec<Job>> {
    Ok(sqlx::query_as::<_, Job>(&format!(
        "SELECT {COLS} FROM jobs
         WHERE tenant_id = $1
           AND ($2::uuid IS NULL OR (created_at, id) <
                (SELECT created_at, id FROM jobs WHERE id = $2 AND tenant_id = $1))
           AND ($3::text IS NULL OR status = $3)
         ORDER BY created_at DESC, id DESC
         LIMIT $4"
    ))
    .bind(tenant_id)
    .bind(after)
    .bind(status.map(JobStatus::as_str))
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// Cancels a job that has not finished. Returns the cancelled job, or `None`
/// when it was not found or already finished (the caller reads it to tell).
pub async fn cancel(pool: &PgPool, id: Uuid, tenant_id: Uuid) -> Result<Option<Job>> {
    Ok(sqlx::query_as::<_, Job>(&format!(
        "UPDATE jobs SET status = 'cancelled', finished_at = now(), version = version + 1,
                error = jsonb_build_object('code', 'cancelled', 'message', 'the job was cancelled')
         WHERE id = $1 AND tenant_id = $2 AND status IN ('queued', 'dispatched', 'running')
         RETURNING {COLS}"
    ))
    .bind(id)
    .bind(tenant_id)
    .fetch_optional(pool)
    .await?)
}

/// queued → dispatched to `worker_id`; counts an attempt.
pub async fn mark_dispatched(pool: &PgPool, id: Uuid, worker_id: &str) -> Result<Option<Job>> {
    Ok(sqlx::query_as::<_, Job>(&format!(
        "UPDATE jobs SET status = 'dispatched', worker_id = $2, attempts = attempts + 1,
                dispatched_at = now(), version = version + 1
         WHERE id = $1 AND status = 'queued'
         RETURNING {COLS}"
    ))
    .bind(id)
    .bind(worker_id)
    .fetch_optional(pool)
    .await?)
}

/// dispatched|running on `worker_id` → queued again (worker lost, or the
/// dispatch could not be sent). The attempt number is not given back: the
/// next dispatch gets a new one, so a late delivery of this attempt can never
/// be taken for the next. Only attempts that started count against the
/// job's limit (`starts`).
pub async fn requeue(pool: &PgPool, id: Uuid, worker_id: &str) -> Result<Option<Job>> {
    Ok(sqlx::query_as::<_, Job>(&format!(
        "UPDATE jobs SET status = 'queued', worker_id = NULL, dispatched_at = NULL, started_at = NULL,
                version = version + 1
         WHERE id = $1 AND worker_id = $2 AND status IN ('dispatched', 'running')
         RETURNING {COLS}"
    ))
    .bind(id)
    .bind(worker_id)
    .fetch_optional(pool)
    .await?)
}

/// dispatched|running on `worker_id` → failed, when its attempts are spent.
pub async fn fail_lost(
    pool: &PgPool,
    id: Uuid,
    worker_id: &str,
    error: &Value,
) -> Result<Option<Job>> {
    Ok(sqlx::query_as::<_, Job>(&format!(
        "UPDATE jobs SET status = 'failed', finished_at = now(), error = $3, version = version + 1
         WHERE id = $1 AND worker_id = $2 AND status IN ('dispatched', 'running')
         RETURNING {COLS}"
    ))
    .bind(id)
    .bind(worker_id)
    .bind(error)
    .fetch_optional(pool)
    .await?)
}

/// queued → failed, when the job could not be handed to the broker at all.
pub async fn fail_unqueued(pool: &PgPool, id: Uuid, error: &Value) -> Result<Option<Job>> {
    Ok(sqlx::query_as::<_, Job>(&format!(
        "UPDATE jobs SET status = 'failed', finished_at = now(), error = $2, version = version + 1
         WHERE id = $1 AND status = 'queued'
         RETURNING {COLS}"
    ))
    .bind(id)
    .bind(error)
    .fetch_optional(pool)
    .await?)
}

/// dispatched → running, only for the worker and attempt it was dispatched as.
pub async fn mark_running(
    pool: &PgPool,
    id: Uuid,
    worker_id: &str,
    attempt: i32,
) -> Result<Option<Job>> {
    Ok(sqlx::query_as::<_, Job>(&format!(
        "UPDATE jobs SET status = 'running', started_at = now(), starts = starts + 1, version = version + 1
         WHERE id = $1 AND status = 'dispatched' AND worker_id = $2 AND attempts = $3
         RETURNING {COLS}"
    ))
    .bind(id)
    .bind(worker_id)
    .bind(attempt)
    .fetch_optional(pool)
    .await?)
}

/// How an attempt ended on a worker.
pub enum Outcome {
    Succeeded { output: Value, usage: Usage },
    Failed { error: Value },
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub compute_ms: i64,
}

/// running → succeeded|failed, for the worker and attempt that ran it, with
/// the usage record in the same transaction; `durable` (the default of every
/// worker) waits for the WAL flush. `None`: the job was cancelled or
/// handed to another worker meanwhile, and this result must be dropped.
pub async fn complete(
    pool: &PgPool,
    id: Uuid,
    worker_id: &str,
    attempt: i32,
    outcome: Outcome,
    durable: bool,
) -> Result<Option<Job>> {
    let (status, output, error, usage) = match &outcome {
        Outcome::Succeeded { output, usage } => ("succeeded", Some(output), None, Some(*usage)),
        Outcome::Failed { error } => ("failed", None, Some(error), None),
    };
    let usage_json = usage.map(|u| {
        serde_json::json!({
            "prompt_tokens": u.prompt_tokens,
            "completion_tokens": u.completion_tokens,
            "total_tokens": u.prompt_tokens + u.completion_tokens,
            "compute_ms": u.compute_ms,
        })
    });
    // One statement: the transition and its usage record commit together
    // (a CTE is atomic). The caller is told only after this commit, so it
    // must survive a crash of the database host, not only of Postgres: the
    // commit waits for the WAL flush whatever the pool's default (group
    // commit shares one flush among concurrent results). That flush also
    // covers every earlier write of the job, such as a sync job's relaxed
    // insert.
    let u = usage.unwrap_or_default();
    let mut tx = pool.begin().await?;
    if durable {
        sqlx::query("SET LOCAL synchronous_commit = on")
            .execute(&mut *tx)
            .await?;
    }
    let done = sqlx::query_as::<_, Job>(&format!(
        "WITH done AS (
             UPDATE jobs SET status = $4, output = $5, error = $6, usage = $7, finished_at = now(), version = version + 1
             WHERE id = $1 AND status = 'running' AND worker_id = $2 AND attempts = $3
             RETURNING {COLS}
         ), counted AS (
             INSERT INTO usage_records (job_id, tenant_id, key_id, model, model_version, prompt_tokens, completion_tokens, compute_ms, worker_id)
             SELECT id, tenant_id, key_id, model, model_version, $8, $9, $10, $2 FROM done
             ON CONFLICT (job_id) DO NOTHING
         )
         SELECT {COLS} FROM done"
    ))
    .bind(id)
    .bind(worker_id)
    .bind(attempt)
    .bind(status)
    .bind(output)
    .bind(error)
    .bind(usage_json)
    .bind(u.prompt_tokens)
    .bind(u.completion_tokens)
    .bind(u.compute_ms)
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(done)
}

/// Makes every write committed so far durable: commits a transaction that
/// holds a transaction id with `synchronous_commit = on`, which waits for the
/// WAL flush up to its commit record and so past every earlier record. Used
/// before handing a caller a job id whose row was inserted with a relaxed
/// commit.
pub async fn flush_wal(pool: &PgPool) -> Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET LOCAL synchronous_commit = on")
        .execute(&mut *tx)
        .await?;
    sqlx::query("SELECT txid_current()")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// What the scheduler needs to queue a job in memory.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct QueuedRef {
    pub id: Uuid,
    pub tenant_id: Uuid,
    /// Its route (see [`Job::route`]).
    pub model: String,
    pub lane: String,
    pub created_at: DateTime<Utc>,
    pub reply_to: Option<String>,
    pub urgent: bool,
}

/// Every queued job, oldest first: the scheduler's state after a restart.
pub async fn queued(pool: &PgPool) -> Result<Vec<QueuedRef>> {
    Ok(sqlx::query_as::<_, QueuedRef>(
        "SELECT id, tenant_id, CASE WHEN model_version IS NULL THEN model ELSE model || '@' || model_version END AS model, lane, created_at, reply_to, urgent FROM jobs WHERE status = 'queued' ORDER BY created_at, id",
    )
    .fetch_all(pool)
    .await?)
}

/// The queued jobs of one batch, in line order.
pub async fn queued_in_batch(pool: &PgPool, batch_id: &str) -> Result<Vec<QueuedRef>> {
    Ok(sqlx::query_as::<_, QueuedRef>(
        "SELECT id, tenant_id, CASE WHEN model_version IS NULL THEN model ELSE model || '@' || model_version END AS model, lane, created_at, reply_to, urgent
         FROM jobs WHERE batch_id = $1 AND status = 'queued' ORDER BY batch_line",
    )
    .bind(batch_id)
    .fetch_all(pool)
    .await?)
}

/// A job held by a worker.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ActiveRef {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub worker_id: String,
    pub attempts: i32,
    pub model: String,
    pub dispatched_at: Option<DateTime<Utc>>,
}

/// Every job held by a worker.
pub async fn active(pool: &PgPool) -> Result<Vec<ActiveRef>> {
    Ok(sqlx::query_as::<_, ActiveRef>(
        "SELECT id, tenant_id, worker_id, attempts, CASE WHEN model_version IS NULL THEN model ELSE model || '@' || model_version END AS model, dispatched_at FROM jobs
         WHERE status IN ('dispatched', 'running') AND worker_id IS NOT NULL",
    )
    .fetch_all(pool)
    .await?)
}

/// Jobs of one worker still dispatched or running.
pub async fn active_on_worker(pool: &PgPool, worker_id: &str) -> Result<Vec<(Uuid, i32)>> {
    Ok(sqlx::query_as("SELECT id, attempts FROM jobs WHERE status IN ('dispatched', 'running') AND worker_id = $1")
        .bind(worker_id)
        .fetch_all(pool)
        .await?)
}

/// queued for longer than `max_age_secs` → expired.
pub async fn expire_stale(pool: &PgPool, max_age_secs: i64) -> Result<Vec<Job>> {
    Ok(sqlx::query_as::<_, Job>(&format!(
        "UPDATE jobs SET status = 'expired', finished_at = now(), version = version + 1,
                error = jsonb_build_object('code', 'expired', 'message', 'the job was not started in time')
         WHERE status = 'queued' AND batch_id IS NULL AND created_at < now() - make_interval(secs => $1)
         RETURNING {COLS}"
    ))
    .bind(max_age_secs as f64)
    .fetch_all(pool)
    .await?)
}

/// Deletes inputs and outputs of jobs finished more than `retention_secs` ago.
pub async fn purge_finished(pool: &PgPool, retention_secs: i64) -> Result<u64> {
    Ok(sqlx::query(
        "UPDATE jobs SET input = NULL, output = NULL, purged_at = now(), version = version + 1
         WHERE finished_at IS NOT NULL AND purged_at IS NULL
           AND finished_at < now() - make_interval(secs => $1)",
    )
    .bind(retention_secs as f64)
    .execute(pool)
    .await?
    .rows_affected())
}
