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
use maas_core::messages::{JobSubmitted, WorkerEvent};
use maas_mq::lapin::message::Delivery;
use maas_mq::lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicRejectOptions,
};
use maas_mq::lapin::types::FieldTable;
use maas_mq::Broker;
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
        let db = maas_store::connect_for_transitions(&common.database_url, 8)
            .await
            .context("connecting to Postgres")?;
        maas_store::migrate(&db)
            .await
            .context("applying migrations")?;
        let cache = Cache::connect(&common.redis_url, &common.namespace)
            .await
            .context("connecting to Redis")?;
        let name = format!("maas-scheduler-{}", std::process::id());
        let broker = Arc::new(
            Broker::connect(
                &common.amqp_url,
                &common.namespace,
                &name,
                common.amqp_queue_expires_ms,
            )
            .await
            .context("connecting to RabbitMQ")?,
        );
        let role = Role::default();
        let listener = TcpListener::bind(settings.listen)
            .with_context(|| format!("binding {}", settings.listen))?;
        let port = listener.local_addr()?.port();
        let data = web::Data::new(role.clone());
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

    /// Stands by until active, then schedules until SIGTERM/SIGINT.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let (stop_tx, mut stop_rx) = watch::channel(false);
        tokio::spawn(async move {
            maas_core::shutdown::signal().await;
            let _ = stop_tx.send(true);
        });
        let handle = self.server.handle();
        tokio::spawn(self.server);
        self.role.set(health::STANDBY);
        let result = async {
            let Some(leadership) =
                Leadership::acquire(&self.settings.common.database_url, &mut stop_rx).await?
            else {
                return Ok(());
            };
            tracing::info!("this scheduler is now active");
            self.role.set(health::ACTIVE);
            let core = Core::new(
                self.settings.clone(),
                self.db.clone(),
                self.cache.clone(),
                self.broker.clone(),
            );
            run_active(core, &self.broker, leadership, stop_rx).await
        }
        .await;
        stop_server(handle).await;
        self.broker.close().await;
        result
    }
}

async fn stop_server(handle: ServerHandle) {
    handle.stop(true).await;
}

async fn run_active(
    mut core: Core,
    broker: &Broker,
    mut leadership: Leadership,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    core.rebuild().await.context("rebuilding state")?;
    let jobs_ch = broker.consumer_channel(500).await?;
    let events_ch = broker.consumer_channel(200).await?;
    let mut jobs = jobs_ch
        .basic_consume(
            broker.names.jobs().as_str().into(),
            "scheduler-jobs".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut events = events_ch
        .basic_consume(
            broker.names.events().as_str().into(),
            "scheduler-events".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let (mut last_weights, mut last_sweep, mut last_lock_check) = (
        Instant::now(),
        Instant::now() - Duration::from_secs(3600),
        Instant::now(),
    );
    core.dispatch().await?;
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            d = events.next() => {
                let Some(Ok(d)) = d else { anyhow::bail!("events consumer closed") };
                match serde_json::from_slice::<WorkerEvent>(&d.data) {
                    Ok(ev) => match core.on_event(ev).await {
                        Ok(()) => ack(&d).await,
                        Err(e) => {
                            tracing::error!(error = %e, "could not handle worker event; will retry");
                            let _ = d.nack(BasicNackOptions { requeue: true, ..Default::default() }).await;
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                    },
                    Err(e) => {
                        tracing::warn!(error = %e, "malformed worker event dead-lettered");
                        reject(&d).await;
                    }
                }
            }
            d = jobs.next() => {
                let Some(Ok(d)) = d else { anyhow::bail!("jobs consumer closed") };
                match serde_json::from_slice::<JobSubmitted>(&d.data) {
                    Ok(msg) => {
                        core.on_submitted(msg);
                        ack(&d).await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "malformed job message dead-lettered");
                        reject(&d).await;
                    }
                }
            }
            _ = tick.tick() => {
                if let Err(e) = core.check_workers().await {
                    tracing::error!(error = %e, "worker check failed");
                }
                if last_weights.elapsed() > Duration::from_secs(5) {
                    last_weights = Instant::now();
                    if let Err(e) = core.refresh_weights().await {
                        tracing::warn!(error = %e, "could not refresh tenant weights");
                    }
                }
                if last_sweep.elapsed() > Duration::from_secs(core.sweep_secs()) {
                    last_sweep = Instant::now();
                    if let Err(e) = core.sweep().await {
                        tracing::warn!(error = %e, "sweep failed");
                    }
                }
                if last_lock_check.elapsed() > Duration::from_secs(1) {
                    last_lock_check = Instant::now();
                    if !leadership.still_held().await {
                        anyhow::bail!("lost the scheduler lock (Postgres session gone); stopping");
                    }
                }
            }
        }
        if let Err(e) = core.dispatch().await {
            tracing::error!(error = %e, "dispatch failed; will retry");
        }
    }
    tracing::info!(
        queued = core.queued_len(),
        "scheduler stopping; queued jobs stay in Postgres"
    );
    leadership.release().await;
    Ok(())
}
