//! Worker registry: what each worker serves and when it was last heard from.
//! Written by the scheduler from heartbeats, read back when a scheduler takes over.

use crate::Result;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WorkerRow {
    pub id: String,
    pub models: Value,
    pub status: String,
    pub last_heartbeat_at: DateTime<Utc>,
}

pub async fn heartbeat(pool: &PgPool, id: &str, models: &Value, draining: bool) -> Result<()> {
    let status = if draining { "draining" } else { "alive" };
    sqlx::query(
        "INSERT INTO workers (id, models, status) VALUES ($1, $2, $3)
         ON CONFLICT (id) DO UPDATE SET models = $2, status = $3, last_heartbeat_at = now()
         WHERE workers.status <> 'gone'",
    )
    .bind(id)
    .bind(models)
    .bind(status)
    .execute(pool)
    .await?;
    Ok(())
}

/// `dead` (stopped heartbeating) or `gone` (deregistered cleanly).
pub async fn set_status(pool: &PgPool, id: &str, status: &str) -> Result<()> {
    sqlx::query("UPDATE workers SET status = $2 WHERE id = $1")
        .bind(id)
        .bind(status)
        .execute(pool)
        .await?;
    Ok(())
}

pub async fn live(pool: &PgPool) -> Result<Vec<WorkerRow>> {
    Ok(sqlx::query_as::<_, WorkerRow>(
        "SELECT id, models, status, last_heartbeat_at FROM workers WHERE status IN ('alive', 'draining')",
    )
    .fetch_all(pool)
    .await?)
}

/// Models offered by a worker alive now or heard from in the last ten minutes
/// (so a worker restart does not turn jobs away).
pub async fn served_models(pool: &PgPool) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT DISTINCT m->>'model' FROM workers, jsonb_array_elements(models) AS m
         WHERE status = 'alive' OR last_heartbeat_at > now() - interval '10 minutes'",
    )
    .fetch_all(pool)
    .await?)
}
