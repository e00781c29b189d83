//! Scheduling state and its transitions: queues per model, the worker
//! registry with slot accounting, dispatch, and recovery from lost workers.
//!
//! Owned by one task; every method runs to completion before the next
//! message is looked at, so no locks are needed. Postgres is consulted for
//! every transition, so this state can always be thrown away and rebuilt.

use crate::fair::{FairQueue, QueuedJob};
use crate::settings::SchedulerSettings;
use chrono::{DateTime, Utc};
use maas_core::messages::{Dispatch, JobSubmitted, ModelSlots, RunningAttempt, WorkerEvent};
use maas_core::telemetry::KeyValue;
use maas_core::trace::TraceParent;
use maas_core::Code;
use maas_core::Lane;
use maas_mq::{Broker, PublishOpts};
use maas_store::cache::Cache;
use maas_store::jobs::{self, Job};
use maas_store::{tenants, workers};
use serde_json::json;
use sqlx::PgPool;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use uuid::Uuid;

/// An attempt the scheduler believes a worker holds.
#[derive(Debug, Clone)]
struct Assigned {
    tenant_id: Uuid,
    model: String,
    attempt: i32,
    at: DateTime<Utc>,
}

/// A dispatch the broker did not confirm: the job goes back to its queue.
#[derive(Debug)]
pub struct DispatchFailed {
    job_id: Uuid,
    worker_id: String,
    attempt: i32,
}

/// How often a worker's heartbeat is written to Postgres at most (the
/// registry the API and a new scheduler read); every heartbeat counts for
/// liveness at once, in memory.
const REGISTRY_WRITE_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug)]
struct WorkerState {
    /// Unknown (empty) for workers rebuilt from Postgres until their next heartbeat.
    incarnation: String,
    slots: HashMap<String, u32>,
    assigned: HashMap<Uuid, Assigned>,
    last_seen: Instant,
    draining: bool,
    /// When the registry row was last written, and what it said.
    written: Option<(Instant, Vec<ModelSlots>, bool)>,
    /// Heard from on the current broker connection: its queue exists. A
    /// worker gets no dispatch after a broker outage until its first
    /// heartbeat since, which it sends as soon as its queue is declared
    /// again (a dispatch before that would be dropped by the broker).
    reachable: bool,
}

impl WorkerState {
    fn free_slots(&self, model: &str) -> u32 {
        let total = self.slots.get(model).copied().unwrap_or(0);
        let used = self.assigned.values().filter(|a| a.model == model).count() as u32;
        total.saturating_sub(used)
    }
}

/// How long a dispatch may take to reach its worker before a heartbeat that
/// does not list it proves it lost.
const DISPATCH_GRACE_SECS: i64 = 3;

pub struct Core {
    settings: SchedulerSettings,
    db: PgPool,
    cache: Cache,
    broker: Arc<Broker>,
    queues: HashMap<String, FairQueue>,
    /// Ids in `queues`, so a redelivered message does not queue a job twice.
    queued: HashSet<Uuid>,
    workers: HashMap<String, WorkerState>,
    weights: HashMap<Uuid, u32>,
    /// Tenants' caps on jobs held by workers at once (absent: none).
    max_concurrent: HashMap<Uuid, usize>,
    /// A job arrived from a tenant whose weight is not loaded yet (a new
    /// tenant): reload before the next dispatch instead of waiting for the
    /// periodic refresh, so its weight counts from its first job.
    weights_stale: bool,
    weights_loaded_at: Instant,
    failures_tx: tokio::sync::mpsc::UnboundedSender<DispatchFailed>,
    failures_rx: Option<tokio::sync::mpsc::UnboundedReceiver<DispatchFailed>>,
}

/// Outcome of handling one message: whether to ack it or send it to the
/// dead-letter exchange.
pub enum Handled {
    Ack,
    Reject,
}

impl Core {
    pub fn new(settings: SchedulerSettings, db: PgPool, cache: Cache, broker: Arc<Broker>) -> Self {
        let (failures_tx, failures_rx) = tokio::sync::mpsc::unbounded_channel();
        Self {
            failures_tx,
            failures_rx: Some(failures_rx),
            settings,
            db,
            cache,
            broker,
            queues: HashMap::new(),
            queued: HashSet::new(),
            workers: HashMap::new(),
            weights: HashMap::new(),
            max_concurrent: HashMap::new(),
            weights_stale: false,
            weights_loaded_at: Instant::now(),
        }
    }

    /// The dispatches the broker did not confirm (taken once, by the loop
    /// that feeds them back to [`Core::on_dispatch_failed`]).
    pub fn take_dispatch_failures(
        &mut self,
    ) -> tokio::sync::mpsc::UnboundedReceiver<DispatchFailed> {
        self.failures_rx.take().unwrap_or_else(|| {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            self.failures_tx = tx;
            rx
        })
    }

    /// Writes the hot status cache without waiting for it: a slow or absent
    /// Redis must not slow dispatch (the cache keeps the newest version
    /// whatever the order of writes).
    fn cache_put(&self, job: &Job) {
        // A batch's lines are followed through the batch, never polled one
        // by one: their status is read from Postgres, and caching it would
        // only cost a Redis write per line.
        if job.batch_id.is_some() {
            return;
        }
        let (cache, job) = (self.cache.clone(), job.clone());
        tokio::spawn(async move { cache.put_job_logged(&job).await });
    }

    /// The broker is back after an outage during which this scheduler heard
    /// nothing: every worker gets a full heartbeat timeout from now, and the
    /// queued jobs are read back from Postgres (announcements published
    /// meanwhile, or lost with a restarted broker, are not waited for).
    pub async fn broker_back(&mut self) {
        for w in self.workers.values_mut() {
            w.last_seen = Instant::now();
            w.reachable = false;
        }
        match jobs::queued(&self.db).await {
            Ok(queued) => {
                let before = self.queued.len();
                for j in &queued {
                    self.enqueue_ref(j);
                }
                tracing::info!(
                    picked_up = self.queued.len() - before,
                    "broker back: queued jobs read back from Postgres"
                );
            }
            Err(e) => tracing::warn!(error = %e, "could not read queued jobs back; the sweep will"),
        }
    }

    /// A dispatch that never reached the broker: the job is queued again
    /// (at the front) under a new attempt number next time.
    pub async fn on_dispatch_failed(&mut self, f: DispatchFailed) {
        if let Some(w) = self.workers.get_mut(&f.worker_id) {
            if w.assigned
                .get(&f.job_id)
                .is_some_and(|a| a.attempt == f.attempt)
            {
                w.assigned.remove(&f.job_id);
            }
        }
        match jobs::requeue(&self.db, f.job_id, &f.worker_id).await {
            Ok(Some(back)) => {
                self.cache_put(&back);
                self.enqueue_job_row(&back, true);
            }
            Ok(None) => {}
            // Left `dispatched` to a worker that never got it: the worker's
            // next heartbeat (or its loss) queues it again.
            Err(e) => {
                tracing::error!(job_id = %f.job_id, error = %e, "could not queue the job again yet")
            }
        }
    }

    fn aging(&self) -> Duration {
        Duration::from_millis(self.settings.batch_aging_ms)
    }

    fn enqueue(&mut self, job: QueuedJob, model: &str, front: bool) {
        if !self.queued.insert(job.id) {
            return;
        }
        let aging = self.aging();
        let q = self
            .queues
            .entry(model.to_owned())
            .or_insert_with(|| FairQueue::new(aging));
        if front {
            q.push_front(job);
        } else {
            q.push(job);
        }
    }

    /// Converts a wall-clock creation time into the `Instant` aging is measured from.
    fn instant_of(created_at: chrono::DateTime<Utc>) -> Instant {
        let age = (Utc::now() - created_at).to_std().unwrap_or_default();
        Instant::now().checked_sub(age).unwrap_or_else(Instant::now)
    }

    /// Rebuilds everything from Postgres: live workers and what they hold,
    /// then every queued job. Called when this scheduler becomes active.
    pub async fn rebuild(&mut self) -> anyhow::Result<()> {
        self.refresh_weights().await?;
        // Every known worker gets a full heartbeat timeout from now to be
        // heard from: the time this scheduler was away is not their silence.
        for w in workers::live(&self.db).await? {
            let slots: Vec<ModelSlots> = serde_json::from_value(w.models).unwrap_or_default();
            self.workers.insert(
                w.id.clone(),
                WorkerState {
                    incarnation: String::new(),
                    slots: slots.into_iter().map(|s| (s.model, s.slots)).collect(),
                    assigned: HashMap::new(),
                    last_seen: Instant::now(),
                    draining: w.status == "draining",
                    written: None,
                    reachable: true,
                },
            );
        }
        for a in jobs::active(&self.db).await? {
            match self.workers.get_mut(&a.worker_id) {
                Some(w) => {
                    let held = Assigned {
                        tenant_id: a.tenant_id,
                        model: a.model,
                        attempt: a.attempts,
                        at: a.dispatched_at.unwrap_or_else(Utc::now),
                    };
                    w.assigned.insert(a.id, held);
                }
                None => self.recover_job(a.id, &a.worker_id).await?,
            }
        }
        let queued = jobs::queued(&self.db).await?;
        let n = queued.len();
        for j in &queued {
            self.enqueue_ref(j);
        }
        tracing::info!(
            workers = self.workers.len(),
            queued = n,
            "state rebuilt from Postgres"
        );
        Ok(())
    }

    pub async fn refresh_weights(&mut self) -> anyhow::Result<()> {
        let shares = tenants::shares(&self.db).await?;
        self.weights = shares
            .iter()
            .map(|s| (s.id, s.weight.max(1) as u32))
            .collect();
        self.max_concurrent = shares
            .iter()
            .filter_map(|s| {
                s.max_concurrent
                    .map(|m| (s.id, usize::try_from(m).unwrap_or(0)))
            })
            .collect();
        self.weights_stale = false;
        self.weights_loaded_at = Instant::now();
        Ok(())
    }

    /// Queues a job read back from Postgres.
    fn enqueue_ref(&mut self, j: &jobs::QueuedRef) {
        let job = QueuedJob {
            id: j.id,
            tenant_id: j.tenant_id,
            lane: Lane::parse(&j.lane).unwrap_or(Lane::Batch),
            enqueued_at: Self::instant_of(j.created_at),
            reply_to: j.reply_to.clone(),
            urgent: j.urgent,
        };
        self.enqueue(job, &j.model, false);
    }

    /// A batch's lines, committed as queued jobs: read back and queued.
    pub async fn on_batch(
        &mut self,
        msg: &maas_core::messages::BatchSubmitted,
    ) -> anyhow::Result<()> {
        if !self.weights.contains_key(&msg.tenant_id) {
            self.weights_stale = true;
        }
        let lines = jobs::queued_in_batch(&self.db, &msg.batch_id).await?;
        tracing::info!(batch_id = %msg.batch_id, lines = lines.len(), "batch queued");
        for j in &lines {
            self.enqueue_ref(j);
        }
        Ok(())
    }

    pub fn on_submitted(&mut self, msg: JobSubmitted) {
        if !self.weights.contains_key(&msg.tenant_id) {
            self.weights_stale = true;
        }
        let job = QueuedJob {
            id: msg.job_id,
            tenant_id: msg.tenant_id,
            lane: msg.lane,
            enqueued_at: Self::instant_of(msg.created_at),
            reply_to: msg.reply_to,
            urgent: false,
        };
        self.enqueue(job, &msg.model, false);
    }

    pub async fn on_event(&mut self, event: WorkerEvent) -> anyhow::Result<()> {
        match event {
            WorkerEvent::Heartbeat {
                worker_id,
                incarnation,
                models,
                draining,
                running,
            } => {
                let restarted = self
                    .workers
                    .get(&worker_id)
                    .is_some_and(|w| !w.incarnation.is_empty() && w.incarnation != incarnation);
                if restarted {
                    tracing::warn!(worker_id = %worker_id, "worker restarted under the same id; recovering what the old process held");
                    self.release_worker(&worker_id, "dead").await?;
                }
                // Liveness counts from the moment the heartbeat arrives; the
                // registry row is written at most every few seconds (or on a
                // change), off this loop.
                let w = self.workers.entry(worker_id.clone()).or_insert_with(|| {
                    tracing::info!(worker_id = %worker_id, ?models, "worker registered");
                    WorkerState {
                        incarnation: incarnation.clone(),
                        slots: HashMap::new(),
                        assigned: HashMap::new(),
                        last_seen: Instant::now(),
                        draining,
                        written: None,
                        reachable: true,
                    }
                });
                w.last_seen = Instant::now();
                w.reachable = true;
                w.incarnation = incarnation;
                w.slots = models.iter().map(|s| (s.model.clone(), s.slots)).collect();
                w.draining = draining;
                let due = w.written.as_ref().is_none_or(|(at, m, d)| {
                    at.elapsed() >= REGISTRY_WRITE_EVERY || *m != models || *d != draining
                });
                if due {
                    w.written = Some((Instant::now(), models.clone(), draining));
                    let (db, id) = (self.db.clone(), worker_id.clone());
                    let models_json = serde_json::to_value(&models)?;
                    tokio::spawn(async move {
                        if let Err(e) = workers::heartbeat(&db, &id, &models_json, draining).await {
                            tracing::debug!(worker_id = %id, error = %e, "worker registry not updated");
                        }
                    });
                }
                self.reconcile(&worker_id, &running).await?;
            }
            WorkerEvent::Finished {
                worker_id,
                job_id,
                attempt,
            } => {
                if let Some(w) = self.workers.get_mut(&worker_id) {
                    if w.assigned
                        .get(&job_id)
                        .is_some_and(|a| a.attempt == attempt)
                    {
                        w.assigned.remove(&job_id);
                    }
                }
            }
            WorkerEvent::Deregister { worker_id } => {
                tracing::info!(worker_id = %worker_id, "worker deregistered");
                self.release_worker(&worker_id, "gone").await?;
            }
        }
        Ok(())
    }

    /// Declares dead every worker silent for longer than the heartbeat timeout.
    pub async fn check_workers(&mut self) -> anyhow::Result<()> {
        let timeout = Duration::from_millis(self.settings.heartbeat_timeout_ms);
        let dead: Vec<String> = self
            .workers
            .iter()
            .filter(|(_, w)| w.last_seen.elapsed() > timeout)
            .map(|(id, _)| id.clone())
            .collect();
        for id in dead {
            tracing::warn!(worker_id = %id, "worker stopped heartbeating; re-dispatching its jobs");
            self.release_worker(&id, "dead").await?;
        }
        Ok(())
    }

    /// Corrects the slot count with what the worker says it holds: an
    /// attempt dispatched a while ago that the worker does not list was lost
    /// on the way (or its `Finished` was); Postgres decides which.
    async fn reconcile(
        &mut self,
        worker_id: &str,
        running: &[RunningAttempt],
    ) -> anyhow::Result<()> {
        let cutoff = Utc::now() - chrono::Duration::seconds(DISPATCH_GRACE_SECS);
        let Some(w) = self.workers.get_mut(worker_id) else {
            return Ok(());
        };
        let missing: Vec<(Uuid, i32)> = w
            .assigned
            .iter()
            .filter(|(id, a)| {
                a.at < cutoff
                    && !running
                        .iter()
                        .any(|r| r.job_id == **id && r.attempt == a.attempt)
            })
            .map(|(id, a)| (*id, a.attempt))
            .collect();
        for (job_id, attempt) in missing {
            if let Some(w) = self.workers.get_mut(worker_id) {
                w.assigned.remove(&job_id);
            }
            let Some(job) = jobs::get(&self.db, job_id).await? else {
                continue;
            };
            let ours = job.worker_id.as_deref() == Some(worker_id) && job.attempts == attempt;
            if ours && !job.status.is_terminal() {
                tracing::warn!(%job_id, worker_id, "dispatch never reached its worker; queued again");
                if let Some(back) = jobs::requeue(&self.db, job_id, worker_id).await? {
                    self.cache_put(&back);
                    self.enqueue_job_row(&back, true);
                }
            }
        }
        Ok(())
    }

    /// Forgets a worker after handing every job it still holds (per Postgres)
    /// to others. On a database error the worker stays known (and gets no
    /// work), so the next tick tries again.
    async fn release_worker(&mut self, worker_id: &str, status: &str) -> anyhow::Result<()> {
        if let Some(w) = self.workers.get_mut(worker_id) {
            w.draining = true;
        }
        workers::set_status(&self.db, worker_id, status).await?;
        for (job_id, _) in jobs::active_on_worker(&self.db, worker_id).await? {
            self.recover_job(job_id, worker_id).await?;
        }
        self.workers.remove(worker_id);
        Ok(())
    }

    /// A job whose worker is gone: queued again, or failed and dead-lettered
    /// once its attempts are spent.
    async fn recover_job(&mut self, job_id: Uuid, worker_id: &str) -> anyhow::Result<()> {
        let Some(job) = jobs::get(&self.db, job_id).await? else {
            return Ok(());
        };
        if job.status == maas_core::JobStatus::Running && job.starts >= self.settings.max_attempts {
            let error = json!({
                "code": Code::WorkerLost,
                "message": format!("the job's worker was lost {} times; giving up", job.starts),
            });
            if let Some(failed) = jobs::fail_lost(&self.db, job_id, worker_id, &error).await? {
                tracing::warn!(%job_id, attempts = failed.attempts, "job failed after its last attempt; dead-lettered");
                crate::metrics::RECOVERIES
                    .with_label_values(&["failed"])
                    .inc();
                self.cache_put(&failed);
                self.dead_letter(&failed).await;
            }
            return Ok(());
        }
        // Only attempts that started count against the job (`starts`).
        if let Some(requeued) = jobs::requeue(&self.db, job_id, worker_id).await? {
            tracing::info!(%job_id, attempts = requeued.attempts, "job queued again");
            crate::metrics::RECOVERIES
                .with_label_values(&["requeued"])
                .inc();
            self.cache_put(&requeued);
            self.enqueue_job_row(&requeued, true);
        }
        Ok(())
    }

    fn enqueue_job_row(&mut self, job: &Job, front: bool) {
        let q = QueuedJob {
            id: job.id,
            tenant_id: job.tenant_id,
            lane: job.lane,
            enqueued_at: Self::instant_of(job.created_at),
            reply_to: job.reply_to.clone(),
            urgent: job.urgent,
        };
        self.enqueue(q, &job.route(), front);
    }

    async fn dead_letter(&self, job: &Job) {
        let body = json!({"job_id": job.id, "tenant_id": job.tenant_id, "model": job.model, "attempts": job.attempts, "error": job.error});
        let opts = PublishOpts::traced(job.traceparent.as_deref());
        if let Err(e) = self
            .broker
            .publish(&self.broker.names.dlx(), "", &body, opts)
            .await
        {
            tracing::error!(job_id = %job.id, error = %e, "could not dead-letter job");
        }
    }

    /// The live, non-draining worker with the most free slots for `model`.
    fn pick_worker(&self, model: &str) -> Option<String> {
        self.workers
            .iter()
            .filter(|(_, w)| !w.draining && w.reachable)
            .map(|(id, w)| (id, w.free_slots(model)))
            .filter(|(_, free)| *free > 0)
            .max_by_key(|(id, free)| (*free, std::cmp::Reverse((*id).clone())))
            .map(|(id, _)| id.clone())
    }

    /// Dispatches while some model has both queued work and a free slot.
    pub async fn dispatch(&mut self) -> anyhow::Result<usize> {
        // At most one reload per 200 ms, however many new tenants arrive.
        if self.weights_stale && self.weights_loaded_at.elapsed() > Duration::from_millis(200) {
            if let Err(e) = self.refresh_weights().await {
                tracing::warn!(error = %e, "could not load a new tenant's weight");
            }
        }
        let mut sent = 0;
        // Jobs each tenant has on workers now, against its max_concurrent.
        let mut held: HashMap<Uuid, usize> = HashMap::new();
        for a in self.workers.values().flat_map(|w| w.assigned.values()) {
            *held.entry(a.tenant_id).or_default() += 1;
        }
        let models: Vec<String> = self
            .queues
            .iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|(m, _)| m.clone())
            .collect();
        for model in models {
            while let Some(worker_id) = self.pick_worker(&model) {
                // A worker's last slots for a model are kept for interactive
                // work, so a sync call never waits behind batch work for a
                // slot (an eighth of its slots: 4 of 32).
                let allow_batch = self.workers.get(&worker_id).is_some_and(|w| {
                    let total = w.slots.get(&model).copied().unwrap_or(0);
                    w.free_slots(&model) > total / 8
                });
                let (weights, caps) = (&self.weights, &self.max_concurrent);
                let eligible = |t: Uuid| {
                    caps.get(&t)
                        .is_none_or(|max| held.get(&t).copied().unwrap_or(0) < *max)
                };
                let Some(next) = self.queues.get_mut(&model).and_then(|q| {
                    q.pop_lanes(
                        Instant::now(),
                        |t| weights.get(&t).copied().unwrap_or(1),
                        eligible,
                        allow_batch,
                    )
                }) else {
                    break;
                };
                *held.entry(next.tenant_id).or_default() += 1;
                self.queued.remove(&next.id);
                let marked = match jobs::mark_dispatched(&self.db, next.id, &worker_id).await {
                    Ok(m) => m,
                    Err(e) => {
                        self.enqueue(next, &model, true);
                        return Err(e.into());
                    }
                };
                let Some(job) = marked else {
                    // Cancelled, expired or already handled: it holds nothing.
                    if let Some(n) = held.get_mut(&next.tenant_id) {
                        *n -= 1;
                    }
                    continue;
                };
                // The job's wait and its dispatch, as spans of its trace; the
                // worker's spans follow from the dispatch.
                let now = SystemTime::now();
                let waited = (Utc::now() - job.created_at).to_std().unwrap_or_default();
                let version = job.model_version.as_deref().unwrap_or("");
                crate::metrics::QUEUE_WAIT
                    .with_label_values(&[job.model.as_str(), version, job.lane.as_str()])
                    .observe(waited.as_secs_f64());
                crate::metrics::DISPATCHES
                    .with_label_values(&[
                        job.model.as_str(),
                        version,
                        &maas_core::metrics::tenant_label(job.tenant_id),
                    ])
                    .inc();
                let traceparent = match job.traceparent.as_deref().and_then(TraceParent::parse) {
                    Some(parent) => {
                        let attrs = || {
                            vec![
                                KeyValue::new("job.id", job.id.to_string()),
                                KeyValue::new("model", job.model.clone()),
                                KeyValue::new(
                                    "model.version",
                                    job.model_version.clone().unwrap_or_default(),
                                ),
                            ]
                        };
                        let created = now.checked_sub(waited).unwrap_or(now);
                        maas_core::telemetry::record_span(
                            "queue wait",
                            &parent,
                            created,
                            now,
                            attrs(),
                        );
                        let mut with_worker = attrs();
                        with_worker.push(KeyValue::new("worker.id", worker_id.clone()));
                        maas_core::telemetry::record_span(
                            "dispatch",
                            &parent,
                            now,
                            SystemTime::now(),
                            with_worker,
                        )
                        .map(|tp| tp.to_string())
                        .or_else(|| job.traceparent.clone())
                    }
                    None => job.traceparent.clone(),
                };
                let msg = Dispatch {
                    job_id: job.id,
                    tenant_id: job.tenant_id,
                    key_id: job.key_id,
                    attempt: job.attempts,
                    model: job.route(),
                    input: job.input.clone().unwrap_or_default(),
                    reply_to: next.reply_to.clone(),
                };
                let queue = self.broker.names.worker(&worker_id);
                if let Some(w) = self.workers.get_mut(&worker_id) {
                    w.assigned.insert(
                        job.id,
                        Assigned {
                            tenant_id: job.tenant_id,
                            model: job.route(),
                            attempt: job.attempts,
                            at: Utc::now(),
                        },
                    );
                }
                // The publish and its confirm run beside this loop: a slow
                // broker link costs the next dispatch nothing. A failure comes
                // back through `failures_tx`.
                let (broker, failures) = (self.broker.clone(), self.failures_tx.clone());
                let failed = DispatchFailed {
                    job_id: job.id,
                    worker_id: worker_id.clone(),
                    attempt: job.attempts,
                };
                tokio::spawn(async move {
                    // Worker queues are not durable: a persistent message would only cost a disk write.
                    let opts = PublishOpts {
                        persistent: false,
                        ..PublishOpts::traced(traceparent.as_deref())
                    };
                    if let Err(e) = broker.publish_to_queue(&queue, &msg, opts).await {
                        tracing::warn!(job_id = %failed.job_id, error = %e, "could not send dispatch; job queued again");
                        let _ = failures.send(failed);
                    }
                });
                self.cache_put(&job);
                tracing::debug!(job_id = %job.id, worker_id = %worker_id, attempt = job.attempts, "dispatched");
                sent += 1;
            }
        }
        self.publish_gauges();
        Ok(sent)
    }

    /// Queue depth and slot use, as of now.
    fn publish_gauges(&self) {
        for (route, q) in &self.queues {
            let (model, version) = maas_core::metrics::model_labels(route);
            for lane in [Lane::Interactive, Lane::Batch] {
                crate::metrics::QUEUE_DEPTH
                    .with_label_values(&[model, version, lane.as_str()])
                    .set(q.lane_len(lane) as i64);
            }
        }
        let mut slots: HashMap<&str, (i64, i64)> = HashMap::new();
        for w in self.workers.values() {
            for (model, total) in &w.slots {
                slots.entry(model).or_default().0 += i64::from(*total);
            }
            for a in w.assigned.values() {
                slots.entry(&a.model).or_default().1 += 1;
            }
        }
        for (route, (total, used)) in slots {
            let (model, version) = maas_core::metrics::model_labels(route);
            crate::metrics::SLOTS
                .with_label_values(&[model, version, "total"])
                .set(total);
            crate::metrics::SLOTS
                .with_label_values(&[model, version, "used"])
                .set(used);
        }
    }

    /// Expires jobs queued too long, purges old inputs and outputs, and picks
    /// up queued jobs whose announcement never arrived.
    pub async fn sweep(&mut self) -> anyhow::Result<()> {
        let cutoff = Utc::now() - chrono::Duration::seconds(5);
        let mut found = 0;
        for j in jobs::queued(&self.db).await? {
            if j.created_at < cutoff && !self.queued.contains(&j.id) {
                found += 1;
                self.enqueue_ref(&j);
            }
        }
        if found > 0 {
            tracing::warn!(
                found,
                "queued jobs without a message picked up from Postgres"
            );
        }
        self.repair_orphans().await?;
        for job in jobs::expire_stale(&self.db, self.settings.job_expiry_secs).await? {
            tracing::info!(job_id = %job.id, "job expired before it started");
            crate::metrics::EXPIRED
                .with_label_values(&[&job.model, job.model_version.as_deref().unwrap_or("")])
                .inc();
            self.cache_put(&job);
        }
        let purged = jobs::purge_finished(&self.db, self.settings.job_retention_secs).await?;
        if purged > 0 {
            tracing::info!(purged, "inputs and outputs past retention deleted");
        }
        Ok(())
    }

    /// Jobs Postgres says a known worker holds that this scheduler does not
    /// count on that worker (for example a start lost by a database crash,
    /// after which the worker dropped its result and released the slot):
    /// queued again, so none stays `dispatched` or `running` for ever. Jobs
    /// on workers this scheduler does not know are left to the worker
    /// check.
    async fn repair_orphans(&mut self) -> anyhow::Result<()> {
        let cutoff = Utc::now() - chrono::Duration::seconds(10);
        let orphans: Vec<jobs::ActiveRef> = jobs::active(&self.db)
            .await?
            .into_iter()
            .filter(|a| a.dispatched_at.is_some_and(|t| t < cutoff))
            .filter(|a| {
                self.workers.get(&a.worker_id).is_some_and(|w| {
                    w.assigned
                        .get(&a.id)
                        .is_none_or(|held| held.attempt != a.attempts)
                })
            })
            .collect();
        for a in orphans {
            tracing::warn!(job_id = %a.id, worker_id = %a.worker_id, "job held in Postgres by a worker that does not run it; queued again");
            self.recover_job(a.id, &a.worker_id).await?;
        }
        Ok(())
    }

    pub fn sweep_secs(&self) -> u64 {
        self.settings.sweep_secs.max(1)
    }

    pub fn queued_len(&self) -> usize {
        self.queued.len()
    }
}
