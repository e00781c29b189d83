//! Wires the worker: connections, model pools (warmed up before the first
//! heartbeat), private queues, the supervisor, consumers and health endpoints.

use crate::actors::batcher::{BatchConfig, EmbedderHandle};
use crate::actors::model::{ModelRunner, RunJob};
use crate::actors::supervisor::{
    CancelRequested, Deps, Dispatched, Drain, Heartbeat, InFlight, Supervisor,
};
use crate::actors::Pool;
use crate::health::{self, HealthState};
use crate::models::{echo::Echo, CancelFlag};
use crate::settings::{Slots, WorkerSettings};
use actix::{Actor, Addr, SyncArbiter};
use actix_web::{web, App, HttpServer};
use anyhow::Context;
use futures_util::StreamExt;
use maas_core::messages::{CancelJob, ModelSlots, WorkerEvent};
use maas_core::models::{MINILM, SMOLLM2};
use maas_mq::lapin::options::{BasicCancelOptions, BasicConsumeOptions};
use maas_mq::lapin::types::FieldTable;
use maas_mq::{Broker, BrokerConfig, Link, MqError, PublishOpts};
use maas_store::cache::Cache;
use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

pub struct Worker {
    settings: WorkerSettings,
    worker_id: String,
    deps: Deps,
    slots: Vec<ModelSlots>,
    embedder: Option<maas_models::Embedder>,
    chat: Option<maas_models::chat::ChatModel>,
    listener: TcpListener,
    port: u16,
}

impl Worker {
    pub async fn build(settings: WorkerSettings) -> anyhow::Result<Self> {
        let device: maas_models::Device = settings.device.parse().map_err(anyhow::Error::msg)?;
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
        let mut slots = vec![ModelSlots {
            model: maas_core::models::ECHO.into(),
            slots: slot_cfg.for_model(maas_core::models::ECHO, settings.chat_max_seqs),
        }];
        let mut embedder = None;
        let dir = settings.models_dir.join(MINILM);
        if dir.join("model.safetensors").is_file() {
            let t0 = Instant::now();
            match tokio::task::spawn_blocking(move || maas_models::Embedder::load_on(&dir, device))
                .await?
            {
                Ok(e) => {
                    // Warm-up: one forward pass before we announce the model.
                    let warm = e.embed(&[maas_models::EmbedInput::Text("warm up".into())]);
                    match warm {
                        Ok(_) => {
                            tracing::info!(model = MINILM, device = %settings.device, load_ms = t0.elapsed().as_millis() as u64, "model loaded");
                            slots.push(ModelSlots {
                                model: MINILM.into(),
                                slots: slot_cfg.for_model(MINILM, settings.chat_max_seqs),
                            });
                            embedder = Some(e);
                        }
                        Err(err) => anyhow::bail!(
                            "warm-up of {MINILM} on {} failed: {err}",
                            settings.device
                        ),
                    }
                }
                // A device that was asked for and does not work is a setup error, not a missing model.
                Err(e) if device != maas_models::Device::Cpu => {
                    anyhow::bail!("cannot load {MINILM} on {}: {e}", settings.device)
                }
                Err(e) => {
                    tracing::error!(model = MINILM, error = %e, "model files present but unusable; not serving this model")
                }
            }
        } else {
            tracing::warn!(model = MINILM, dir = %dir.display(), "model files missing; not serving this model (run scripts/fetch-models)");
        }
        let mut chat = None;
        let gguf = settings
            .models_dir
            .join(SMOLLM2)
            .join("SmolLM2-135M-Instruct.Q4_1.gguf");
        if gguf.is_file() {
            let t0 = Instant::now();
            match tokio::task::spawn_blocking(move || maas_models::chat::ChatModel::load(&gguf))
                .await?
            {
                Ok(m) => {
                    let prompt = m.raw_prompt("Hello").unwrap_or_default();
                    let warm = m.generate(
                        &prompt,
                        maas_models::sampling::SamplingParams {
                            temperature: 0.0,
                            max_tokens: 1,
                            ..Default::default()
                        },
                        &|| false,
                    );
                    match warm {
                        Ok(_) => {
                            tracing::info!(
                                model = SMOLLM2,
                                load_ms = t0.elapsed().as_millis() as u64,
                                weights_mb = m.model.weight_bytes() / 1_000_000,
                                "model loaded (CPU)"
                            );
                            slots.push(ModelSlots {
                                model: SMOLLM2.into(),
                                slots: slot_cfg.for_model(SMOLLM2, settings.chat_max_seqs),
                            });
                            chat = Some(m);
                        }
                        Err(e) => {
                            tracing::error!(model = SMOLLM2, error = %e, "warm-up failed; not serving this model")
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(model = SMOLLM2, error = %e, "model file present but unusable; not serving this model")
                }
            }
        } else {
            tracing::warn!(model = SMOLLM2, file = %gguf.display(), "model file missing; not serving this model (run scripts/fetch-models)");
        }
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
            slots,
            embedder,
            chat,
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
    pub async fn run_until_stopped(mut self) -> anyhow::Result<()> {
        let broker = self.deps.broker.clone();
        let names = broker.names.clone();

        // Model pools: one thread per slot, warmed up before we announce ourselves.
        let mut pools: HashMap<String, Pool> = HashMap::new();
        for s in &self.slots {
            if s.model == SMOLLM2 {
                if let Some(m) = self.chat.take() {
                    let cfg = maas_models::engine::EngineConfig {
                        max_seqs: self.settings.chat_max_seqs.max(1),
                        kv_budget_tokens: self.settings.chat_kv_budget_tokens,
                        step_tokens: self.settings.chat_step_tokens,
                    };
                    tracing::info!(
                        model = SMOLLM2,
                        max_seqs = cfg.max_seqs,
                        kv_budget_tokens = cfg.kv_budget_tokens,
                        step_tokens = cfg.step_tokens,
                        "chat engine"
                    );
                    pools.insert(
                        s.model.clone(),
                        Pool::Chat(crate::actors::chat::ChatHandle::start(m, cfg)),
                    );
                }
                continue;
            }
            if s.model == MINILM {
                if let Some(e) = self.embedder.take() {
                    let cfg = BatchConfig {
                        max_batch_tokens: self.settings.embed_max_batch_tokens.max(256),
                        max_wait: Duration::from_millis(self.settings.embed_max_wait_ms),
                    };
                    pools.insert(
                        s.model.clone(),
                        Pool::Batched(EmbedderHandle::start(e, cfg)),
                    );
                }
                continue;
            }
            let pool: Addr<ModelRunner> =
                SyncArbiter::start(s.slots as usize, || ModelRunner::new(Box::new(Echo)));
            pool.send(RunJob {
                input: serde_json::json!({"text": "warm-up"}),
                cancel: CancelFlag::default(),
            })
            .await
            .context("model pool unreachable")?
            .map_err(|e| anyhow::anyhow!("warm-up of {} failed: {e}", s.model))?;
            pools.insert(s.model.clone(), Pool::Threads(pool));
        }

        let supervisor = Supervisor::new(
            self.deps.clone(),
            pools,
            self.slots.clone(),
            Duration::from_millis(self.settings.heartbeat_ms),
        )
        .start();

        // The private queues and their consumers, set up again on every
        // broker link; a heartbeat follows each setup at once, so the
        // scheduler sees this worker (and the attempts it still holds) as
        // soon as the queues exist.
        let total_slots: u32 = self.slots.iter().map(|s| s.slots).sum();
        let prefetch = total_slots.clamp(1, u16::MAX as u32) as u16;
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

        let health = web::Data::new(HealthState {
            broker: broker.clone(),
            worker_id: self.worker_id.clone(),
            models: self.slots.iter().map(|s| s.model.clone()).collect(),
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
