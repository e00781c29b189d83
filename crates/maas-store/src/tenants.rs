//! Tenants: who owns keys, jobs and quotas.

use crate::{conflict_on_unique, Result};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Tenant {
    pub id: Uuid,
    pub name: String,
    pub weight: i32,
    pub disabled: bool,
    pub created_at: DateTime<Utc>,
    /// The models it may use; `None`: every model.
    pub allowed_models: Option<Vec<String>>,
}

const COLS: &str = "id, name, weight, disabled, created_at, allowed_models";

pub async fn create(pool: &PgPool, name: &str, weight: i32) -> Result<Tenant> {
    sqlx::query_as::<_, Tenant>(&format!(
        "INSERT INTO tenants (id, name, weight) VALUES ($1, $2, $3) RETURNING {COLS}"
    ))
    .bind(Uuid::new_v4())
    .bind(name)
    .bind(weight)
    .fetch_one(pool)
    .await
    .map_err(|e| conflict_on_unique(e, "name"))
}

pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<Tenant>> {
    Ok(sqlx::query_as::<_, Tenant>(&format!(
        "SELECT {COLS} FROM tenants WHERE id = $1 AND deleted_at IS NULL"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await?)
}

pub async fn list(pool: &PgPool) -> Result<Vec<Tenant>> {
    Ok(sqlx::query_as::<_, Tenant>(&format!(
        "SELECT {COLS} FROM tenants WHERE deleted_at IS NULL ORDER BY created_at, id"
    ))
    .fetch_all(pool)
    .await?)
}

/// Changes only the fields given.
pub async fn update(
    pool: &PgPool,
    id: Uuid,
    name: Option<&str>,
    weight: Option<i32>,
    disabled: Option<bool>,
) -> Result<Option<Tenant>> {
    sqlx::query_as::<_, Tenant>(&format!(
        "UPDATE tenants SET name = COALESCE($2, name), weight = COALESCE($3, weight),
                disabled = COALESCE($4, disabled), updated_at = now()
         WHERE id = $1 AND deleted_at IS NULL RETURNING {COLS}"
    ))
    .bind(id)
    .bind(name)
    .bind(weight)
    .bind(disabled)
    .fetch_optional(pool)
    .await
    .map_err(|e| conflict_on_unique(e, "name"))
}

/// Sets which models the tenant may use (`None`: every model).
pub async fn set_allowed_models(
    pool: &PgPool,
    id: Uuid,
    allow: Option<&[String]>,
) -> Result<Option<Tenant>> {
    Ok(sqlx::query_as::<_, Tenant>(&format!(
        "UPDATE tenants SET allowed_models = $2, updated_at = now()
         WHERE id = $1 AND deleted_at IS NULL RETURNING {COLS}"
    ))
    .bind(id)
    .bind(allow)
    .fetch_optional(pool)
    .await?)
}

/// Soft delete: the tenant disappears from the admin API, its keys are
/// revoked, and its jobs and usage stay for the record. Returns the ids of
/// the revoked keys' prefixes so callers can drop them from caches.
pub async fn delete(pool: &PgPool, id: Uuid) -> Result<Option<Vec<String>>> {
    let mut tx = pool.begin().await?;
    let found = sqlx::query(
        "UPDATE tenants SET deleted_at = now(), disabled = TRUE, updated_at = now()
         WHERE id = $1 AND deleted_at IS NULL",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if found == 0 {
        return Ok(None);
    }
    let prefixes: Vec<String> = sqlx::query_scalar(
        "UPDATE api_keys SET revoked_at = now() WHERE tenant_id = $1 AND revoked_at IS NULL RETURNING prefix",
    )
    .bind(id)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some(prefixes))
}

/// What the scheduler needs of a tenant: its fair-share weight and its cap
/// on jobs running at once.
#[derive(Debug, Clone, Copy, sqlx::FromRow)]
pub struct Share {
    pub id: Uuid,
    pub weight: i32,
    pub max_concurrent: Option<i64>,
}

/// Shares of every live tenant.
pub async fn shares(pool: &PgPool) -> Result<Vec<Share>> {
    Ok(sqlx::query_as(
        "SELECT t.id, t.weight, q.max_concurrent FROM tenants t LEFT JOIN quotas q ON q.tenant_id = t.id
         WHERE t.deleted_at IS NULL",
    )
    .fetch_all(pool)
    .await?)
}
