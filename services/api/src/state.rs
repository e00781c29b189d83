//! Shared state of the API handlers.

use crate::auth::JwtVerifier;
use crate::replies::Replies;
use crate::settings::ApiSettings;
use maas_mq::Broker;
use maas_store::cache::Cache;
use sqlx::PgPool;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

#[derive(Clone)]
pub struct AppState {
    pub db: PgPool,
    pub cache: Cache,
    pub broker: Arc<Broker>,
    pub replies: Arc<Replies>,
    pub jwt: Arc<JwtVerifier>,
    pub settings: Arc<ApiSettings>,
    /// This instance's reply queue, named in sync jobs' `reply_to`.
    pub reply_queue: String,
    /// Announcements of accepted async jobs that the broker could not take
    /// yet (the rows are queued in Postgres already).
    pub outbox: Arc<crate::outbox::Outbox>,
    pub served: Arc<ServedModels>,
    /// The model registry, re-read at most every second.
    pub registry: Arc<RegistryCache>,
    /// Where file content lives.
    pub files: maas_store::files::FileStore,
    /// Tenants' quotas (rate limits), re-read at most every 2 s.
    pub quotas: Arc<crate::ratelimit::QuotaCache>,
    /// When this instance last recorded each key's use.
    pub key_touches: Arc<KeyTouches>,
}

/// Records a key's `last_used_at` at most once a minute per key and API
/// instance, so a busy key costs no write per request (the column's
/// resolution is a minute anyway).
#[derive(Default)]
pub struct KeyTouches {
    last: Mutex<HashMap<Uuid, Instant>>,
}

impl KeyTouches {
    /// Whether `key` is due for a write now (and marks it written).
    pub fn due(&self, key: Uuid) -> bool {
        let Ok(mut last) = self.last.lock() else {
            return false;
        };
        let now = Instant::now();
        if last
            .get(&key)
            .is_some_and(|t| now.duration_since(*t) < Duration::from_secs(60))
        {
            return false;
        }
        if last.len() > 100_000 {
            last.retain(|_, t| now.duration_since(*t) < Duration::from_secs(60));
        }
        last.insert(key, now);
        true
    }
}

/// The model registry as of at most a second ago: what model strings
/// resolve to. A label moved on another replica is seen within that second;
/// the version it pointed at stays loaded until an admin unloads it, so a
/// request resolved just before the move still runs.
#[derive(Default)]
pub struct RegistryCache {
    cached: Mutex<Option<(Instant, Arc<maas_store::registry::Snapshot>)>>,
}

impl RegistryCache {
    pub async fn get(
        &self,
        db: &PgPool,
    ) -> Result<Arc<maas_store::registry::Snapshot>, maas_store::StoreError> {
        let fresh = self.cached.lock().ok().and_then(|c| {
            c.as_ref()
                .filter(|(at, _)| at.elapsed() < Duration::from_secs(1))
                .map(|(_, s)| s.clone())
        });
        if let Some(s) = fresh {
            return Ok(s);
        }
        let snap = Arc::new(maas_store::registry::snapshot(db).await?);
        if let Ok(mut c) = self.cached.lock() {
            *c = Some((Instant::now(), snap.clone()));
        }
        Ok(snap)
    }

    /// When the cached copy was read (after its query had returned).
    pub fn read_at(&self) -> Option<Instant> {
        self.cached
            .lock()
            .ok()
            .and_then(|c| c.as_ref().map(|(at, _)| *at))
    }

    /// Forgets the cached copy (after this instance changed the registry).
    pub fn invalidate(&self) {
        if let Ok(mut c) = self.cached.lock() {
            *c = None;
        }
    }
}

/// Which models some worker serves, re-read from Postgres at most every 2 s
/// (a quarter of a second for a miss).
#[derive(Default)]
pub struct ServedModels {
    cached: Mutex<Option<(Instant, HashSet<String>)>>,
}

impl ServedModels {
    /// Whether some worker offers `model`. A miss is re-read when the cached
    /// set was read before `not_before` (the registry snapshot that resolved
    /// the request): a label may move only to a version the workers table
    /// lists, so a set read after the move includes it.
    pub async fn contains(
        &self,
        db: &PgPool,
        model: &str,
        not_before: Option<Instant>,
    ) -> Result<bool, maas_store::StoreError> {
        // A hit is kept for 2 s; a miss for a quarter of a second only, so a
        // version that has just become ready (and had a label moved to it)
        // is admitted at once, while a model nobody serves still costs at
        // most four reads a second.
        let fresh = self.cached.lock().ok().and_then(|c| {
            c.as_ref().and_then(|(at, set)| {
                let hit = set.contains(model);
                let ttl = if hit {
                    Duration::from_secs(2)
                } else {
                    Duration::from_millis(250)
                };
                let current = hit || not_before.is_none_or(|t| *at >= t);
                (current && at.elapsed() < ttl).then_some(hit)
            })
        });
        if let Some(hit) = fresh {
            return Ok(hit);
        }
        let started = Instant::now();
        let set: HashSet<String> = maas_store::workers::served_models(db)
            .await?
            .into_iter()
            .collect();
        let hit = set.contains(model);
        if let Ok(mut c) = self.cached.lock() {
            *c = Some((started, set));
        }
        Ok(hit)
    }
}
