//! Storage shared by every service: the Postgres schema (migrations embedded
//! from `migrations/`), typed queries for each table, and the Redis caches
//! (API-key cache and hot job status).
//!
//! Every state change of a job is a single conditional `UPDATE ... WHERE
//! status IN (...)`, so duplicate deliveries and races between services are
//! settled by Postgres, not by the callers. All functions are async and take a
//! pool or an explicit transaction; nothing here holds a lock across calls.

pub mod audit;
pub mod batches;
pub mod budget;
pub mod cache;
pub mod files;
pub mod jobs;
pub mod keys;
pub mod queue;
pub mod quotas;
pub mod registry;
pub mod tenants;
pub mod usage;
pub mod webhooks;
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
    /// The tenant's files would take more than `limit` bytes (`used` now).
    #[error("the tenant's files take {used} of its {limit} bytes")]
    StorageFull { limit: i64, used: i64 },
    /// A batch's lines would take the tenant's unfinished batch lines past
    /// `limit` tokens.
    #[error(
        "the tenant's batches hold {held} tokens; this one needs {needed} more (limit {limit})"
    )]
    EnqueuedTokensExceeded { limit: i64, held: i64, needed: i64 },
    /// The object store failed.
    #[error("object store: {0}")]
    Object(String),
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
    Ok(options(max_connections, Duration::from_secs(5))
        .connect_with(PgConnectOptions::from_str(url)?)
        .await?)
}

fn options(max_connections: u32, acquire_timeout: Duration) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(acquire_timeout)
        // A connection broken by a restart is found out before it is handed
        // to a caller, not by the caller's query.
        .test_before_acquire(true)
}

/// A pool that connects on first use: a service starts while Postgres is
/// away, and every call made meanwhile fails within `acquire_timeout` (so the
/// API answers 503 in about that long, never hangs). Connections broken by
/// a restart are replaced as they are found.
pub fn connect_lazy(url: &str, max_connections: u32, acquire_timeout: Duration) -> Result<PgPool> {
    Ok(options(max_connections, acquire_timeout)
        .connect_lazy_with(PgConnectOptions::from_str(url)?))
}

/// A lazy pool for the scheduler and workers. Their transitions (dispatch,
/// start, re-queue) can always be derived again, so those commits do not
/// wait for the WAL flush (`synchronous_commit = off`): a transition lost
/// in a crash of the database host leaves the job in its previous state,
/// from which the lease and reconciliation logic moves it on again. The one
/// write that cannot be derived again, a job's result with its usage record
/// ([`jobs::complete`]), is committed durably inside its own transaction.
pub fn connect_for_transitions(
    url: &str,
    max_connections: u32,
    acquire_timeout: Duration,
) -> Result<PgPool> {
    Ok(options(max_connections, acquire_timeout).connect_lazy_with(
        PgConnectOptions::from_str(url)?.options([("synchronous_commit", "off")]),
    ))
}

/// Waits until the schema is migrated, retrying (capped backoff) while
/// Postgres is away. Returns only once the migrations are applied.
pub async fn migrate_when_reachable(pool: &PgPool) {
    let mut backoff = maas_core::backoff::Backoff::reconnect();
    let mut failures = 0u32;
    loop {
        match migrate(pool).await {
            Ok(()) => {
                if failures > 0 {
                    tracing::info!("Postgres reachable again; schema current");
                }
                return;
            }
            Err(e) => {
                failures += 1;
                if failures == 1 || failures.is_multiple_of(30) {
                    tracing::warn!(error = %e, failures, "Postgres unreachable; waiting for it to migrate the schema");
                }
                backoff.wait().await;
            }
        }
    }
}

/// Whether an error means Postgres is unreachable, restarting or refusing
/// connections (a 503 and a retry, not a bug): pool time-outs, broken
/// connections, and SQLSTATE classes 08 (connection exception), 53
/// (insufficient resources) and 57 (operator intervention: shutdown,
/// cancelled by the administrator, recovery in progress).
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("53") || c.starts_with("57")),
        // sqlx reports a connection closed mid-message as a protocol error.
        sqlx::Error::Protocol(m) => m.contains("closed") || m.contains("connection"),
        _ => false,
    }
}

impl StoreError {
    /// See [`is_unavailable`].
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Db(e) => is_unavailable(e),
            Self::Migrate(sqlx::migrate::MigrateError::Execute(e)) => is_unavailable(e),
            _ => false,
        }
    }
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
