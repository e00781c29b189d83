//! API keys. Only the SHA-256 of a key is stored, next to its public prefix.

use crate::{conflict_on_unique, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

/// A key as the admin API shows it: never the secret, never the hash.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ApiKey {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: Option<String>,
    pub prefix: String,
    pub scopes: Option<Vec<String>>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    /// The key's own requests-per-minute limit (the tenant's applies too).
    pub rpm: Option<i64>,
    /// The key's own tokens-per-minute limit (the tenant's applies too).
    pub tpm: Option<i64>,
}

/// What authentication needs to know about a key; cached in Redis.
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct KeyAuth {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub secret_hash: String,
    pub scopes: Option<Vec<String>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked: bool,
    pub tenant_disabled: bool,
    #[serde(default)]
    pub rpm: Option<i64>,
    #[serde(default)]
    pub tpm: Option<i64>,
    /// The tenant's allowed models (`None`: every model).
    #[serde(default)]
    pub allowed_models: Option<Vec<String>>,
}

const COLS: &str = "id, tenant_id, name, prefix, scopes, created_at, expires_at, revoked_at, last_used_at, rpm, tpm";

pub struct NewKeyRow<'a> {
    pub tenant_id: Uuid,
    pub name: Option<&'a str>,
    pub prefix: &'a str,
    pub secret_hash: &'a str,
    pub scopes: Option<&'a [String]>,
    pub expires_at: Option<DateTime<Utc>>,
    pub limits: KeyLimits,
}

/// A key's own rate limits; `None` = only the tenant's apply.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KeyLimits {
    pub rpm: Option<i64>,
    pub tpm: Option<i64>,
}

pub async fn create(pool: &PgPool, k: NewKeyRow<'_>) -> Result<ApiKey> {
    sqlx::query_as::<_, ApiKey>(&format!(
        "INSERT INTO api_keys (id, tenant_id, name, prefix, secret_hash, scopes, expires_at, rpm, tpm)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {COLS}"
    ))
    .bind(Uuid::new_v4())
    .bind(k.tenant_id)
    .bind(k.name)
    .bind(k.prefix)
    .bind(k.secret_hash)
    .bind(k.scopes)
    .bind(k.expires_at)
    .bind(k.limits.rpm)
    .bind(k.limits.tpm)
    .fetch_one(pool)
    .await
    .map_err(|e| conflict_on_unique(e, "prefix"))
}

pub async fn list_for_tenant(pool: &PgPool, tenant_id: Uuid) -> Result<Vec<ApiKey>> {
    Ok(sqlx::query_as::<_, ApiKey>(&format!(
        "SELECT {COLS} FROM api_keys WHERE tenant_id = $1 ORDER BY created_at, id"
    ))
    .bind(tenant_id)
    .fetch_all(pool)
    .await?)
}

/// Revokes a key (idempotent: revoking twice keeps the first time).
pub async fn revoke(pool: &PgPool, key_id: Uuid) -> Result<Option<ApiKey>> {
    Ok(sqlx::query_as::<_, ApiKey>(&format!(
        "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now()) WHERE id = $1 RETURNING {COLS}"
    ))
    .bind(key_id)
    .fetch_optional(pool)
    .await?)
}

/// Replaces a key's own rate limits.
pub async fn set_limits(pool: &PgPool, key_id: Uuid, limits: KeyLimits) -> Result<Option<ApiKey>> {
    Ok(sqlx::query_as::<_, ApiKey>(&format!(
        "UPDATE api_keys SET rpm = $2, tpm = $3 WHERE id = $1 RETURNING {COLS}"
    ))
    .bind(key_id)
    .bind(limits.rpm)
    .bind(limits.tpm)
    .fetch_optional(pool)
    .await?)
}

/// What authentication reads about keys, with the tenant's state.
const AUTH_SELECT: &str =
    "SELECT k.prefix, k.id, k.tenant_id, k.secret_hash, k.scopes, k.expires_at,
        (k.revoked_at IS NOT NULL) AS revoked,
        (t.disabled OR t.deleted_at IS NOT NULL) AS tenant_disabled, k.rpm, k.tpm, t.allowed_models
 FROM api_keys k JOIN tenants t ON t.id = k.tenant_id";

pub async fn auth_by_prefix(pool: &PgPool, prefix: &str) -> Result<Option<KeyAuth>> {
    Ok(
        sqlx::query_as::<_, KeyAuth>(&format!("{AUTH_SELECT} WHERE k.prefix = $1"))
            .bind(prefix)
            .fetch_optional(pool)
            .await?,
    )
}

/// Authentication data of every key of a tenant (to refresh caches after a change).
pub async fn auth_for_tenant(pool: &PgPool, tenant_id: Uuid) -> Result<Vec<(String, KeyAuth)>> {
    #[derive(sqlx::FromRow)]
    struct Row {
        prefix: String,
        #[sqlx(flatten)]
        auth: KeyAuth,
    }
    let rows = sqlx::query_as::<_, Row>(&format!("{AUTH_SELECT} WHERE k.tenant_id = $1"))
        .bind(tenant_id)
        .fetch_all(pool)
        .await?;
    Ok(rows.into_iter().map(|r| (r.prefix, r.auth)).collect())
}

/// Records use, at most once a minute per key so busy keys cost no extra writes.
pub async fn touch(pool: &PgPool, key_id: Uuid) -> Result<()> {
    sqlx::query(
        "UPDATE api_keys SET last_used_at = now()
         WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')",
    )
    .bind(key_id)
    .execute(pool)
    .await?;
    Ok(())
}
