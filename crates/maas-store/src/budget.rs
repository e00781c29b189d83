//! Token budgets: the Postgres ledger of what each tenant has reserved and
//! spent per budget period (see the migration that creates `budget_ledger`
//! for how settlement works).

use crate::Result;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

/// A budget period, starting at UTC midnight, Monday or the first of the month.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Day,
    Week,
    Month,
}

impl Period {
    /// `None` (no period set) is a month.
    pub fn parse(s: Option<&str>) -> Option<Self> {
        match s {
            None | Some("month") => Some(Self::Month),
            Some("day") => Some(Self::Day),
            Some("week") => Some(Self::Week),
            Some(_) => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Day => "day",
            Self::Week => "week",
            Self::Month => "month",
        }
    }
}

/// A tenant's standing in one period.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Standing {
    pub period_start: DateTime<Utc>,
    /// Held by unfinished jobs.
    pub reserved: i64,
    /// Used by finished jobs.
    pub spent: i64,
}

const PERIOD_START: &str = "date_trunc($2, now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'";

/// The current period's ledger row, created on first use with what the
/// tenant's finished jobs already used in the period (a budget set mid-month
/// counts the month so far). Row-locked until the transaction ends.
pub async fn open(
    tx: &mut Transaction<'_, Postgres>,
    tenant_id: Uuid,
    period: Period,
) -> Result<Standing> {
    sqlx::query(&format!(
        "INSERT INTO budget_ledger (tenant_id, period_start, spent)
         SELECT $1, {PERIOD_START}, COALESCE(sum(prompt_tokens + completion_tokens), 0)::bigint
         FROM usage_records WHERE tenant_id = $1 AND created_at >= {PERIOD_START}
         ON CONFLICT (tenant_id, period_start) DO NOTHING"
    ))
    .bind(tenant_id)
    .bind(period.as_str())
    .execute(&mut **tx)
    .await?;
    Ok(sqlx::query_as::<_, Standing>(&format!(
        "SELECT period_start, reserved, spent FROM budget_ledger
         WHERE tenant_id = $1 AND period_start = {PERIOD_START} FOR UPDATE"
    ))
    .bind(tenant_id)
    .bind(period.as_str())
    .fetch_one(&mut **tx)
    .await?)
}

/// Adds a job's reservation to the period it was admitted in.
pub async fn reserve(
    tx: &mut Transaction<'_, Postgres>,
    tenant_id: Uuid,
    period_start: DateTime<Utc>,
    tokens: i64,
) -> Result<()> {
    sqlx::query("UPDATE budget_ledger SET reserved = reserved + $3, updated_at = now() WHERE tenant_id = $1 AND period_start = $2")
        .bind(tenant_id)
        .bind(period_start)
        .bind(tokens)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The tenant's standing in the current period (zeros when nothing was
/// reserved in it yet).
pub async fn current(pool: &PgPool, tenant_id: Uuid, period: Period) -> Result<Standing> {
    let mut tx = pool.begin().await?;
    let s = open(&mut tx, tenant_id, period).await?;
    tx.commit().await?;
    Ok(s)
}
