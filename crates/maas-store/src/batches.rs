//! Batches of the Batch API. A batch's lines are jobs (`jobs.batch_id`),
//! inserted in bulk in the transaction that creates the batch, with the
//! whole batch's token bound checked against the tenant's limits and budget
//! there; each line's job then runs, settles and is counted like any other.

use crate::{Result, StoreError};
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BatchRow {
    pub id: String,
    pub tenant_id: Uuid,
    pub key_id: Option<Uuid>,
    pub endpoint: String,
    pub input_file_id: String,
    pub completion_window: String,
    pub model: Option<String>,
    pub model_version: Option<String>,
    pub status: String,
    pub ending: Option<String>,
    pub metadata: Option<Value>,
    pub errors: Option<Value>,
    pub output_file_id: Option<String>,
    pub error_file_id: Option<String>,
    pub output_expires_secs: Option<i64>,
    pub total: i32,
    pub completed_count: Option<i32>,
    pub failed_count: Option<i32>,
    pub usage: Option<Value>,
    pub idempotency_key: Option<String>,
    pub created_at: DateTime<Utc>,
    pub in_progress_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub finalizing_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub failed_at: Option<DateTime<Utc>>,
    pub expired_at: Option<DateTime<Utc>>,
    pub cancelling_at: Option<DateTime<Utc>>,
    pub cancelled_at: Option<DateTime<Utc>>,
    /// When its first line ended.
    pub first_line_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "id, tenant_id, key_id, endpoint, input_file_id, completion_window, model, model_version, status, ending, \
    metadata, errors, output_file_id, error_file_id, output_expires_secs, total, completed_count, failed_count, usage, \
    idempotency_key, created_at, in_progress_at, expires_at, finalizing_at, completed_at, failed_at, expired_at, \
    cancelling_at, cancelled_at, first_line_at";

/// A new batch id: `batch_` and 32 hex digits.
pub fn new_id() -> String {
    format!("batch_{}", Uuid::new_v4().simple())
}

/// What every new batch row holds.
#[derive(Debug, Clone)]
pub struct NewBatch<'a> {
    pub tenant_id: Uuid,
    pub key_id: Option<Uuid>,
    pub endpoint: &'a str,
    pub input_file_id: &'a str,
    pub completion_window: &'a str,
    /// Seconds from creation the batch has to finish.
    pub window_secs: i64,
    pub metadata: Option<&'a Value>,
    pub output_expires_secs: Option<i64>,
    pub idempotency_key: Option<&'a str>,
    /// Identifies an identical create (the same key, file, endpoint,
    /// window and metadata), to answer a retry without a second batch.
    pub request_hash: &'a str,
    /// How long an identical create is answered with the first batch.
    pub dedupe_secs: i64,
}

/// One line to run.
#[derive(Debug, Clone)]
pub struct NewLine {
    /// From 1.
    pub line: i32,
    pub custom_id: String,
    pub input: Value,
    pub opts: Value,
    /// The line's token bound.
    pub tokens: i64,
}

/// The batch's run parameters.
#[derive(Debug, Clone)]
pub struct Run<'a> {
    pub model: &'a str,
    pub model_version: &'a str,
    pub lane: &'a str,
    pub traceparent: Option<&'a str>,
    /// Most tokens the tenant's unfinished batch lines may hold, this batch's included.
    pub max_enqueued_tokens: i64,
    /// The 1h window: lines go before the tenant's other batch-lane work.
    pub urgent: bool,
}

/// A create that found an earlier batch to answer with.
async fn replay(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    b: &NewBatch<'_>,
) -> Result<Option<BatchRow>> {
    if let Some(key) = b.idempotency_key {
        let row = sqlx::query_as::<_, BatchRow>(&format!(
            "SELECT {COLUMNS} FROM batches WHERE tenant_id = $1 AND idempotency_key = $2"
        ))
        .bind(b.tenant_id)
        .bind(key)
        .fetch_optional(&mut **tx)
        .await?;
        return Ok(row);
    }
    Ok(sqlx::query_as::<_, BatchRow>(&format!(
        "SELECT {COLUMNS} FROM batches
         WHERE tenant_id = $1 AND key_id IS NOT DISTINCT FROM $2 AND request_hash = $3
           AND idempotency_key IS NULL AND created_at > now() - make_interval(secs => $4)
         ORDER BY created_at DESC LIMIT 1"
    ))
    .bind(b.tenant_id)
    .bind(b.key_id)
    .bind(b.request_hash)
    .bind(b.dedupe_secs as f64)
    .fetch_optional(&mut **tx)
    .await?)
}

async fn lock_tenant(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    tenant_id: Uuid,
) -> Result<()> {
    // The same lock as single-job admission: budget checks hold across both.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1::text, 7))")
        .bind(tenant_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Creates a batch that failed validation (`errors` in OpenAI's shape), or
/// returns the batch an identical earlier create made (`false`).
pub async fn insert_failed(
    pool: &PgPool,
    b: &NewBatch<'_>,
    errors: &Value,
) -> Result<(BatchRow, bool)> {
    let mut tx = pool.begin().await?;
    lock_tenant(&mut tx, b.tenant_id).await?;
    if let Some(row) = replay(&mut tx, b).await? {
        return Ok((row, false));
    }
    let row = sqlx::query_as::<_, BatchRow>(&format!(
        "INSERT INTO batches (id, tenant_id, key_id, endpoint, input_file_id, completion_window, status, metadata, errors,
                              output_expires_secs, idempotency_key, request_hash, failed_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, 'failed', $7, $8, $9, $10, $11, now(), now() + make_interval(secs => $12))
         RETURNING {COLUMNS}"
    ))
    .bind(new_id())
    .bind(b.tenant_id)
    .bind(b.key_id)
    .bind(b.endpoint)
    .bind(b.input_file_id)
    .bind(b.completion_window)
    .bind(b.metadata)
    .bind(errors)
    .bind(b.output_expires_secs)
    .bind(b.idempotency_key)
    .bind(b.request_hash)
    .bind(b.window_secs as f64)
    .fetch_one(&mut *tx)
    .await?;
    crate::webhooks::enqueue(&mut tx, row.tenant_id, "batch.failed", &row.id).await?;
    tx.commit().await?;
    Ok((row, true))
}

/// Rows per bulk insert statement.
const BULK: usize = 5000;

/// Creates a batch in progress with its lines as queued jobs, all in one
/// transaction, after checking under the tenant's admission lock that its
/// lines' tokens fit the tenant's enqueued-token limit and token budget (the
/// budget is reserved here and released line by line as each ends). Or
/// returns the batch an identical earlier create made (`false`).
pub async fn insert_running(
    pool: &PgPool,
    b: &NewBatch<'_>,
    run: &Run<'_>,
    lines: &[NewLine],
) -> Result<(BatchRow, bool)> {
    let mut tx = pool.begin().await?;
    lock_tenant(&mut tx, b.tenant_id).await?;
    if let Some(row) = replay(&mut tx, b).await? {
        return Ok((row, false));
    }
    let needed: i64 = lines.iter().map(|l| l.tokens).sum();
    let (held,): (i64,) = sqlx::query_as(
        "SELECT coalesce(sum((batch_opts ->> 'tokens')::bigint), 0)::bigint
         FROM jobs WHERE tenant_id = $1 AND batch_id IS NOT NULL AND status IN ('queued', 'dispatched', 'running')",
    )
    .bind(b.tenant_id)
    .fetch_one(&mut *tx)
    .await?;
    if held + needed > run.max_enqueued_tokens {
        return Err(StoreError::EnqueuedTokensExceeded {
            limit: run.max_enqueued_tokens,
            held,
            needed,
        });
    }
    let quota = sqlx::query_as::<_, crate::quotas::Quota>(
        "SELECT rpm, tpm, max_concurrent, max_queued, token_budget, budget_period FROM quotas WHERE tenant_id = $1",
    )
    .bind(b.tenant_id)
    .fetch_optional(&mut *tx)
    .await?
    .unwrap_or_default();
    let mut period_start = None;
    if let Some(limit) = quota.token_budget {
        let period = crate::budget::Period::parse(quota.budget_period.as_deref())
            .unwrap_or(crate::budget::Period::Month);
        let standing = crate::budget::open(&mut tx, b.tenant_id, period).await?;
        if standing.spent + standing.reserved + needed > limit {
            return Err(StoreError::BudgetExhausted {
                limit,
                period,
                remaining: (limit - standing.spent - standing.reserved).max(0),
                needed,
            });
        }
        crate::budget::reserve(&mut tx, b.tenant_id, standing.period_start, needed).await?;
        period_start = Some(standing.period_start);
    }
    let id = new_id();
    let row = sqlx::query_as::<_, BatchRow>(&format!(
        "INSERT INTO batches (id, tenant_id, key_id, endpoint, input_file_id, completion_window, model, model_version,
                              status, metadata, output_expires_secs, total, idempotency_key, request_hash,
                              in_progress_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'in_progress', $9, $10, $11, $12, $13, now(),
                 now() + make_interval(secs => $14))
         RETURNING {COLUMNS}"
    ))
    .bind(&id)
    .bind(b.tenant_id)
    .bind(b.key_id)
    .bind(b.endpoint)
    .bind(b.input_file_id)
    .bind(b.completion_window)
    .bind(run.model)
    .bind(run.model_version)
    .bind(b.metadata)
    .bind(b.output_expires_secs)
    .bind(lines.len() as i32)
    .bind(b.idempotency_key)
    .bind(b.request_hash)
    .bind(b.window_secs as f64)
    .fetch_one(&mut *tx)
    .await?;
    // The budget, when there is one, is held per line (settled as each
    // ends); each line's bound is also kept in batch_opts, where the
    // enqueued-token limit counts it.
    for part in lines.chunks(BULK) {
        let ids: Vec<Uuid> = part.iter().map(|_| Uuid::new_v4()).collect();
        let inputs: Vec<Value> = part.iter().map(|l| l.input.clone()).collect();
        let budget: Vec<i64> = part
            .iter()
            .map(|l| if period_start.is_some() { l.tokens } else { 0 })
            .collect();
        let nums: Vec<i32> = part.iter().map(|l| l.line).collect();
        let cids: Vec<String> = part.iter().map(|l| l.custom_id.clone()).collect();
        let opts: Vec<Value> = part
            .iter()
            .map(|l| {
                let mut o = l.opts.clone();
                if let Some(m) = o.as_object_mut() {
                    m.insert("tokens".into(), l.tokens.into());
                }
                o
            })
            .collect();
        sqlx::query(
            "INSERT INTO jobs (id, tenant_id, key_id, model, model_version, mode, lane, status, input, traceparent,
                               rate_tokens, budget_tokens, budget_period_start, batch_id, batch_line, custom_id, batch_opts,
                               created_at, urgent)
             SELECT u.id, $1, $2, $3, $4, 'async', $5, 'queued', u.input, $6, 0, u.bt, $7, $8, u.line, u.cid, u.opts,
                    now() + u.line * interval '1 microsecond', $15
             FROM UNNEST($9::uuid[], $10::jsonb[], $11::bigint[], $12::int[], $13::text[], $14::jsonb[])
                  AS u(id, input, bt, line, cid, opts)",
        )
        .bind(b.tenant_id)
        .bind(b.key_id)
        .bind(run.model)
        .bind(run.model_version)
        .bind(run.lane)
        .bind(run.traceparent)
        .bind(period_start)
        .bind(&id)
        .bind(&ids)
        .bind(&inputs)
        .bind(&budget)
        .bind(&nums)
        .bind(&cids)
        .bind(&opts)
        .bind(run.urgent)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok((row, true))
}

/// Refreshes the planner's statistics of `jobs` after a large batch's lines
/// were stored. Without it, a connection that prepared its by-id updates
/// while the table was small (say, a scheduler that has dispatched only a
/// few sync jobs since it started) keeps a plan that scans the queued jobs
/// for every update: 10 ms of CPU a dispatch with 50,000 lines queued,
/// measured, until the table is analyzed. Analyzing invalidates every
/// connection's cached plans; autovacuum would do the same, but only
/// eventually, and only where it is on.
pub async fn refresh_job_stats(pool: &PgPool) -> Result<()> {
    sqlx::query("ANALYZE jobs").execute(pool).await?;
    Ok(())
}

pub async fn get(pool: &PgPool, tenant_id: Uuid, id: &str) -> Result<Option<BatchRow>> {
    Ok(sqlx::query_as::<_, BatchRow>(&format!(
        "SELECT {COLUMNS} FROM batches WHERE id = $1 AND tenant_id = $2"
    ))
    .bind(id)
    .bind(tenant_id)
    .fetch_optional(pool)
    .await?)
}

/// A page of the tenant's batches, newest first, after the batch `after`.
pub async fn list(
    pool: &PgPool,
    tenant_id: Uuid,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<BatchRow>> {
    Ok(sqlx::query_as::<_, BatchRow>(&format!(
        "SELECT {COLUMNS} FROM batches
         WHERE tenant_id = $1
           AND ($2::text IS NULL OR (created_at, id) < (SELECT created_at, id FROM batches WHERE id = $2 AND tenant_id = $1))
         ORDER BY created_at DESC, id DESC LIMIT $3"
    ))
    .bind(tenant_id)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// Lines that ended well, lines that ended otherwise, and lines not ended.
#[derive(Debug, Clone, Copy, Default, sqlx::FromRow)]
pub struct Counts {
    pub completed: i64,
    pub failed: i64,
    pub unfinished: i64,
}

pub async fn counts(pool: &PgPool, id: &str) -> Result<Counts> {
    Ok(sqlx::query_as::<_, Counts>(
        "SELECT count(*) FILTER (WHERE status = 'succeeded') AS completed,
                count(*) FILTER (WHERE status IN ('failed', 'cancelled', 'expired')) AS failed,
                count(*) FILTER (WHERE status IN ('queued', 'dispatched', 'running')) AS unfinished
         FROM jobs WHERE batch_id = $1",
    )
    .bind(id)
    .fetch_one(pool)
    .await?)
}

/// Asks a batch to end early: `cancelled` by its tenant, or `expired` past
/// its window. Its queued lines end at once; the ids of lines that a worker
/// holds are returned, for the caller to stop, with the number of lines
/// ended here. `None`: not this tenant's batch, or not running (the row is
/// returned as it is, as `Err`).
#[allow(clippy::type_complexity)]
pub async fn end_early(
    pool: &PgPool,
    tenant_id: Uuid,
    id: &str,
    ending: &str,
) -> Result<Option<std::result::Result<(BatchRow, Vec<Uuid>, usize), BatchRow>>> {
    let (status, stamp, line_status, code, message) = match ending {
        "cancelled" => (
            "cancelling",
            "cancelling_at",
            "cancelled",
            "batch_cancelled",
            "the batch was cancelled before this line ran",
        ),
        _ => (
            "finalizing",
            "finalizing_at",
            "expired",
            "batch_expired",
            "the batch's completion window ended before this line ran",
        ),
    };
    let mut tx = pool.begin().await?;
    let row = sqlx::query_as::<_, BatchRow>(&format!(
        "UPDATE batches SET status = '{status}', {stamp} = now(), ending = $3
         WHERE id = $1 AND tenant_id = $2 AND status IN ('validating', 'in_progress', 'finalizing') AND ending IS NULL
         RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(tenant_id)
    .bind(ending)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        drop(tx);
        return Ok(get(pool, tenant_id, id).await?.map(Err));
    };
    let error = serde_json::json!({"code": code, "message": message});
    // Queued lines end here; lines on workers end now too (a late result is
    // refused), and the caller tells their workers to stop.
    let held: Vec<(Uuid, Option<String>)> = sqlx::query_as(&format!(
        "UPDATE jobs SET status = '{line_status}', finished_at = now(), version = version + 1, error = $2
         WHERE batch_id = $1 AND status IN ('queued', 'dispatched', 'running')
         RETURNING id, worker_id"
    ))
    .bind(id)
    .bind(&error)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let ended = held.len();
    let on_workers = held
        .into_iter()
        .filter(|(_, w)| w.is_some())
        .map(|(id, _)| id)
        .collect();
    Ok(Some(Ok((row, on_workers, ended))))
}

/// Records when the batch's first line ended, once: the first call after a
/// line has ended returns `(created_at, first_line_at)`; later calls `None`.
pub async fn mark_first_line(
    pool: &PgPool,
    id: &str,
) -> Result<Option<(DateTime<Utc>, DateTime<Utc>)>> {
    Ok(sqlx::query_as(
        "UPDATE batches b SET first_line_at = f.t
         FROM (SELECT min(finished_at) AS t FROM jobs WHERE batch_id = $1 AND finished_at IS NOT NULL) f
         WHERE b.id = $1 AND b.first_line_at IS NULL AND f.t IS NOT NULL
         RETURNING b.created_at, b.first_line_at",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?)
}

/// Batches that may be ready to end (in progress, finalizing, cancelling),
/// oldest first.
pub async fn open_ids(pool: &PgPool, limit: i64) -> Result<Vec<(String, Uuid)>> {
    Ok(sqlx::query_as(
        "SELECT id, tenant_id FROM batches WHERE status IN ('in_progress', 'finalizing', 'cancelling')
         ORDER BY created_at LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// One line's job as the output files need it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LineResult {
    pub id: Uuid,
    pub batch_line: i32,
    pub custom_id: String,
    pub status: String,
    pub output: Option<Value>,
    pub error: Option<Value>,
    pub usage: Option<Value>,
    pub batch_opts: Option<Value>,
    pub created_at: DateTime<Utc>,
}

/// Up to `limit` lines of a batch after line `after`, in line order.
pub async fn lines_after(
    pool: &PgPool,
    id: &str,
    after: i32,
    limit: i64,
) -> Result<Vec<LineResult>> {
    Ok(sqlx::query_as::<_, LineResult>(
        "SELECT id, batch_line, custom_id, status, output, error, usage, batch_opts, created_at
         FROM jobs WHERE batch_id = $1 AND batch_line > $2 ORDER BY batch_line LIMIT $3",
    )
    .bind(id)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// Ended lines of a batch after line `after` (for partial results).
pub async fn ended_lines_after(
    pool: &PgPool,
    id: &str,
    after: i32,
    limit: i64,
) -> Result<Vec<LineResult>> {
    Ok(sqlx::query_as::<_, LineResult>(
        "SELECT id, batch_line, custom_id, status, output, error, usage, batch_opts, created_at
         FROM jobs WHERE batch_id = $1 AND batch_line > $2 AND status IN ('succeeded', 'failed', 'cancelled', 'expired')
         ORDER BY batch_line LIMIT $3",
    )
    .bind(id)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// The final state of an ended batch.
#[derive(Debug, Clone)]
pub struct Ended<'a> {
    pub output_file_id: Option<&'a str>,
    pub error_file_id: Option<&'a str>,
    pub counts: Counts,
    pub usage: &'a Value,
}

/// Marks a batch `finalizing` (when it is in progress): its lines have all
/// ended and its files are being written.
pub async fn mark_finalizing(pool: &PgPool, id: &str) -> Result<()> {
    sqlx::query("UPDATE batches SET status = 'finalizing', finalizing_at = now() WHERE id = $1 AND status = 'in_progress'")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}

/// Records a batch's end in `tx` (which holds its row lock): `completed`,
/// `cancelled` or `expired` by its `ending`.
pub async fn finish(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    row: &BatchRow,
    e: &Ended<'_>,
) -> Result<BatchRow> {
    let (status, stamp) = match row.ending.as_deref() {
        Some("cancelled") => ("cancelled", "cancelled_at"),
        Some("expired") => ("expired", "expired_at"),
        _ => ("completed", "completed_at"),
    };
    let ended = sqlx::query_as::<_, BatchRow>(&format!(
        "UPDATE batches SET status = '{status}', {stamp} = now(), finalizing_at = coalesce(finalizing_at, now()),
             output_file_id = $2, error_file_id = $3, completed_count = $4, failed_count = $5, usage = $6
         WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(&row.id)
    .bind(e.output_file_id)
    .bind(e.error_file_id)
    .bind(e.counts.completed as i32)
    .bind(e.counts.failed as i32)
    .bind(e.usage)
    .fetch_one(&mut **tx)
    .await?;
    // The batch's end event, in the same transaction: written once, never lost.
    crate::webhooks::enqueue(tx, ended.tenant_id, &format!("batch.{status}"), &ended.id).await?;
    Ok(ended)
}

/// Locks an open batch for finalizing (`None`: another replica holds it, or
/// it has ended).
pub async fn lock_open(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    id: &str,
) -> Result<Option<BatchRow>> {
    Ok(sqlx::query_as::<_, BatchRow>(&format!(
        "SELECT {COLUMNS} FROM batches WHERE id = $1 AND status IN ('in_progress', 'finalizing', 'cancelling')
         FOR UPDATE SKIP LOCKED"
    ))
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?)
}

/// Usage summed over a batch's lines.
pub async fn usage(pool: &PgPool, id: &str) -> Result<(i64, i64)> {
    Ok(sqlx::query_as(
        "SELECT coalesce(sum((usage ->> 'prompt_tokens')::bigint), 0)::bigint,
                coalesce(sum((usage ->> 'completion_tokens')::bigint), 0)::bigint
         FROM jobs WHERE batch_id = $1",
    )
    .bind(id)
    .fetch_one(pool)
    .await?)
}
