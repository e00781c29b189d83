//! Webhook endpoints, their deliveries and every delivery attempt.
//!
//! An event is written as one delivery row per subscribed endpoint in the
//! transaction that causes it ([`enqueue`]), so an event is never lost. Any
//! API replica then claims due deliveries with `FOR UPDATE SKIP LOCKED`
//! ([`claim_due`]), which also pushes `next_attempt_at` past a lease: a
//! replica that dies mid-send leaves the delivery to be retried by another,
//! which makes delivery at-least-once.

use crate::Result;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

/// A webhook endpoint id: `we_` and 32 hex digits.
pub fn new_endpoint_id() -> String {
    format!("we_{}", Uuid::new_v4().simple())
}

/// An event id: `evt_` and 32 hex digits.
pub fn new_event_id() -> String {
    format!("evt_{}", Uuid::new_v4().simple())
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EndpointRow {
    pub id: String,
    pub tenant_id: Uuid,
    pub name: String,
    pub url: String,
    pub event_types: Vec<String>,
    pub secret: String,
    pub previous_secret: Option<String>,
    pub previous_secret_until: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const ENDPOINT_COLUMNS: &str = "id, tenant_id, name, url, event_types, secret, previous_secret, \
    previous_secret_until, created_at, updated_at";

/// Creates an endpoint, unless the tenant already has `max` (`None`).
pub async fn create_endpoint(
    pool: &PgPool,
    tenant_id: Uuid,
    name: &str,
    url: &str,
    event_types: &[String],
    secret: &str,
    max: i64,
) -> Result<Option<EndpointRow>> {
    let mut tx = pool.begin().await?;
    // Serialises creates of one tenant, so the count below holds.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1::text, 11))")
        .bind(tenant_id)
        .execute(&mut *tx)
        .await?;
    let (n,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM webhook_endpoints WHERE tenant_id = $1")
            .bind(tenant_id)
            .fetch_one(&mut *tx)
            .await?;
    if n >= max {
        return Ok(None);
    }
    let row = sqlx::query_as::<_, EndpointRow>(&format!(
        "INSERT INTO webhook_endpoints (id, tenant_id, name, url, event_types, secret)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING {ENDPOINT_COLUMNS}"
    ))
    .bind(new_endpoint_id())
    .bind(tenant_id)
    .bind(name)
    .bind(url)
    .bind(event_types)
    .bind(secret)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some(row))
}

pub async fn get_endpoint(pool: &PgPool, tenant_id: Uuid, id: &str) -> Result<Option<EndpointRow>> {
    Ok(sqlx::query_as::<_, EndpointRow>(&format!(
        "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1 AND tenant_id = $2"
    ))
    .bind(id)
    .bind(tenant_id)
    .fetch_optional(pool)
    .await?)
}

/// A page of the tenant's endpoints, newest first, after the endpoint `after`.
pub async fn list_endpoints(
    pool: &PgPool,
    tenant_id: Uuid,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<EndpointRow>> {
    Ok(sqlx::query_as::<_, EndpointRow>(&format!(
        "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints
         WHERE tenant_id = $1
           AND ($2::text IS NULL OR (created_at, id) <
                (SELECT created_at, id FROM webhook_endpoints WHERE id = $2 AND tenant_id = $1))
         ORDER BY created_at DESC, id DESC LIMIT $3"
    ))
    .bind(tenant_id)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// Changes what is given; `updated_at` moves only when something changed.
pub async fn update_endpoint(
    pool: &PgPool,
    tenant_id: Uuid,
    id: &str,
    name: Option<&str>,
    url: Option<&str>,
    event_types: Option<&[String]>,
) -> Result<Option<EndpointRow>> {
    Ok(sqlx::query_as::<_, EndpointRow>(&format!(
        "UPDATE webhook_endpoints SET
             name = coalesce($3, name), url = coalesce($4, url), event_types = coalesce($5, event_types),
             updated_at = CASE WHEN (coalesce($3, name), coalesce($4, url), coalesce($5, event_types))
                                    IS DISTINCT FROM (name, url, event_types) THEN now() ELSE updated_at END
         WHERE id = $1 AND tenant_id = $2 RETURNING {ENDPOINT_COLUMNS}"
    ))
    .bind(id)
    .bind(tenant_id)
    .bind(name)
    .bind(url)
    .bind(event_types)
    .fetch_optional(pool)
    .await?)
}

/// Deletes an endpoint and its delivery log (pending deliveries included).
pub async fn delete_endpoint(pool: &PgPool, tenant_id: Uuid, id: &str) -> Result<bool> {
    let r = sqlx::query("DELETE FROM webhook_endpoints WHERE id = $1 AND tenant_id = $2")
        .bind(id)
        .bind(tenant_id)
        .execute(pool)
        .await?;
    Ok(r.rows_affected() > 0)
}

/// Replaces the signing secret; `keep_old_until`: the old one also signs
/// until then.
pub async fn rotate_secret(
    pool: &PgPool,
    tenant_id: Uuid,
    id: &str,
    secret: &str,
    keep_old_until: Option<DateTime<Utc>>,
) -> Result<Option<EndpointRow>> {
    Ok(sqlx::query_as::<_, EndpointRow>(&format!(
        "UPDATE webhook_endpoints SET
             previous_secret = CASE WHEN $4::timestamptz IS NULL THEN NULL ELSE secret END,
             previous_secret_until = $4, secret = $3, updated_at = now()
         WHERE id = $1 AND tenant_id = $2 RETURNING {ENDPOINT_COLUMNS}"
    ))
    .bind(id)
    .bind(tenant_id)
    .bind(secret)
    .bind(keep_old_until)
    .fetch_optional(pool)
    .await?)
}

/// Writes `event_type` about the object `data_id` as a delivery to every
/// endpoint of the tenant subscribed to it, in `tx`. Returns the deliveries
/// written. The payload is OpenAI's thin event: `{id, object: "event",
/// created_at, type, data: {id}}`.
pub async fn enqueue(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    tenant_id: Uuid,
    event_type: &str,
    data_id: &str,
) -> Result<u64> {
    let r = sqlx::query(
        "INSERT INTO webhook_deliveries (id, event_id, endpoint_id, tenant_id, event_type, payload, status, next_attempt_at)
         SELECT 'wh_' || replace(gen_random_uuid()::text, '-', ''), $3, e.id, e.tenant_id, $2,
                json_build_object('id', $3::text, 'object', 'event',
                                  'created_at', extract(epoch FROM now())::bigint,
                                  'type', $2::text, 'data', json_build_object('id', $4::text))::text,
                'pending', now()
         FROM webhook_endpoints e WHERE e.tenant_id = $1 AND $2 = ANY (e.event_types)",
    )
    .bind(tenant_id)
    .bind(event_type)
    .bind(new_event_id())
    .bind(data_id)
    .execute(&mut **tx)
    .await?;
    Ok(r.rows_affected())
}

/// A delivery claimed for one attempt, with what sending it needs.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Due {
    pub id: String,
    pub event_id: String,
    pub endpoint_id: String,
    pub tenant_id: Uuid,
    pub event_type: String,
    pub payload: String,
    /// This attempt's number, from 1.
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    pub url: String,
    pub secret: String,
    /// The previous secret while it still signs.
    pub previous_secret: Option<String>,
}

/// Claims up to `limit` due deliveries for one attempt each: counts the
/// attempt and moves `next_attempt_at` `lease_secs` on, so another replica
/// retries it if this one never records the outcome.
pub async fn claim_due(pool: &PgPool, limit: i64, lease_secs: f64) -> Result<Vec<Due>> {
    Ok(sqlx::query_as::<_, Due>(
        "WITH due AS (
             SELECT id FROM webhook_deliveries
             WHERE status = 'pending' AND next_attempt_at <= now()
             ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED
         ), claimed AS (
             UPDATE webhook_deliveries d SET attempts = d.attempts + 1,
                    next_attempt_at = now() + make_interval(secs => $2)
             FROM due WHERE d.id = due.id
             RETURNING d.id, d.event_id, d.endpoint_id, d.tenant_id, d.event_type, d.payload, d.attempts, d.created_at
         )
         SELECT c.*, e.url, e.secret,
                CASE WHEN e.previous_secret_until > now() THEN e.previous_secret END AS previous_secret
         FROM claimed c JOIN webhook_endpoints e ON e.id = c.endpoint_id",
    )
    .bind(limit)
    .bind(lease_secs)
    .fetch_all(pool)
    .await?)
}

/// What an attempt decided.
#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    Delivered,
    RetryAt(DateTime<Utc>),
    /// Out of attempts.
    Failed,
}

/// Records one attempt and what it decided for the delivery.
pub async fn record_attempt(
    pool: &PgPool,
    d: &Due,
    status_code: Option<u16>,
    error: Option<&str>,
    duration_ms: i32,
    outcome: Outcome,
) -> Result<()> {
    let (status, next) = match outcome {
        Outcome::Delivered => ("delivered", None),
        Outcome::RetryAt(t) => ("pending", Some(t)),
        Outcome::Failed => ("failed", None),
    };
    let code = status_code.map(i32::from);
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO webhook_attempts (delivery_id, attempt, status_code, error, duration_ms)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
    )
    .bind(&d.id)
    .bind(d.attempts)
    .bind(code)
    .bind(error)
    .bind(duration_ms)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE webhook_deliveries SET status = $2, next_attempt_at = $3, last_status_code = $4, last_error = $5,
                ended_at = CASE WHEN $2 = 'pending' THEN NULL ELSE now() END
         WHERE id = $1 AND status = 'pending'",
    )
    .bind(&d.id)
    .bind(status)
    .bind(next)
    .bind(code)
    .bind(error)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// One delivery in the log, with its attempts.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct DeliveryView {
    pub id: String,
    pub event_id: String,
    pub event_type: String,
    pub status: String,
    pub attempts: i32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    /// `[{attempt, at, status_code, error, duration_ms}]`, oldest first.
    pub attempt_log: serde_json::Value,
}

/// An endpoint's deliveries, newest first.
pub async fn deliveries(pool: &PgPool, endpoint_id: &str, limit: i64) -> Result<Vec<DeliveryView>> {
    Ok(sqlx::query_as::<_, DeliveryView>(
        "SELECT d.id, d.event_id, d.event_type, d.status, d.attempts, d.next_attempt_at, d.last_status_code,
                d.last_error, d.created_at, d.ended_at,
                coalesce((SELECT json_agg(json_build_object('attempt', a.attempt, 'at', a.at, 'status_code', a.status_code,
                                                            'error', a.error, 'duration_ms', a.duration_ms)
                                          ORDER BY a.attempt)
                          FROM webhook_attempts a WHERE a.delivery_id = d.id), '[]'::json)::jsonb AS attempt_log
         FROM webhook_deliveries d WHERE d.endpoint_id = $1
         ORDER BY d.created_at DESC, d.id DESC LIMIT $2",
    )
    .bind(endpoint_id)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// Deletes ended deliveries (and their attempts) that ended before `before`.
pub async fn purge_ended(pool: &PgPool, before: DateTime<Utc>) -> Result<u64> {
    let r =
        sqlx::query("DELETE FROM webhook_deliveries WHERE status <> 'pending' AND ended_at < $1")
            .bind(before)
            .execute(pool)
            .await?;
    Ok(r.rows_affected())
}
