//! Wires the worker: connections, model pools (warmed up before the first
//! heartbeat), private queues, the supervisor, consumers and health endpoints.

use crate::actors::supervisor::{
    CancelRequested, Deps, Dispatched, Drain, Heartbeat, InFlight, Supervisor,
};
use crate::health::{self, HealthState};
use crate::loader::Loader;
use crate::runtime::Loaded;
use crate::settings::{Slots, WorkerSettings};
use actix::{Actor, Addr};
use actix_web::{web, App, HttpServer};
use anyhow::Context;
use futures_util::StreamExt;
use maas_core::messages::{CancelJob, WorkerEvent};
use maas_mq::lapin::options::{BasicCancelOptions, BasicConsumeOptions};
use maas_mq::lapin::types::FieldTable;
use maas_mq::{Broker, BrokerConfig, Link, MqError, PublishOpts};
use maas_store::cache::Cache;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

pub struct Worker {
    settings: WorkerSettings,
    worker_id: String,
    deps: Deps,
    slots: Slots,
    loaded: Loaded,
    listener: TcpListener,
    port: u16,
}

impl Worker {
    pub async fn build(settings: WorkerSettings) -> anyhow::Result<Self> {
        // A device name that does not parse is a setup error, before anything starts.
        settings
            .device
            .parse::<maas_models::Device>()
            .map_err(anyhow::Error::msg)?;
        let slot_cfg = Slots::parse(&settings.slots).map_err(anyhow::Error::msg)?;
        let worker_id = settings
            .worker_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
        let common = &settings.common;
        // No dependency is waited for here: models load meanwhile, and the
        // connections come (back) on their own.
        let db = maas_store::connect_for_transitions(
            &common.database_url,
            8,
            common.db_acquire_timeout(),
        )
        .context("the Postgres URL")?;
        tokio::spawn({
            let db = db.clone();
            async move { maas_store::migrate_when_reachable(&db).await }
        });
        let cache = Cache::new(&common.redis_url, &common.namespace).context("the Redis URL")?;
        let broker = Broker::start(BrokerConfig::new(
            common,
            &format!("maas-worker-{worker_id}"),
        ))
        .context("the RabbitMQ URL")?;
        let listener = TcpListener::bind(settings.listen)
            .with_context(|| format!("binding {}", settings.listen))?;
        let port = listener.local_addr()?.port();
        let deps = Deps {
            worker_id: worker_id.clone(),
            db,
            cache,
            broker,
            durable_results: settings.result_commit == "durable",
            max_output_bytes: settings.max_output_bytes,
        };
        Ok(Self {
            settings,
            worker_id,
            deps,
            slots: slot_cfg,
            loaded: Loaded::default(),
            listener,
            port,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// Serves until SIGTERM/SIGINT, then drains: stops taking jobs, lets the
    /// running ones finish within the grace period, and deregisters so the
    /// scheduler hands anything left to other workers.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let broker = self.deps.broker.clone();
        let names = broker.names.clone();

        // Health first: the endpoints answer while models load.
        let health = web::Data::new(HealthState {
            broker: broker.clone(),
            worker_id: self.worker_id.clone(),
            loaded: self.loaded.clone(),
            faults: self.settings.faults,
        });
        let server = HttpServer::new(move || {
            App::new()
                .app_data(health.clone())
                .configure(health::config)
        })
        .workers(1)
        .disable_signals()
        .listen(self.listener)?
        .run();
        let server_handle = server.handle();
        actix_web::rt::spawn(server);

        // What the registry asks for is loaded and warmed up before the
        // worker announces itself (waiting for Postgres if need be); from
        // then on, loads and unloads happen while it serves.
        let mut loader = Loader::new(
            self.deps.db.clone(),
            self.worker_id.clone(),
            self.settings.clone(),
            self.slots.clone(),
            self.loaded.clone(),
        );
        loader.initial().await;

        let supervisor = Supervisor::new(
            self.deps.clone(),
            self.loaded.clone(),
            Duration::from_millis(self.settings.heartbeat_ms),
        )
        .start();
        actix_web::rt::spawn(loader.run_forever(supervisor.clone()));

        // The private queues and their consumers, set up again on every
        // broker link; a heartbeat follows each setup at once, so the
        // scheduler sees this worker (and the attempts it still holds) as
        // soon as the queues exist.
        // Versions loaded later add slots: leave room for them.
        let total_slots: u32 = self.loaded.offered().iter().map(|s| s.slots).sum();
        let prefetch = total_slots.clamp(256, u16::MAX as u32) as u16;
        let (drain_tx, drain_rx) = watch::channel(false);
        let consumer =
            actix_web::rt::spawn(maas_mq::consume_forever(broker.clone(), "dispatches", {
                let (sup, worker_id, names) =
                    (supervisor.clone(), self.worker_id.clone(), names.clone());
                move |link| {
                    session(
                        link,
                        names.clone(),
                        worker_id.clone(),
                        prefetch,
                        sup.clone(),
                        drain_rx.clone(),
                    )
                }
            }));

        maas_core::shutdown::signal().await;
        tracing::info!("draining: no new jobs; running ones may finish");
        supervisor.do_send(Drain);
        // Stop consuming; the channel stays open until the running jobs are
        // acked.
        let _ = drain_tx.send(true);
        drop(consumer);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let deadline = Instant::now() + Duration::from_millis(self.settings.shutdown_grace_ms);
        while Instant::now() < deadline {
            if supervisor.send(InFlight).await.unwrap_or(0) == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let bye = WorkerEvent::Deregister {
            worker_id: self.worker_id.clone(),
        };
        if let Err(e) = broker
            .publish_to_queue(&names.events(), &bye, PublishOpts::default())
            .await
        {
            tracing::warn!(error = %e, "deregistration not sent; the scheduler will notice the silence");
        }
        server_handle.stop(true).await;
        broker.close().await;
        tracing::info!("worker stopped");
        Ok(())
    }
}

/// One broker link's worth of consuming: declares this worker's queue and
/// its cancel queue, tells the supervisor to heartbeat, and hands every
/// delivery to the supervisor until the link is lost or the worker drains.
async fn session(
    link: Arc<Link>,
    names: maas_mq::Names,
    worker_id: String,
    prefetch: u16,
    supervisor: Addr<Supervisor>,
    mut drain: watch::Receiver<bool>,
) -> Result<(), MqError> {
    if *drain.borrow() {
        // Draining: stay off the queues; wait for the process to end.
        let _ = drain.changed().await;
        std::future::pending::<()>().await;
    }
    let work_ch = link.consumer_channel(prefetch).await?;
    let work_queue = names.worker(&worker_id);
    link.declare_private_queue(&work_ch, &work_queue).await?;
    let cancel_ch = link.consumer_channel(64).await?;
    let cancel_queue = names.cancel_queue(&worker_id);
    link.declare_private_queue(&cancel_ch, &cancel_queue)
        .await?;
    link.bind(&cancel_ch, &cancel_queue, &names.cancel_exchange())
        .await?;
    let mut work = work_ch
        .basic_consume(
            work_queue.as_str().into(),
            "worker-jobs".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let cancel_opts = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    let mut cancels = cancel_ch
        .basic_consume(
            cancel_queue.as_str().into(),
            "worker-cancels".into(),
            cancel_opts,
            FieldTable::default(),
        )
        .await?;
    if link.generation > 1 {
        tracing::info!(
            generation = link.generation,
            "queues declared again after a reconnect"
        );
    }
    supervisor.do_send(Heartbeat);
    loop {
        tokio::select! {
            d = work.next() => match d {
                Some(Ok(d)) => supervisor.do_send(Dispatched(d)),
                _ => return Ok(()),
            },
            c = cancels.next() => match c {
                Some(Ok(d)) => {
                    if let Ok(c) = serde_json::from_slice::<CancelJob>(&d.data) {
                        supervisor.do_send(CancelRequested(c.job_id));
                    }
                }
                _ => return Ok(()),
            },
            _ = link.lost() => return Ok(()),
            _ = drain.changed() => {
                let _ = work_ch
                    .basic_cancel("worker-jobs".into(), BasicCancelOptions::default())
                    .await;
                // Keep the channel (and the running jobs' acks) until the end.
                let _keep = (&work_ch, &cancel_ch);
                std::future::pending::<()>().await;
            }
        }
    }
}
