//! Keeps what this worker has loaded in line with the registry: the
//! versions an admin asked for (`model_loads`) are loaded, warmed up and
//! offered; the ones withdrawn are drained (no new work; dispatched jobs
//! finish) and unloaded. No restart: this runs every
//! `MAAS_WORKER_RECONCILE_MS`. Each version's state on this worker is
//! written to `model_replicas` as it moves: `loading` → `warming` → `ready`,
//! or `failed` with the reason; `draining` → `unloaded`.
//!
//! A load that fails leaves everything else as it was; it is tried again
//! only when an admin asks again (a new request time).

use crate::actors::supervisor::{RunningFor, Supervisor};
use crate::runtime::{self, Loaded, VersionSpec};
use crate::settings::{Slots, WorkerSettings};
use actix::Addr;
use chrono::{DateTime, Utc};
use maas_core::backoff::Backoff;
use maas_store::registry;
use sqlx::PgPool;
use std::collections::HashMap;
use std::time::{Duration, Instant};

pub struct Loader {
    pub db: PgPool,
    pub worker_id: String,
    pub settings: WorkerSettings,
    pub slots: Slots,
    pub loaded: Loaded,
    /// Versions whose load failed, with the request it answered.
    failed: HashMap<String, DateTime<Utc>>,
    /// Withdrawn versions with no unfinished job left, since when.
    quiet_since: HashMap<String, Instant>,
}

/// How long a withdrawn version must have no unfinished job before it stops
/// offering slots (longer than an API instance may take to see the
/// withdrawal), and then again before it is unloaded (longer than the
/// scheduler takes to see the slots gone).
const DRAIN_QUIET: Duration = Duration::from_secs(3);

/// A version this worker should hold, with when that was asked.
struct Wanted {
    spec: VersionSpec,
    /// Why its registered settings are unusable, if they are.
    invalid: Option<String>,
    requested_at: DateTime<Utc>,
    replicas: Option<i32>,
}

impl Loader {
    pub fn new(
        db: PgPool,
        worker_id: String,
        settings: WorkerSettings,
        slots: Slots,
        loaded: Loaded,
    ) -> Self {
        Self {
            db,
            worker_id,
            settings,
            slots,
            loaded,
            failed: HashMap::new(),
            quiet_since: HashMap::new(),
        }
    }

    /// The first pass, before the worker announces itself: waits for
    /// Postgres as long as it takes, then loads what is asked for.
    pub async fn initial(&mut self) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(2));
        loop {
            match self.pass(None).await {
                Ok(()) => return,
                Err(e) => {
                    let wait = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "the model registry is unreachable; waiting before loading models");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    pub async fn run_forever(mut self, supervisor: Addr<Supervisor>) {
        let every = Duration::from_millis(self.settings.reconcile_ms.max(100));
        loop {
            tokio::time::sleep(every).await;
            if let Err(e) = self.pass(Some(&supervisor)).await {
                tracing::debug!(error = %e, "model registry not read; trying again");
            }
        }
    }

    async fn wanted(&self) -> Result<Vec<Wanted>, maas_store::StoreError> {
        let snap = registry::snapshot(&self.db).await?;
        let mut out = Vec::new();
        for l in &snap.loads {
            let (Some(m), Some(v)) = (snap.model(&l.model), snap.version(&l.model, &l.version))
            else {
                continue;
            };
            let Some(kind) = m.kind() else { continue };
            // Checked at registration; a row that still does not parse fails
            // its load with the reason rather than loading with defaults.
            let settings = maas_core::models::VersionSettings::parse(kind, &v.settings);
            out.push(Wanted {
                invalid: settings.as_ref().err().map(|e| e.message.clone()),
                spec: VersionSpec {
                    model: l.model.clone(),
                    version: l.version.clone(),
                    kind,
                    path: v.path.clone(),
                    checksum: v.checksum.clone(),
                    settings: settings.unwrap_or_default(),
                },
                requested_at: l.requested_at,
                replicas: l.replicas,
            });
        }
        Ok(out)
    }

    async fn state(&self, spec: &VersionSpec, state: &'static str, reason: Option<String>) {
        self.loaded.set_state(&spec.key(), state, reason.clone());
        if let Err(e) = registry::set_replica_state(
            &self.db,
            &self.worker_id,
            &spec.model,
            &spec.version,
            state,
            reason.as_deref(),
        )
        .await
        {
            tracing::warn!(model = %spec.key(), state, error = %e, "version state not recorded");
        }
    }

    /// One reconciliation: load what is wanted and missing, drain what is
    /// here and no longer wanted, unload what has drained.
    async fn pass(
        &mut self,
        supervisor: Option<&Addr<Supervisor>>,
    ) -> Result<(), maas_store::StoreError> {
        let wanted = self.wanted().await?;
        let here: HashMap<String, bool> = self
            .loaded
            .all()
            .into_iter()
            .map(|(k, _, draining)| (k, draining))
            .collect();
        for w in &wanted {
            let key = w.spec.key();
            if here.contains_key(&key) {
                // Here already (or asked for again while draining: it stays).
                continue;
            }
            if self.failed.get(&key) == Some(&w.requested_at) {
                continue;
            }
            if let Some(n) = w.replicas {
                if !registry::claim_replica(
                    &self.db,
                    &self.worker_id,
                    &w.spec.model,
                    &w.spec.version,
                    n,
                )
                .await?
                {
                    continue;
                }
            }
            self.load(w).await;
        }
        for (key, offering_stopped) in here {
            if wanted.iter().any(|w| w.spec.key() == key) {
                continue;
            }
            let Some(spec) = self.spec_of(&key) else {
                continue;
            };
            // Withdrawn: it keeps serving the jobs already resolved to it
            // (queued ones included); once none is left for a while, it stops
            // offering slots, and once the scheduler has seen that and nothing
            // runs here, it is unloaded.
            if !self.quiet_since.contains_key(&key)
                && !offering_stopped
                && self
                    .loaded
                    .states()
                    .iter()
                    .all(|(k, s)| k != &key || s.state != "draining")
            {
                tracing::info!(model = %key, "version withdrawn: draining (its jobs finish, no new ones)");
                self.state(&spec, "draining", None).await;
            }
            let unfinished =
                maas_store::registry::unfinished_jobs(&self.db, &spec.model, &spec.version).await?;
            if unfinished > 0 {
                self.quiet_since.remove(&key);
                continue;
            }
            let since = *self
                .quiet_since
                .entry(key.clone())
                .or_insert_with(Instant::now);
            if !offering_stopped && since.elapsed() >= DRAIN_QUIET {
                self.loaded.drain(&key);
                continue;
            }
            if offering_stopped && since.elapsed() >= DRAIN_QUIET * 2 {
                let running = match supervisor {
                    Some(s) => s.send(RunningFor(key.clone())).await.unwrap_or(usize::MAX),
                    None => 0,
                };
                if running == 0 {
                    self.loaded.remove(&key);
                    self.quiet_since.remove(&key);
                    self.state(&spec, "unloaded", None).await;
                    tracing::info!(model = %key, "version unloaded");
                }
            }
        }
        Ok(())
    }

    fn spec_of(&self, key: &str) -> Option<VersionSpec> {
        let (model, version) = key.split_once('@')?;
        let r = self.loaded.get(key)?;
        Some(VersionSpec {
            model: model.to_owned(),
            version: version.to_owned(),
            kind: r.kind(),
            path: None,
            checksum: None,
            settings: Default::default(),
        })
    }

    async fn load(&mut self, w: &Wanted) {
        let spec = &w.spec;
        let key = spec.key();
        let t0 = std::time::Instant::now();
        self.state(spec, "loading", None).await;
        if let Some(reason) = &w.invalid {
            return self.fail(w, reason.clone()).await;
        }
        match self.verify(spec).await {
            Ok(()) => {}
            Err(reason) => return self.fail(w, reason).await,
        }
        let rt = match runtime::open(spec, &self.settings, &self.slots).await {
            Ok(rt) => rt,
            Err(reason) => return self.fail(w, reason).await,
        };
        self.state(spec, "warming", None).await;
        if let Err(reason) = runtime::warm_up(&rt).await {
            return self.fail(w, reason).await;
        }
        tracing::info!(model = %key, kind = spec.kind.as_str(), device = %self.settings.device, slots = rt.slots(), load_ms = t0.elapsed().as_millis() as u64, "model version loaded and warmed up");
        self.loaded.insert(key, rt);
        self.failed.remove(&spec.key());
        self.state(spec, "ready", None).await;
    }

    async fn fail(&mut self, w: &Wanted, reason: String) {
        tracing::error!(model = %w.spec.key(), %reason, "model version failed to load; nothing else changes");
        self.failed.insert(w.spec.key(), w.requested_at);
        self.state(&w.spec, "failed", Some(reason)).await;
    }

    /// The files are those registered: their checksum matches the pinned
    /// one, or is pinned now (first load).
    async fn verify(&self, spec: &VersionSpec) -> Result<(), String> {
        let Some(path) = runtime::files_of(&self.settings, spec)? else {
            return Ok(());
        };
        if !path.exists() {
            return Err(format!(
                "no files at {} (run scripts/fetch-models)",
                path.display()
            ));
        }
        let sum = tokio::task::spawn_blocking(move || runtime::checksum(&path))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot read the version's files: {e}"))?;
        let pinned = match &spec.checksum {
            Some(c) => Some(c.clone()),
            None => registry::pin_checksum(&self.db, &spec.model, &spec.version, &sum)
                .await
                .map_err(|e| format!("cannot record the checksum: {e}"))?,
        };
        match pinned {
            Some(c) if c != sum => Err(format!(
                "the files changed since the version was registered (sha256 {sum}, registered {c})"
            )),
            _ => Ok(()),
        }
    }
}
