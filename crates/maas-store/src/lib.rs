//! Storage shared by every service: the Postgres schema (migrations embedded
//! from `migrations/`), typed queries for each table, and the Redis caches
//! (API-key cache and hot job status).
//!
//! Every state change of a job is a single conditional `UPDATE ... WHERE
//! status IN (...)`, so duplicate deliveries and races between services are
//! settled by Postgres, not by the callers. All functions are async and take a
//! pool or an explicit transaction; nothing here holds a lock across calls.

pub mod audit;
pub mod budget;
pub mod cache;
pub mod jobs;
pub mod keys;
pub mod queue;
pub mod quotas;
pub mod tenants;
pub mod usage;
pub mod workers;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use std::str::FromStr;
use std::time::Duration;

pub use sqlx;

/// The schema's migrations, embedded at build time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("redis error: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("a row with this {0} already exists")]
    Conflict(&'static str),
    /// The tenant already has `max` unfinished jobs.
    #[error("the tenant already has {max} unfinished jobs")]
    TenantQueueFull { max: i64 },
    /// The platform holds `max` queued jobs.
    #[error("the platform's queue holds {max} jobs")]
    QueueFull { max: i64 },
    /// The tenant already has `max` sync jobs unfinished (its `max_concurrent`).
    #[error("the tenant already has {max} requests in progress")]
    TenantBusy { max: i64 },
    /// The job's token bound does not fit what is left of the budget.
    #[error("the token budget has {remaining} tokens left; the job needs up to {needed}")]
    BudgetExhausted {
        limit: i64,
        period: budget::Period,
        remaining: i64,
        needed: i64,
    },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Opens a pool. Fails fast (5 s) when Postgres is unreachable.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool> {
    pool(PgConnectOptions::from_str(url)?, max_connections).await
}

async fn pool(opts: PgConnectOptions, max_connections: u32) -> Result<PgPool> {
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(opts)
        .await?)
}

/// A pool for the scheduler and workers, whose writes are job transitions
/// that can always be derived again: their commits do not wait for the WAL
/// flush (`synchronous_commit = off`). A transition lost in a Postgres crash
/// leaves the job in its previous state, from which the lease and
/// reconciliation logic moves it on again; nothing is lost and nothing runs
/// twice to completion. Job creation (the API's pool) stays fully durable.
pub async fn connect_for_transitions(url: &str, max_connections: u32) -> Result<PgPool> {
    pool(
        PgConnectOptions::from_str(url)?.options([("synchronous_commit", "off")]),
        max_connections,
    )
    .await
}

/// Applies pending migrations. Postgres advisory locks inside sqlx make this
/// safe when several services start at once.
pub async fn migrate(pool: &PgPool) -> Result<()> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// True when every embedded migration has been applied (readiness).
pub async fn schema_current(pool: &PgPool) -> Result<bool> {
    let latest = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    let applied: Option<i64> =
        sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(pool)
            .await?;
    Ok(applied.unwrap_or(0) >= latest)
}

/// Maps a unique-violation to [`StoreError::Conflict`].
pub(crate) fn conflict_on_unique(e: sqlx::Error, what: &'static str) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(what),
        _ => StoreError::Db(e),
    }
}
