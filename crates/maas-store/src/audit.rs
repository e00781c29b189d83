//! Audit log of admin actions: who (the JWT `sub`) did what to which object.

use crate::Result;
use serde_json::Value;
use sqlx::PgPool;

pub async fn record(
    pool: &PgPool,
    actor: &str,
    action: &str,
    target: Option<&str>,
    details: Value,
) -> Result<()> {
    sqlx::query("INSERT INTO audit_log (actor, action, target, details) VALUES ($1, $2, $3, $4)")
        .bind(actor)
        .bind(action)
        .bind(target)
        .bind(details)
        .execute(pool)
        .await?;
    Ok(())
}
