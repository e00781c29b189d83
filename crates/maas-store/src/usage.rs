//! Usage per tenant, key, model version and day, from one record per finished job.

use crate::Result;
use chrono::NaiveDate;
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct UsageRow {
    pub day: NaiveDate,
    /// The API key the jobs were submitted with.
    pub key_id: Option<Uuid>,
    pub model: String,
    /// The exact version that ran the jobs (absent for jobs from before the
    /// model registry).
    pub model_version: Option<String>,
    pub requests: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub compute_ms: i64,
}

pub async fn by_day(pool: &PgPool, tenant_id: Uuid, since: NaiveDate) -> Result<Vec<UsageRow>> {
    Ok(sqlx::query_as::<_, UsageRow>(
        "SELECT (created_at AT TIME ZONE 'UTC')::date AS day, key_id, model, model_version, count(*)::bigint AS requests,
                sum(prompt_tokens)::bigint AS prompt_tokens, sum(completion_tokens)::bigint AS completion_tokens,
                sum(compute_ms)::bigint AS compute_ms
         FROM usage_records WHERE tenant_id = $1 AND created_at >= $2
         GROUP BY 1, 2, 3, 4 ORDER BY 1, 3, 4, 2",
    )
    .bind(tenant_id)
    .bind(since)
    .fetch_all(pool)
    .await?)
}
