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

/// Which models some worker serves, re-read from Postgres at most every 2 s.
#[derive(Default)]
pub struct ServedModels {
    cached: Mutex<Option<(Instant, HashSet<String>)>>,
}

impl ServedModels {
    pub async fn contains(&self, db: &PgPool, model: &str) -> Result<bool, maas_store::StoreError> {
        let fresh = self.cached.lock().ok().and_then(|c| {
            c.as_ref()
                .filter(|(at, _)| at.elapsed() < Duration::from_secs(2))
                .map(|(_, set)| set.contains(model))
        });
        if let Some(hit) = fresh {
            return Ok(hit);
        }
        let set: HashSet<String> = maas_store::workers::served_models(db)
            .await?
            .into_iter()
            .collect();
        let hit = set.contains(model);
        if let Ok(mut c) = self.cached.lock() {
            *c = Some((Instant::now(), set));
        }
        Ok(hit)
    }
}
