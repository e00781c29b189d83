//! What the supervisor runs jobs on: one [`Runtime`] per served model, each
//! on the shared device-thread scaffold ([`DeviceThreads`]).
//!
//! A runtime owns its model on dedicated threads (compute never runs on the
//! async runtime), takes typed input ([`JobInput`] of its kind) with a
//! [`JobContext`], and publishes its health: a model thread that panics
//! turns the runtime `Failed` with the reason, the supervisor stops
//! advertising its slots at once and `/readyz` says why.
//!
//! Adding a model kind: a [`maas_core::models::ModelKind`] variant, its
//! input type, and a runtime here; [`load`] and [`warm_up_input`] are the
//! places in the worker that the compiler then points at.

use crate::actors::batcher::{BatchConfig, EmbedderHandle};
use crate::actors::chat::{ChatHandle, TextSink};
use crate::models::echo::EchoRuntime;
use crate::models::{CancelFlag, ModelError, ModelOutput};
use crate::settings::{Slots, WorkerSettings};
use futures_util::future::BoxFuture;
use maas_core::models::{
    CatalogueEntry, EchoInput, EmbedInput, EmbeddingItem, JobInput, ModelKind,
};
use maas_core::trace::TraceParent;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvError, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// A model's health on this worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Ready,
    /// Its thread died or it stopped: it takes no work. The reason is shown.
    Failed(String),
}

impl Health {
    pub fn is_ready(&self) -> bool {
        matches!(self, Health::Ready)
    }
}

/// What a job carries into its runtime besides its input.
pub struct JobContext {
    /// Set by a cancel; runtimes check it between steps.
    pub cancel: CancelFlag,
    /// Where generated text goes as it grows (a streamed chat job).
    pub sink: Option<TextSink>,
    /// When the job was created (latency metrics count from it).
    pub origin: Instant,
    /// The job's span on this worker, for spans the runtime opens.
    pub trace: Option<TraceParent>,
}

impl JobContext {
    pub fn new(cancel: CancelFlag) -> Self {
        Self {
            cancel,
            sink: None,
            origin: Instant::now(),
            trace: None,
        }
    }
}

/// A served model.
pub trait Runtime: Send + Sync {
    /// The model's name, as jobs name it.
    fn model(&self) -> &str;
    fn kind(&self) -> ModelKind;
    /// Jobs it may hold at once on this worker.
    fn slots(&self) -> u32;
    /// Its health now and as it changes.
    fn health(&self) -> watch::Receiver<Health>;
    /// Runs one job; `Cancelled` soon after `ctx.cancel` is set.
    fn run(
        &self,
        input: JobInput,
        ctx: JobContext,
    ) -> BoxFuture<'static, Result<ModelOutput, ModelError>>;
    /// Test hook (`MAAS_WORKER_FAULTS`): the next job its thread takes
    /// panics there, as a failed shape assertion in a kernel would.
    fn panic_next(&self);
}

/// The wrong kind of input reached a runtime (a bug upstream, not the caller's).
pub fn wrong_input(kind: ModelKind, input: &JobInput) -> ModelError {
    ModelError::InvalidInput(format!(
        "a {} model cannot run {} input",
        kind.as_str(),
        input.kind().as_str()
    ))
}

/// The threads of one runtime: a bounded queue of requests `R`, `threads`
/// threads taking them through an [`Inbox`], and the runtime's health. A
/// panic on any thread makes the runtime `Failed` with the panic's message.
pub struct DeviceThreads<R> {
    tx: SyncSender<R>,
    health: watch::Receiver<Health>,
    fault: Arc<AtomicBool>,
}

impl<R> Clone for DeviceThreads<R> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            health: self.health.clone(),
            fault: self.fault.clone(),
        }
    }
}

/// A runtime's thread's side of its queue.
pub struct Inbox<R> {
    rx: Arc<Mutex<Receiver<R>>>,
    fault: Arc<AtomicBool>,
}

impl<R> Inbox<R> {
    fn take(&self, r: R) -> R {
        if self.fault.swap(false, Ordering::SeqCst) {
            drop(r);
            panic!("injected fault: the model thread panicked on a job");
        }
        r
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Receiver<R>> {
        self.rx.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn recv(&self) -> Result<R, RecvError> {
        let r = self.lock().recv()?;
        Ok(self.take(r))
    }

    pub fn try_recv(&self) -> Result<R, TryRecvError> {
        let r = self.lock().try_recv()?;
        Ok(self.take(r))
    }

    pub fn recv_timeout(&self, d: Duration) -> Result<R, RecvTimeoutError> {
        let r = self.lock().recv_timeout(d)?;
        Ok(self.take(r))
    }

    /// Everything waiting now.
    pub fn drain(&self) -> Vec<R> {
        std::iter::from_fn(|| self.try_recv().ok()).collect()
    }
}

impl<R: Send + 'static> DeviceThreads<R> {
    /// Starts `threads` threads named `name-N`, each running `serve` until
    /// the queue closes.
    pub fn start(
        name: &str,
        threads: usize,
        queue: usize,
        serve: impl Fn(&Inbox<R>) + Send + Sync + 'static,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel::<R>(queue);
        let (health_tx, health) = watch::channel(Health::Ready);
        let health_tx = Arc::new(health_tx);
        let fault = Arc::new(AtomicBool::new(false));
        let rx = Arc::new(Mutex::new(rx));
        let serve = Arc::new(serve);
        for i in 0..threads.max(1) {
            let inbox = Inbox {
                rx: rx.clone(),
                fault: fault.clone(),
            };
            let (serve, health_tx, name) = (serve.clone(), health_tx.clone(), name.to_owned());
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    if let Err(panic) = catch_unwind(AssertUnwindSafe(|| serve(&inbox))) {
                        let why = panic
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "unknown panic".into());
                        tracing::error!(thread = %format!("{name}-{i}"), reason = %why, "model thread died; the model takes no more work here");
                        health_tx.send_replace(Health::Failed(format!("model thread died: {why}")));
                    }
                })?;
        }
        Ok(Self { tx, health, fault })
    }

    /// Queues one request; refused while the queue is full or the threads are gone.
    pub fn send(&self, r: R) -> Result<(), ModelError> {
        if let Health::Failed(why) = &*self.health.borrow() {
            return Err(ModelError::Failed(why.clone()));
        }
        self.tx.try_send(r).map_err(|e| match e {
            mpsc::TrySendError::Full(_) => ModelError::Failed("the model's queue is full".into()),
            mpsc::TrySendError::Disconnected(_) => {
                ModelError::Failed("the model thread stopped".into())
            }
        })
    }

    pub fn health(&self) -> watch::Receiver<Health> {
        self.health.clone()
    }

    pub fn panic_next(&self) {
        self.fault.store(true, Ordering::SeqCst);
    }
}

/// A small job that exercises a model of `kind` end to end before it is announced.
pub fn warm_up_input(kind: ModelKind) -> JobInput {
    match kind {
        ModelKind::Echo => JobInput::Echo(EchoInput {
            text: "warm up".into(),
            delay_ms: None,
        }),
        ModelKind::Embedder => JobInput::Embed(EmbedInput {
            items: vec![EmbeddingItem::Text("warm up".into())],
        }),
        ModelKind::Chat => JobInput::Chat(maas_core::models::ChatInput {
            messages: None,
            prompt: Some(maas_core::models::Prompt::Text("Hello".into())),
            max_tokens: Some(1),
            temperature: Some(0.0),
            top_p: None,
            top_k: None,
            seed: None,
            stop: None,
            stream: false,
            logprobs: None,
        }),
    }
}

/// Loads a catalogue model from `MAAS_MODELS_DIR` and warms it up. `Ok(None)`:
/// its files are not there (a warning, not an error).
pub async fn load(
    entry: &CatalogueEntry,
    settings: &WorkerSettings,
    slots: &Slots,
) -> anyhow::Result<Option<Arc<dyn Runtime>>> {
    let device: maas_models::Device = settings.device.parse().map_err(anyhow::Error::msg)?;
    let path = entry.path.map(|p| settings.models_dir.join(p));
    let present = match (&path, entry.kind) {
        (None, _) => true,
        (Some(p), ModelKind::Embedder) => p.join("model.safetensors").is_file(),
        (Some(p), _) => p.is_file(),
    };
    if !present {
        tracing::warn!(model = entry.name, path = ?path, "model files missing; not serving this model (run scripts/fetch-models)");
        return Ok(None);
    }
    let name = entry.name.to_owned();
    let n = slots.for_model(entry.name, entry.kind, settings.chat_max_seqs);
    let t0 = Instant::now();
    let runtime: Arc<dyn Runtime> = match entry.kind {
        ModelKind::Echo => Arc::new(EchoRuntime::start(name, n)?),
        ModelKind::Embedder => {
            let dir = path.clone().unwrap_or_default();
            let embedder =
                tokio::task::spawn_blocking(move || maas_models::Embedder::load_on(&dir, device))
                    .await?;
            let embedder = match embedder {
                Ok(e) => e,
                // A device that was asked for and does not work is a setup error.
                Err(e) if device != maas_models::Device::Cpu => {
                    anyhow::bail!("cannot load {} on {}: {e}", entry.name, settings.device)
                }
                Err(e) => {
                    tracing::error!(model = entry.name, error = %e, "model files present but unusable; not serving this model");
                    return Ok(None);
                }
            };
            let cfg = BatchConfig {
                max_batch_tokens: settings.embed_max_batch_tokens.max(256),
                max_wait: Duration::from_millis(settings.embed_max_wait_ms),
            };
            Arc::new(EmbedderHandle::start(name, n, embedder, cfg)?)
        }
        ModelKind::Chat => {
            let file = path.clone().unwrap_or_default();
            let model =
                tokio::task::spawn_blocking(move || maas_models::chat::ChatModel::load(&file))
                    .await?;
            let model = match model {
                Ok(m) => m,
                Err(e) => {
                    tracing::error!(model = entry.name, error = %e, "model file present but unusable; not serving this model");
                    return Ok(None);
                }
            };
            let cfg = maas_models::engine::EngineConfig {
                max_seqs: settings.chat_max_seqs.max(1),
                kv_budget_tokens: settings.chat_kv_budget_tokens,
                step_tokens: settings.chat_step_tokens,
            };
            tracing::info!(
                model = entry.name,
                max_seqs = cfg.max_seqs,
                kv_budget_tokens = cfg.kv_budget_tokens,
                step_tokens = cfg.step_tokens,
                weights_mb = model.model.weight_bytes() / 1_000_000,
                "chat engine"
            );
            Arc::new(ChatHandle::start(name, n, model, cfg)?)
        }
    };
    // Warm-up: one job through the runtime itself before it is announced.
    match runtime
        .run(
            warm_up_input(entry.kind),
            JobContext::new(CancelFlag::default()),
        )
        .await
    {
        Ok(_) => {
            tracing::info!(model = entry.name, kind = entry.kind.as_str(), device = %settings.device, slots = n, load_ms = t0.elapsed().as_millis() as u64, "model loaded and warmed up");
            Ok(Some(runtime))
        }
        Err(e) if device != maas_models::Device::Cpu && entry.kind == ModelKind::Embedder => {
            anyhow::bail!(
                "warm-up of {} on {} failed: {e}",
                entry.name,
                settings.device
            )
        }
        Err(e) => {
            tracing::error!(model = entry.name, error = %e, "warm-up failed; not serving this model");
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_thread_turns_the_runtime_failed() {
        let threads = DeviceThreads::<u32>::start("t", 2, 8, |inbox| {
            while let Ok(n) = inbox.recv() {
                assert!(n < 100, "shape assertion");
            }
        })
        .unwrap();
        let mut health = threads.health();
        threads.send(1).unwrap();
        assert!(health.borrow().is_ready());
        threads.send(500).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), health.changed())
                .await
                .unwrap()
                .unwrap();
        });
        let now = health.borrow().clone();
        assert!(
            matches!(&now, Health::Failed(why) if why.contains("shape assertion")),
            "{now:?}"
        );
        // A failed runtime refuses work instead of queueing it for nobody.
        assert!(threads.send(2).is_err());
    }

    #[test]
    fn an_injected_fault_panics_on_the_next_request() {
        let threads =
            DeviceThreads::<u32>::start("f", 1, 8, |inbox| while inbox.recv().is_ok() {}).unwrap();
        let health = threads.health();
        threads.send(1).unwrap();
        threads.panic_next();
        threads.send(2).unwrap();
        let t0 = Instant::now();
        while health.borrow().is_ready() && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(matches!(&*health.borrow(), Health::Failed(why) if why.contains("injected")));
    }
}
