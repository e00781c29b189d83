//! The model registry: models, immutable versions, labels, the versions an
//! admin asked to have loaded (desired state) and what each worker has
//! loaded (observed state).
//!
//! A model string resolves `name` → its `stable` label, `name:label` → that
//! label, `name@version` → that version; see [`Snapshot::resolve`].

use crate::{conflict_on_unique, Result};
use chrono::{DateTime, Utc};
use maas_core::models::ModelKind;
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;

/// The label a bare model name resolves through.
pub const STABLE: &str = "stable";

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ModelRow {
    pub name: String,
    pub kind: String,
    pub created_at: DateTime<Utc>,
}

impl ModelRow {
    pub fn kind(&self) -> Option<ModelKind> {
        ModelKind::parse(&self.kind)
    }
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct VersionRow {
    pub model: String,
    pub version: String,
    pub path: Option<String>,
    pub checksum: Option<String>,
    pub settings: Value,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct LabelRow {
    pub model: String,
    pub label: String,
    pub version: String,
    pub updated_at: DateTime<Utc>,
}

/// A version an admin asked to have loaded.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct LoadRow {
    pub model: String,
    pub version: String,
    /// On that many workers; `None`: on every worker.
    pub replicas: Option<i32>,
    pub requested_at: DateTime<Utc>,
}

/// A version's state on one worker.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ReplicaRow {
    pub worker_id: String,
    pub model: String,
    pub version: String,
    pub state: String,
    pub reason: Option<String>,
    pub updated_at: DateTime<Utc>,
    /// Whether the worker is alive (from the worker registry).
    pub worker_alive: bool,
}

/// The whole registry at one moment.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    pub models: Vec<ModelRow>,
    pub versions: Vec<VersionRow>,
    pub labels: Vec<LabelRow>,
    pub loads: Vec<LoadRow>,
}

/// What a model string names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub model: String,
    pub version: String,
    pub kind: ModelKind,
    /// The label it went through, if any.
    pub label: Option<String>,
}

impl Resolved {
    /// The key jobs are routed by and workers announce slots for.
    pub fn route(&self) -> String {
        route_key(&self.model, &self.version)
    }
}

/// `name@version`: what the scheduler routes by and workers announce.
pub fn route_key(model: &str, version: &str) -> String {
    format!("{model}@{version}")
}

impl Snapshot {
    pub fn model(&self, name: &str) -> Option<&ModelRow> {
        self.models.iter().find(|m| m.name == name)
    }

    pub fn version(&self, model: &str, version: &str) -> Option<&VersionRow> {
        self.versions
            .iter()
            .find(|v| v.model == model && v.version == version)
    }

    pub fn label(&self, model: &str, label: &str) -> Option<&LabelRow> {
        self.labels
            .iter()
            .find(|l| l.model == model && l.label == label)
    }

    pub fn is_loaded(&self, model: &str, version: &str) -> bool {
        self.loads
            .iter()
            .any(|l| l.model == model && l.version == version)
    }

    /// `name`, `name:label` or `name@version`; `None` when it names nothing.
    pub fn resolve(&self, s: &str) -> Option<Resolved> {
        let (name, label, version) = if let Some((n, v)) = s.split_once('@') {
            (n, None, Some(v))
        } else if let Some((n, l)) = s.split_once(':') {
            (n, Some(l), None)
        } else {
            (s, Some(STABLE), None)
        };
        let model = self.model(name)?;
        let kind = model.kind()?;
        let version = match (label, version) {
            (_, Some(v)) => self.version(name, v)?.version.clone(),
            (Some(l), None) => self.label(name, l)?.version.clone(),
            (None, None) => return None,
        };
        Some(Resolved {
            model: name.to_owned(),
            version,
            kind,
            label: label.map(str::to_owned),
        })
    }
}

pub async fn snapshot(pool: &PgPool) -> Result<Snapshot> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let models = sqlx::query_as("SELECT name, kind, created_at FROM models ORDER BY name")
        .fetch_all(&mut *tx)
        .await?;
    let versions = sqlx::query_as(
        "SELECT model, version, path, checksum, settings, created_at FROM model_versions ORDER BY model, created_at, version",
    )
    .fetch_all(&mut *tx)
    .await?;
    let labels = sqlx::query_as(
        "SELECT model, label, version, updated_at FROM model_labels ORDER BY model, label",
    )
    .fetch_all(&mut *tx)
    .await?;
    let loads = sqlx::query_as(
        "SELECT model, version, replicas, requested_at FROM model_loads ORDER BY model, version",
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Snapshot {
        models,
        versions,
        labels,
        loads,
    })
}

/// Every version's state on every worker that reported one.
pub async fn replicas(pool: &PgPool) -> Result<Vec<ReplicaRow>> {
    Ok(sqlx::query_as(
        "SELECT r.worker_id, r.model, r.version, r.state, r.reason, r.updated_at,
                COALESCE(w.status = 'alive', FALSE) AS worker_alive
         FROM model_replicas r LEFT JOIN workers w ON w.id = r.worker_id
         ORDER BY r.model, r.version, r.worker_id",
    )
    .fetch_all(pool)
    .await?)
}

/// Registers a new version; a version that exists already is a conflict.
pub async fn register_version(
    pool: &PgPool,
    model: &str,
    version: &str,
    path: Option<&str>,
    checksum: Option<&str>,
    settings: &Value,
) -> Result<VersionRow> {
    sqlx::query_as(
        "INSERT INTO model_versions (model, version, path, checksum, settings)
         VALUES ($1, $2, $3, $4, $5)
         RETURNING model, version, path, checksum, settings, created_at",
    )
    .bind(model)
    .bind(version)
    .bind(path)
    .bind(checksum)
    .bind(settings)
    .fetch_one(pool)
    .await
    .map_err(|e| conflict_on_unique(e, "version"))
}

/// Asks for a version to be loaded (on every worker, or on `replicas`).
pub async fn request_load(
    pool: &PgPool,
    model: &str,
    version: &str,
    replicas: Option<i32>,
) -> Result<LoadRow> {
    Ok(sqlx::query_as(
        "INSERT INTO model_loads (model, version, replicas) VALUES ($1, $2, $3)
         ON CONFLICT (model, version) DO UPDATE SET replicas = EXCLUDED.replicas, requested_at = now()
         RETURNING model, version, replicas, requested_at",
    )
    .bind(model)
    .bind(version)
    .bind(replicas)
    .fetch_one(pool)
    .await?)
}

/// Why an unload was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnloadRefused {
    /// These labels still point at the version.
    Labelled(Vec<String>),
}

/// Withdraws a load request: workers drain the version (its running jobs
/// finish) and unload it. Refused while a label points at it.
pub async fn request_unload(
    pool: &PgPool,
    model: &str,
    version: &str,
) -> Result<Result<bool, UnloadRefused>> {
    let mut tx = pool.begin().await?;
    // Serialises with label moves of this model.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('maas.model.' || $1))")
        .bind(model)
        .execute(&mut *tx)
        .await?;
    let labels: Vec<String> = sqlx::query_scalar(
        "SELECT label FROM model_labels WHERE model = $1 AND version = $2 ORDER BY label",
    )
    .bind(model)
    .bind(version)
    .fetch_all(&mut *tx)
    .await?;
    if !labels.is_empty() {
        return Ok(Err(UnloadRefused::Labelled(labels)));
    }
    let n = sqlx::query("DELETE FROM model_loads WHERE model = $1 AND version = $2")
        .bind(model)
        .bind(version)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    tx.commit().await?;
    Ok(Ok(n > 0))
}

/// Points `label` at `version`, atomically, if that version is `ready` on
/// at least one live worker; `None` when it is not.
pub async fn set_label(
    pool: &PgPool,
    model: &str,
    label: &str,
    version: &str,
) -> Result<Option<LabelRow>> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('maas.model.' || $1))")
        .bind(model)
        .execute(&mut *tx)
        .await?;
    let ready: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM model_replicas r JOIN workers w ON w.id = r.worker_id
                        WHERE r.model = $1 AND r.version = $2 AND r.state = 'ready' AND w.status = 'alive'
                          -- and the scheduler has its slots: jobs routed to it are admitted
                          AND EXISTS (SELECT 1 FROM jsonb_array_elements(w.models) m
                                      WHERE m->>'model' = $1 || '@' || $2))
            AND EXISTS (SELECT 1 FROM model_loads WHERE model = $1 AND version = $2)",
    )
    .bind(model)
    .bind(version)
    .fetch_one(&mut *tx)
    .await?;
    if !ready {
        return Ok(None);
    }
    let row = sqlx::query_as(
        "INSERT INTO model_labels (model, label, version) VALUES ($1, $2, $3)
         ON CONFLICT (model, label) DO UPDATE SET version = EXCLUDED.version, updated_at = now()
         RETURNING model, label, version, updated_at",
    )
    .bind(model)
    .bind(label)
    .bind(version)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some(row))
}

/// Records a version's state on a worker.
pub async fn set_replica_state(
    pool: &PgPool,
    worker_id: &str,
    model: &str,
    version: &str,
    state: &str,
    reason: Option<&str>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO model_replicas (worker_id, model, version, state, reason) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (worker_id, model, version) DO UPDATE SET state = EXCLUDED.state, reason = EXCLUDED.reason, updated_at = now()",
    )
    .bind(worker_id)
    .bind(model)
    .bind(version)
    .bind(state)
    .bind(reason)
    .execute(pool)
    .await?;
    Ok(())
}

/// Claims a replica of a version wanted on `replicas` workers, for this
/// worker: when fewer live workers than that hold it (or are loading it),
/// this worker's state becomes `loading` and the answer is `true`. One claim
/// at a time per version (an advisory lock), so two workers never both take
/// the last replica. A worker not yet in the worker registry (starting up)
/// counts while its claim is recent.
pub async fn claim_replica(
    pool: &PgPool,
    worker_id: &str,
    model: &str,
    version: &str,
    replicas: i32,
) -> Result<bool> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('maas.replica.' || $1 || '@' || $2))")
        .bind(model)
        .bind(version)
        .execute(&mut *tx)
        .await?;
    let held: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM model_replicas r LEFT JOIN workers w ON w.id = r.worker_id
         WHERE r.model = $1 AND r.version = $2 AND r.worker_id <> $3
           AND r.state IN ('loading', 'warming', 'ready')
           AND (w.status = 'alive' OR (w.id IS NULL AND r.updated_at > now() - interval '2 minutes'))",
    )
    .bind(model)
    .bind(version)
    .bind(worker_id)
    .fetch_one(&mut *tx)
    .await?;
    if held >= i64::from(replicas) {
        tx.rollback().await?;
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO model_replicas (worker_id, model, version, state, reason) VALUES ($1, $2, $3, 'loading', NULL)
         ON CONFLICT (worker_id, model, version) DO UPDATE SET state = 'loading', reason = NULL, updated_at = now()",
    )
    .bind(worker_id)
    .bind(model)
    .bind(version)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// Jobs of a version not finished yet (queued, dispatched or running).
pub async fn unfinished_jobs(pool: &PgPool, model: &str, version: &str) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE model = $1 AND model_version = $2
           AND status IN ('queued', 'dispatched', 'running')",
    )
    .bind(model)
    .bind(version)
    .fetch_one(pool)
    .await?)
}

/// Pins a version's checksum on first load (trust on first use) and
/// returns the pinned value.
pub async fn pin_checksum(
    pool: &PgPool,
    model: &str,
    version: &str,
    checksum: &str,
) -> Result<Option<String>> {
    Ok(sqlx::query_scalar(
        "UPDATE model_versions SET checksum = COALESCE(checksum, $3)
         WHERE model = $1 AND version = $2 RETURNING checksum",
    )
    .bind(model)
    .bind(version)
    .bind(checksum)
    .fetch_optional(pool)
    .await?
    .flatten())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap() -> Snapshot {
        let now = Utc::now();
        let v = |m: &str, v: &str| VersionRow {
            model: m.into(),
            version: v.into(),
            path: None,
            checksum: None,
            settings: Value::Null,
            created_at: now,
        };
        Snapshot {
            models: vec![ModelRow {
                name: "m".into(),
                kind: "embedder".into(),
                created_at: now,
            }],
            versions: vec![v("m", "a"), v("m", "b")],
            labels: vec![
                LabelRow {
                    model: "m".into(),
                    label: STABLE.into(),
                    version: "a".into(),
                    updated_at: now,
                },
                LabelRow {
                    model: "m".into(),
                    label: "canary".into(),
                    version: "b".into(),
                    updated_at: now,
                },
            ],
            loads: vec![],
        }
    }

    #[test]
    fn a_model_string_resolves_through_labels_or_to_a_version() {
        let s = snap();
        assert_eq!(s.resolve("m").unwrap().version, "a");
        assert_eq!(s.resolve("m").unwrap().label.as_deref(), Some(STABLE));
        assert_eq!(s.resolve("m:canary").unwrap().version, "b");
        let exact = s.resolve("m@b").unwrap();
        assert_eq!(
            (exact.version.as_str(), exact.label.as_deref()),
            ("b", None)
        );
        assert_eq!(exact.route(), "m@b");
        assert_eq!(exact.kind, ModelKind::Embedder);
        for none in ["x", "m:nope", "m@c", "x@a", "m@", ":stable"] {
            assert!(s.resolve(none).is_none(), "{none}");
        }
    }
}
