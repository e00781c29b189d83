//! What a tenant can see of the queue: where a queued job stands, when it
//! should start, and how long its jobs waited over the last hour.

use crate::Result;
use chrono::{DateTime, Utc};
use maas_core::messages::ModelSlots;
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

/// Where a queued job stands.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Standing {
    /// 1 = the next job of its model to be dispatched.
    pub position: i64,
    /// `position` jobs at the model's recent rate over the slots serving it
    /// now; absent while no worker serves the model or nothing finished on it
    /// in the last hour.
    pub estimated_start_at: Option<DateTime<Utc>>,
    pub estimated_wait_ms: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct LaneCount {
    tenant_id: Uuid,
    lane: String,
    weight: i32,
    queued: i64,
    older: i64,
}

/// Jobs dispatched before this one under the scheduler's policy: the
/// interactive lane before the batch lane, and within a lane weighted fair
/// share (stride scheduling), so while the job's tenant gets `k + 1`
/// dispatches (its `k` older jobs and this one), a tenant of weight `w_t`
/// gets `(k + 1) · w_t / w` of its own. Aging of old batch work is left out.
fn jobs_ahead(rows: &[LaneCount], tenant_id: Uuid, lane: &str) -> i64 {
    let own = rows
        .iter()
        .find(|r| r.tenant_id == tenant_id && r.lane == lane);
    let (k, w) = own.map_or((0, 1), |r| (r.older, i64::from(r.weight.max(1))));
    let others: i64 = rows
        .iter()
        .filter(|r| r.lane == lane && r.tenant_id != tenant_id)
        .map(|r| r.queued.min((k + 1) * i64::from(r.weight.max(1)) / w))
        .sum();
    let interactive_first: i64 = if lane == "batch" {
        rows.iter()
            .filter(|r| r.lane == "interactive")
            .map(|r| r.queued)
            .sum()
    } else {
        0
    };
    k + others + interactive_first
}

/// Where `job_id` (queued, of `tenant_id`) stands in its model's queue.
pub async fn standing(
    pool: &PgPool,
    job_id: Uuid,
    tenant_id: Uuid,
    model: &str,
    version: Option<&str>,
    lane: &str,
    created_at: DateTime<Utc>,
) -> Result<Standing> {
    // The queue is the version's: its jobs, the slots offered for it.
    let route = match version {
        Some(v) => format!("{model}@{v}"),
        None => model.to_owned(),
    };
    let rows = sqlx::query_as::<_, LaneCount>(
        "SELECT j.tenant_id, j.lane, t.weight, count(*) AS queued,
                count(*) FILTER (WHERE (j.created_at, j.id) < ($2, $3)) AS older
         FROM jobs j JOIN tenants t ON t.id = j.tenant_id
         WHERE j.status = 'queued' AND j.model = $1 AND j.model_version IS NOT DISTINCT FROM $4
         GROUP BY j.tenant_id, j.lane, t.weight",
    )
    .bind(model)
    .bind(created_at)
    .bind(job_id)
    .bind(version)
    .fetch_all(pool)
    .await?;
    let position = jobs_ahead(&rows, tenant_id, lane) + 1;
    let workers: Vec<serde_json::Value> =
        sqlx::query_scalar("SELECT models FROM workers WHERE status = 'alive'")
            .fetch_all(pool)
            .await?;
    let slots: i64 = workers
        .into_iter()
        .filter_map(|m| serde_json::from_value::<Vec<ModelSlots>>(m).ok())
        .flatten()
        .filter(|s| s.model == route)
        .map(|s| i64::from(s.slots))
        .sum();
    let mean_ms: Option<f64> = sqlx::query_scalar(
        "SELECT avg(extract(epoch FROM finished_at - started_at) * 1000)::float8 FROM jobs
         WHERE model = $1 AND status = 'succeeded' AND finished_at > now() - interval '1 hour' AND started_at IS NOT NULL",
    )
    .bind(model)
    .fetch_one(pool)
    .await?;
    let wait = match mean_ms {
        Some(mean) if slots > 0 => Some((position as f64 * mean / slots as f64).round() as i64),
        _ => None,
    };
    Ok(Standing {
        position,
        estimated_start_at: wait.map(|ms| Utc::now() + chrono::Duration::milliseconds(ms)),
        estimated_wait_ms: wait,
    })
}

/// Queue time (creation to dispatch) of a tenant's jobs dispatched in the
/// last hour, overall (`model` null) and per model.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct QueueTime {
    pub model: Option<String>,
    pub jobs: i64,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
}

pub async fn queue_times(pool: &PgPool, tenant_id: Uuid) -> Result<Vec<QueueTime>> {
    Ok(sqlx::query_as::<_, QueueTime>(
        "SELECT model, count(*) AS jobs,
                percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) AS p50_ms,
                percentile_cont(0.95) WITHIN GROUP (ORDER BY ms) AS p95_ms
         FROM (SELECT model, extract(epoch FROM dispatched_at - created_at) * 1000 AS ms FROM jobs
               WHERE tenant_id = $1 AND dispatched_at > now() - interval '1 hour') q
         GROUP BY GROUPING SETS ((), (model))
         ORDER BY model NULLS FIRST",
    )
    .bind(tenant_id)
    .fetch_all(pool)
    .await?)
}

/// The tenant's jobs queued now, per model.
pub async fn queued_now(pool: &PgPool, tenant_id: Uuid) -> Result<Vec<(String, i64)>> {
    Ok(sqlx::query_as("SELECT model, count(*) FROM jobs WHERE tenant_id = $1 AND status = 'queued' GROUP BY model ORDER BY model")
        .bind(tenant_id)
        .fetch_all(pool)
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(tenant_id: Uuid, lane: &str, weight: i32, queued: i64, older: i64) -> LaneCount {
        LaneCount {
            tenant_id,
            lane: lane.into(),
            weight,
            queued,
            older,
        }
    }

    #[test]
    fn position_follows_lanes_and_weights() {
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        // A (weight 1) has 3 older batch jobs; B (weight 2) has 100 queued;
        // C has 5 interactive jobs, all served first.
        let rows = [
            row(a, "batch", 1, 4, 3),
            row(b, "batch", 2, 100, 50),
            row(c, "interactive", 1, 5, 0),
        ];
        // A's 4th job: 3 of A's own, 8 of B's (2 per A dispatch), 5 interactive.
        assert_eq!(jobs_ahead(&rows, a, "batch"), 3 + 8 + 5);
        // An interactive job of A is not behind batch work.
        assert_eq!(
            jobs_ahead(
                &[row(a, "interactive", 1, 1, 0), row(b, "batch", 2, 100, 0)],
                a,
                "interactive"
            ),
            0
        );
        // Another tenant's short queue counts only what it has.
        assert_eq!(
            jobs_ahead(
                &[row(a, "batch", 1, 11, 10), row(b, "batch", 1, 2, 0)],
                a,
                "batch"
            ),
            10 + 2
        );
    }
}
