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
//! input type, and a runtime here; [`open`] and [`warm_up_input`] are the
//! places in the worker that the compiler then points at.

use crate::actors::batcher::{BatchConfig, EmbedderHandle};
use crate::actors::chat::{ChatHandle, TextSink};
use crate::models::echo::EchoRuntime;
use crate::models::{CancelFlag, ModelError, ModelOutput};
use crate::settings::{Slots, WorkerSettings};
use futures_util::future::BoxFuture;
use maas_core::messages::ModelSlots;
use maas_core::models::{EchoInput, EmbedInput, EmbeddingItem, JobInput, ModelKind};
use maas_core::trace::TraceParent;
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
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

/// One registered version, as a worker needs it to load it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionSpec {
    pub model: String,
    pub version: String,
    pub kind: ModelKind,
    /// Relative to `MAAS_MODELS_DIR`; `None`: built in.
    pub path: Option<String>,
    /// The pinned sha256 of its files, if any.
    pub checksum: Option<String>,
    /// Its runtime settings, as registered.
    pub settings: maas_core::models::VersionSettings,
}

impl VersionSpec {
    /// `name@version`: what jobs are routed by and slots announced under.
    pub fn key(&self) -> String {
        maas_store::registry::route_key(&self.model, &self.version)
    }
}

/// A version's path under the models folder: relative, without `..`.
pub fn files_of(settings: &WorkerSettings, spec: &VersionSpec) -> Result<Option<PathBuf>, String> {
    let Some(rel) = &spec.path else {
        return Ok(None);
    };
    let p = Path::new(rel);
    if p.is_absolute()
        || p.components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(format!(
            "the path '{rel}' must be relative to MAAS_MODELS_DIR, without '..'"
        ));
    }
    Ok(Some(settings.models_dir.join(p)))
}

/// sha256 over a version's files: a file's bytes, or for a folder every
/// file under it in path order, each as its relative path, a NUL, its length
/// and its bytes.
pub fn checksum(path: &Path) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    fn files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        for e in std::fs::read_dir(dir)? {
            let p = e?.path();
            if p.is_dir() {
                files(&p, out)?;
            } else {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut list = Vec::new();
    if path.is_dir() {
        files(path, &mut list)?;
        list.sort();
    } else {
        list.push(path.to_path_buf());
    }
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    for f in list {
        if path.is_dir() {
            let rel = f.strip_prefix(path).unwrap_or(&f);
            h.update(rel.to_string_lossy().as_bytes());
            h.update([0]);
            h.update(std::fs::metadata(&f)?.len().to_le_bytes());
        }
        let mut file = std::fs::File::open(&f)?;
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
    }
    Ok(hex::encode(h.finalize()))
}

/// Opens a version's files and starts its runtime (state `loading`). The
/// error is the reason shown for a `failed` version.
pub async fn open(
    spec: &VersionSpec,
    settings: &WorkerSettings,
    slots: &Slots,
) -> Result<Arc<dyn Runtime>, String> {
    let device: maas_models::Device = settings.device.parse().map_err(|e: String| e)?;
    let path = files_of(settings, spec)?;
    let key = spec.key();
    let n = slots.for_version(spec, settings.chat_max_seqs);
    let blocking = |f: Box<dyn FnOnce() -> Result<Arc<dyn Runtime>, String> + Send>| async move {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| format!("the loading thread failed: {e}"))?
    };
    match spec.kind {
        ModelKind::Echo => EchoRuntime::start(key, n)
            .map(|r| Arc::new(r) as Arc<dyn Runtime>)
            .map_err(|e| e.to_string()),
        ModelKind::Embedder => {
            let dir = path.ok_or("an embedder version needs a path")?;
            if !dir.join("model.safetensors").is_file() {
                return Err(format!(
                    "no model.safetensors in {} (run scripts/fetch-models)",
                    dir.display()
                ));
            }
            let cfg = BatchConfig {
                max_batch_tokens: spec
                    .settings
                    .max_batch_tokens
                    .unwrap_or(settings.embed_max_batch_tokens)
                    .max(256),
                max_wait: Duration::from_millis(settings.embed_max_wait_ms),
            };
            let precision: maas_models::Precision = spec
                .settings
                .precision
                .as_deref()
                .unwrap_or("f16")
                .parse()?;
            blocking(Box::new(move || {
                let e = maas_models::Embedder::load_with(&dir, device, precision)
                    .map_err(|e| format!("cannot load the embedder: {e}"))?;
                EmbedderHandle::start(key, n, e, cfg)
                    .map(|r| Arc::new(r) as Arc<dyn Runtime>)
                    .map_err(|e| e.to_string())
            }))
            .await
        }
        ModelKind::Chat => {
            let file = path.ok_or("a chat version needs a path")?;
            if !file.is_file() {
                return Err(format!(
                    "no model file at {} (run scripts/fetch-models)",
                    file.display()
                ));
            }
            let cfg = maas_models::engine::EngineConfig {
                max_seqs: settings.chat_max_seqs.max(1),
                kv_budget_tokens: settings.chat_kv_budget_tokens,
                step_tokens: settings.chat_step_tokens,
            };
            blocking(Box::new(move || {
                let m = maas_models::chat::ChatModel::load(&file)
                    .map_err(|e| format!("cannot load the chat model: {e}"))?;
                tracing::info!(
                    model = %key,
                    max_seqs = cfg.max_seqs,
                    kv_budget_tokens = cfg.kv_budget_tokens,
                    step_tokens = cfg.step_tokens,
                    weights_mb = m.model.weight_bytes() / 1_000_000,
                    "chat engine"
                );
                ChatHandle::start(key, n, m, cfg)
                    .map(|r| Arc::new(r) as Arc<dyn Runtime>)
                    .map_err(|e| e.to_string())
            }))
            .await
        }
    }
}

/// Warm-up (state `warming`): one job through the runtime itself, before
/// its slots are offered.
pub async fn warm_up(runtime: &Arc<dyn Runtime>) -> Result<(), String> {
    runtime
        .run(
            warm_up_input(runtime.kind()),
            JobContext::new(CancelFlag::default()),
        )
        .await
        .map(|_| ())
        .map_err(|e| format!("warm-up failed: {e}"))
}

/// A version's state on this worker, as the index shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionState {
    pub state: &'static str,
    pub reason: Option<String>,
}

/// The runtimes this worker holds, shared by the supervisor (dispatch and
/// heartbeats), the loader (load, drain, unload) and the health endpoints.
#[derive(Clone, Default)]
pub struct Loaded {
    inner: Arc<std::sync::RwLock<LoadedInner>>,
    /// Something changed that the next heartbeat should say (a version
    /// became ready or draining, a runtime's health changed).
    pub changed: Arc<tokio::sync::Notify>,
}

#[derive(Default)]
struct LoadedInner {
    runtimes: HashMap<String, (Arc<dyn Runtime>, bool)>,
    states: HashMap<String, VersionState>,
}

impl Loaded {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, LoadedInner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, LoadedInner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The runtime of `key`, draining or not (dispatched jobs still run).
    pub fn get(&self, key: &str) -> Option<Arc<dyn Runtime>> {
        self.read().runtimes.get(key).map(|(r, _)| r.clone())
    }

    /// Every runtime with whether it drains.
    pub fn all(&self) -> Vec<(String, Arc<dyn Runtime>, bool)> {
        self.read()
            .runtimes
            .iter()
            .map(|(k, (r, d))| (k.clone(), r.clone(), *d))
            .collect()
    }

    /// Slots offered: those of every healthy runtime that is not draining.
    pub fn offered(&self) -> Vec<ModelSlots> {
        let mut out: Vec<ModelSlots> = self
            .read()
            .runtimes
            .iter()
            .filter(|(_, (r, draining))| !draining && r.health().borrow().is_ready())
            .map(|(k, (r, _))| ModelSlots {
                model: k.clone(),
                slots: r.slots(),
            })
            .collect();
        out.sort_by(|a, b| a.model.cmp(&b.model));
        out
    }

    pub fn insert(&self, key: String, runtime: Arc<dyn Runtime>) {
        // Its health changes reach the next heartbeat at once.
        let (mut health, changed) = (runtime.health(), self.changed.clone());
        tokio::spawn(async move {
            while health.changed().await.is_ok() {
                tracing::warn!(health = ?*health.borrow_and_update(), "model health changed");
                changed.notify_one();
            }
        });
        self.write().runtimes.insert(key, (runtime, false));
        self.changed.notify_one();
    }

    /// Stops offering `key`; jobs already dispatched still run.
    pub fn drain(&self, key: &str) {
        if let Some((_, d)) = self.write().runtimes.get_mut(key) {
            *d = true;
        }
        self.changed.notify_one();
    }

    pub fn remove(&self, key: &str) {
        self.write().runtimes.remove(key);
        self.changed.notify_one();
    }

    pub fn set_state(&self, key: &str, state: &'static str, reason: Option<String>) {
        self.write()
            .states
            .insert(key.to_owned(), VersionState { state, reason });
    }

    pub fn states(&self) -> Vec<(String, VersionState)> {
        let mut v: Vec<_> = self
            .read()
            .states
            .iter()
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
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
