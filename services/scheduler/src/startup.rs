//! Wires the scheduler: connections, the health server, leadership, then the
//! event loop that feeds [`Core`].

use crate::core::Core;
use crate::health::{self, Role};
use crate::leader::Leadership;
use crate::settings::SchedulerSettings;
use actix_web::dev::{Server, ServerHandle};
use actix_web::{web, App, HttpServer};
use anyhow::Context;
use futures_util::StreamExt;
use maas_core::backoff::Backoff;
use maas_core::messages::{BatchSubmitted, JobSubmitted, WorkerEvent};
use maas_mq::lapin::message::Delivery;
use maas_mq::lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicRejectOptions};
use maas_mq::lapin::types::FieldTable;
use maas_mq::lapin::Consumer;
use maas_mq::{Broker, BrokerConfig, Link};
use maas_store::cache::Cache;
use sqlx::PgPool;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

pub struct Scheduler {
    settings: SchedulerSettings,
    db: PgPool,
    cache: Cache,
    broker: Arc<Broker>,
    role: Role,
    port: u16,
    server: Server,
}

async fn ack(d: &Delivery) {
    if let Err(e) = d.ack(BasicAckOptions::default()).await {
        tracing::warn!(error = %e, "ack failed; the message will be redelivered");
    }
}

async fn reject(d: &Delivery) {
    let _ = d.reject(BasicRejectOptions { requeue: false }).await;
}

impl Scheduler {
    pub async fn build(settings: SchedulerSettings) -> anyhow::Result<Self> {
        let common = &settings.common;
        // Nothing here waits for a dependency; `run_until_stopped` does, with
        // the health endpoint already answering.
        let db = maas_store::connect_for_transitions(
            &common.database_url,
            8,
            common.db_acquire_timeout(),
        )
        .context("the Postgres URL")?;
        let cache = Cache::new(&common.redis_url, &common.namespace).context("the Redis URL")?;
        let name = format!("maas-scheduler-{}", std::process::id());
        let broker = Broker::start(BrokerConfig::new(common, &name)).context("the RabbitMQ URL")?;
        let role = Role::default();
        let listener = TcpListener::bind(settings.listen)
            .with_context(|| format!("binding {}", settings.listen))?;
        let port = listener.local_addr()?.port();
        let data = web::Data::new(health::HealthState {
            role: role.clone(),
            broker: broker.clone(),
        });
        let server =
            HttpServer::new(move || App::new().app_data(data.clone()).configure(health::config))
                .workers(1)
                .disable_signals()
                .listen(listener)?
                .run();
        Ok(Self {
            settings,
            db,
            cache,
            broker,
            role,
            port,
            server,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stands by until active, then schedules until SIGTERM/SIGINT. Losing
    /// the lock (Postgres restarted, the lock's session broke) sends it back
    /// to standby to compete again; nothing but a signal ends it.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let (stop_tx, mut stop_rx) = watch::channel(false);
        tokio::spawn(async move {
            maas_core::shutdown::signal().await;
            let _ = stop_tx.send(true);
        });
        let handle = self.server.handle();
        tokio::spawn(self.server);
        // Migrations wait for Postgres; leadership needs them applied.
        tokio::select! {
            _ = maas_store::migrate_when_reachable(&self.db) => {}
            _ = stop_rx.changed() => {
                stop_server(handle).await;
                self.broker.close().await;
                return Ok(());
            }
        }
        let mut backoff = Backoff::reconnect();
        loop {
            self.role.set(health::STANDBY);
            let Some(leadership) =
                Leadership::acquire(&self.settings.common.database_url, &mut stop_rx).await?
            else {
                break;
            };
            tracing::info!("this scheduler is now active");
            self.role.set(health::ACTIVE);
            let core = Core::new(
                self.settings.clone(),
                self.db.clone(),
                self.cache.clone(),
                self.broker.clone(),
            );
            match run_active(core, &self.broker, leadership, stop_rx.clone()).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "no longer the active scheduler; standing by to compete again");
                    backoff.wait().await;
                }
            }
            if *stop_rx.borrow() {
                break;
            }
        }
        stop_server(handle).await;
        self.broker.close().await;
        Ok(())
    }
}

async fn stop_server(handle: ServerHandle) {
    handle.stop(true).await;
}

/// Runs one step of the loop with a bound: a query on a connection whose
/// peer vanished without a reset (a cut network) would otherwise stall
/// scheduling for ever. A step cut short leaves nothing that the worker
/// check, reconciliation or the orphan sweep does not repair.
async fn bounded<T>(
    step: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::time::timeout(Duration::from_secs(30), step)
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("step timed out after 30 s")))
}

/// The next delivery of a consumer, or never while there is none.
async fn next_of(c: &mut Option<Consumer>) -> Option<Result<Delivery, maas_mq::lapin::Error>> {
    match c {
        Some(c) => c.next().await,
        None => std::future::pending().await,
    }
}

/// The scheduler's two consumers on one broker link.
async fn subscribe_on(broker: &Broker, link: &Link) -> anyhow::Result<(Consumer, Consumer)> {
    let jobs_ch = link.consumer_channel(500).await?;
    let events_ch = link.consumer_channel(200).await?;
    let jobs = jobs_ch
        .basic_consume(
            broker.names.jobs().as_str().into(),
            "scheduler-jobs".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let events = events_ch
        .basic_consume(
            broker.names.events().as_str().into(),
            "scheduler-events".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((jobs, events))
}

/// Schedules while this process holds the lock. `Ok` on shutdown; an error
/// when the lock (or the state behind it) is lost.
async fn run_active(
    mut core: Core,
    broker: &Broker,
    mut leadership: Leadership,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    if let Err(e) = core.rebuild().await {
        leadership.release().await;
        return Err(e.context("rebuilding state"));
    }
    let (mut jobs, mut events): (Option<Consumer>, Option<Consumer>) = (None, None);
    let mut failures = core.take_dispatch_failures();
    let mut generation = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let (mut last_weights, mut last_sweep, mut last_lock_check) = (
        Instant::now(),
        Instant::now() - Duration::from_secs(3600),
        Instant::now(),
    );
    loop {
        // (Re)subscribe whenever the broker has a link we do not consume on.
        if jobs.is_none() {
            if let Some(link) = broker.link() {
                match subscribe_on(broker, &link).await {
                    Ok((j, e)) => {
                        (jobs, events) = (Some(j), Some(e));
                        if generation != 0 && generation != link.generation {
                            // Blind while the broker was away: workers' silence
                            // meanwhile is not theirs, and announcements may be
                            // lost. Give every worker a full timeout from now and
                            // read the queued jobs back from Postgres.
                            core.broker_back().await;
                        }
                        generation = link.generation;
                        if let Err(e) = bounded(core.dispatch()).await {
                            tracing::error!(error = %e, "dispatch failed; will retry");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "could not subscribe; retrying"),
                }
            }
        }
        tokio::select! {
            _ = stop.changed() => break,
            d = next_of(&mut events) => {
                let Some(Ok(d)) = d else {
                    tracing::warn!("event consumer closed (broker connection lost); waiting for the broker");
                    (jobs, events) = (None, None);
                    continue;
                };
                match serde_json::from_slice::<WorkerEvent>(&d.data) {
                    Ok(ev) => {
                        if let Err(e) = bounded(core.on_event(ev)).await {
                            // The event's effect is retried by the next heartbeat
                            // (or the worker check); a redelivery loop is not.
                            tracing::warn!(error = %e, "could not handle a worker event fully");
                        }
                        ack(&d).await;
                    }
                    Err(e) => {
                        // No dead-letter queue for events: log and drop.
                        tracing::warn!(error = %e, "malformed worker event dropped");
                        ack(&d).await;
                    }
                }
            }
            d = next_of(&mut jobs) => {
                let Some(Ok(d)) = d else {
                    tracing::warn!("job consumer closed (broker connection lost); waiting for the broker");
                    (jobs, events) = (None, None);
                    continue;
                };
                match serde_json::from_slice::<JobSubmitted>(&d.data) {
                    Ok(msg) => {
                        core.on_submitted(msg);
                        ack(&d).await;
                    }
                    Err(e) => match serde_json::from_slice::<BatchSubmitted>(&d.data) {
                        Ok(msg) => {
                            if let Err(e) = bounded(core.on_batch(&msg)).await {
                                // Its lines are in Postgres: the sweep finds them.
                                tracing::warn!(batch_id = %msg.batch_id, error = %e, "could not read a batch's lines; the sweep will");
                            }
                            ack(&d).await;
                        }
                        Err(_) => {
                            tracing::warn!(error = %e, "malformed job message dead-lettered");
                            reject(&d).await;
                        }
                    },
                }
            }
            Some(failed) = failures.recv() => {
                core.on_dispatch_failed(failed).await;
            }
            _ = tick.tick() => {
                if jobs.is_some() && !broker.is_connected() {
                    tracing::warn!("broker connection lost; waiting for it");
                    (jobs, events) = (None, None);
                }
                // Without the broker the scheduler hears no heartbeat: it must
                // not read that silence as dead workers.
                if jobs.is_some() {
                    if let Err(e) = bounded(core.check_workers()).await {
                        tracing::error!(error = %e, "worker check failed");
                    }
                }
                if last_weights.elapsed() > Duration::from_secs(5) {
                    last_weights = Instant::now();
                    if let Err(e) = core.refresh_weights().await {
                        tracing::warn!(error = %e, "could not refresh tenant weights");
                    }
                }
                if last_sweep.elapsed() > Duration::from_secs(core.sweep_secs()) {
                    last_sweep = Instant::now();
                    if let Err(e) = bounded(core.sweep()).await {
                        tracing::warn!(error = %e, "sweep failed");
                    }
                }
                if last_lock_check.elapsed() > Duration::from_secs(1) {
                    last_lock_check = Instant::now();
                    if !leadership.still_held().await {
                        anyhow::bail!("lost the scheduler lock (its Postgres session is gone)");
                    }
                }
            }
        }
        if jobs.is_some() {
            if let Err(e) = bounded(core.dispatch()).await {
                tracing::error!(error = %e, "dispatch failed; will retry");
            }
        }
    }
    tracing::info!(
        queued = core.queued_len(),
        "scheduler stopping; queued jobs stay in Postgres"
    );
    leadership.release().await;
    Ok(())
}
