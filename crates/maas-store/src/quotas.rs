//! Per-tenant quotas. Stored here; every field `None` means unlimited.

use crate::Result;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

#[derive(
    Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema,
)]
pub struct Quota {
    pub rpm: Option<i64>,
    pub tpm: Option<i64>,
    pub max_concurrent: Option<i64>,
    pub max_queued: Option<i64>,
    pub token_budget: Option<i64>,
    pub budget_period: Option<String>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct QuotaRecord {
    pub tenant_id: Uuid,
    #[sqlx(flatten)]
    #[serde(flatten)]
    pub quota: Quota,
    pub updated_at: DateTime<Utc>,
}

/// Replaces the tenant's whole quota record.
pub async fn put(pool: &PgPool, tenant_id: Uuid, q: &Quota) -> Result<QuotaRecord> {
    Ok(sqlx::query_as::<_, QuotaRecord>(
        "INSERT INTO quotas (tenant_id, rpm, tpm, max_concurrent, max_queued, token_budget, budget_period, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, now())
         ON CONFLICT (tenant_id) DO UPDATE SET rpm = $2, tpm = $3, max_concurrent = $4, max_queued = $5,
             token_budget = $6, budget_period = $7, updated_at = now()
         RETURNING tenant_id, rpm, tpm, max_concurrent, max_queued, token_budget, budget_period, updated_at",
    )
    .bind(tenant_id)
    .bind(q.rpm)
    .bind(q.tpm)
    .bind(q.max_concurrent)
    .bind(q.max_queued)
    .bind(q.token_budget)
    .bind(&q.budget_period)
    .fetch_one(pool)
    .await?)
}

pub async fn get(pool: &PgPool, tenant_id: Uuid) -> Result<Option<QuotaRecord>> {
    Ok(sqlx::query_as::<_, QuotaRecord>(
        "SELECT tenant_id, rpm, tpm, max_concurrent, max_queued, token_budget, budget_period, updated_at
         FROM quotas WHERE tenant_id = $1",
    )
    .bind(tenant_id)
    .fetch_optional(pool)
    .await?)
}
