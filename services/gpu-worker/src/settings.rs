//! Typed settings of the worker.

use maas_core::models::ModelKind;
use maas_core::settings::CommonSettings;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, clap::Args)]
pub struct WorkerSettings {
    #[command(flatten)]
    pub common: CommonSettings,

    /// Address of the health endpoints (port 0 picks a free port, so several
    /// workers can run on one host).
    #[arg(long, env = "MAAS_WORKER_LISTEN", default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,

    /// `cpu`, or `cuda:N`: where the embedder runs (CUDA needs the NVIDIA
    /// driver and libnvrtc.so.12 on the library path).
    #[arg(long, env = "MAAS_WORKER_DEVICE", default_value = "cpu")]
    pub device: String,

    /// Folder holding one sub-folder per model.
    #[arg(long, env = "MAAS_MODELS_DIR", default_value = "./models")]
    pub models_dir: PathBuf,

    /// Concurrent jobs per model: `N` for every model, or `echo=8,all-minilm-l6-v2=64`.
    /// Unset: 4 for echo, 32 for the embedder (its jobs are batched together),
    /// MAAS_CHAT_MAX_SEQS for the chat model.
    #[arg(long, env = "MAAS_WORKER_SLOTS", default_value = "")]
    pub slots: String,

    /// This worker's id (default: a new random id per process).
    #[arg(long, env = "MAAS_WORKER_ID")]
    pub worker_id: Option<String>,

    /// Heartbeat period.
    #[arg(long, env = "MAAS_WORKER_HEARTBEAT_MS", default_value_t = 1_000)]
    pub heartbeat_ms: u64,

    /// Dynamic batching: most word pieces in one embeddings forward pass. A
    /// larger request is embedded in chunks of at most this many, and other
    /// requests are served between its chunks, so this bounds both the
    /// pass's memory (~15 KB of activations per word piece) and how long a
    /// request arriving meanwhile waits (~0.33 s per pass of 1024 on two CPU
    /// cores; throughput per word piece does not depend on it). On a GPU a
    /// larger pass pays.
    #[arg(long, env = "MAAS_EMBED_MAX_BATCH_TOKENS", default_value_t = 1024)]
    pub embed_max_batch_tokens: usize,

    /// Dynamic batching: longest wait for more requests once one is there.
    #[arg(long, env = "MAAS_EMBED_MAX_WAIT_MS", default_value_t = 0)]
    pub embed_max_wait_ms: u64,

    /// Chat model: most sequences decoding together (continuous batching).
    /// Also the default number of chat slots the worker announces.
    #[arg(long, env = "MAAS_CHAT_MAX_SEQS", default_value_t = 16)]
    pub chat_max_seqs: usize,

    /// Chat model: KV-cache positions that may be reserved at once (each
    /// sequence reserves its prompt plus max_tokens; 23 KB per position for
    /// SmolLM2, keys and values in f16). A request that does not fit waits; one larger than the whole
    /// budget is refused.
    #[arg(long, env = "MAAS_CHAT_KV_BUDGET_TOKENS", default_value_t = 32_768)]
    pub chat_kv_budget_tokens: usize,

    /// Chat model: most tokens in one forward step (one decode token per
    /// running sequence, the rest for prompt chunks).
    #[arg(long, env = "MAAS_CHAT_STEP_TOKENS", default_value_t = 256)]
    pub chat_step_tokens: usize,

    /// Most bytes a job's output may take, as JSON (it is stored in Postgres
    /// and cached in Redis); a larger output fails the job with
    /// `output_too_large` instead.
    #[arg(long, env = "MAAS_WORKER_MAX_OUTPUT_BYTES", default_value_t = DEFAULT_MAX_OUTPUT_BYTES)]
    pub max_output_bytes: usize,

    /// `durable` (default): a job's result and usage record commit with a
    /// WAL flush, so an answered job survives a crash of the database host.
    /// `relaxed` skips the flush (a host crash may lose results already
    /// answered): for benchmarks and throw-away environments only.
    #[arg(long, env = "MAAS_WORKER_RESULT_COMMIT", default_value = "durable", value_parser = ["durable", "relaxed"])]
    pub result_commit: String,

    /// On SIGTERM, how long running jobs may take to finish before the rest
    /// is handed back to the scheduler.
    #[arg(long, env = "MAAS_WORKER_SHUTDOWN_GRACE_MS", default_value_t = 30_000)]
    pub shutdown_grace_ms: u64,

    /// Tests only: serve `POST /debug/panic/{model}` on the health listener,
    /// which makes that model's thread panic on its next job.
    #[arg(long, env = "MAAS_WORKER_FAULTS", default_value_t = false)]
    pub faults: bool,

    /// How often the worker compares what it has loaded with the registry
    /// (versions to load, to drain, to unload).
    #[arg(long, env = "MAAS_WORKER_RECONCILE_MS", default_value_t = 1_000)]
    pub reconcile_ms: u64,
}

/// 32 MiB: twice the largest embeddings output the API admits (2,048 vectors
/// of 384 floats are 15.7 MiB as JSON).
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 32 << 20;

/// Parsed `--slots`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slots {
    default: Option<u32>,
    per_model: HashMap<String, u32>,
}

impl Slots {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut out = Self {
            default: None,
            per_model: HashMap::new(),
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let bad =
                || format!("invalid slots entry '{part}': expected N or model=N with N in 1..=256");
            match part.split_once('=') {
                Some((m, n)) => {
                    let n: u32 = n.trim().parse().map_err(|_| bad())?;
                    if !(1..=256).contains(&n) {
                        return Err(bad());
                    }
                    out.per_model.insert(m.trim().to_owned(), n);
                }
                None => {
                    let n: u32 = part.parse().map_err(|_| bad())?;
                    if !(1..=256).contains(&n) {
                        return Err(bad());
                    }
                    out.default = Some(n);
                }
            }
        }
        Ok(out)
    }

    /// Slots of `model` (of `kind`): its own setting, the default setting,
    /// or the kind's default.
    /// A version's slots: this worker's entry for the model, else the
    /// version's own setting, else this worker's default, else the kind's.
    pub fn for_version(&self, spec: &crate::runtime::VersionSpec, chat_max_seqs: usize) -> u32 {
        if let Some(n) = self.per_model.get(&spec.model) {
            return *n;
        }
        spec.settings
            .slots
            .or(self.default)
            .unwrap_or_else(|| self.for_model(&spec.model, spec.kind, chat_max_seqs))
    }

    pub fn for_model(&self, model: &str, kind: ModelKind, chat_max_seqs: usize) -> u32 {
        let builtin = match kind {
            ModelKind::Embedder => 32,
            ModelKind::Chat => chat_max_seqs.clamp(1, 256) as u32,
            ModelKind::Echo => 4,
        };
        self.per_model
            .get(model)
            .copied()
            .or(self.default)
            .unwrap_or(builtin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_accept_a_default_and_per_model_overrides() {
        let s = Slots::parse("2,echo=8").unwrap();
        assert_eq!(s.for_model("echo", ModelKind::Echo, 16), 8);
        assert_eq!(s.for_model("all-minilm-l6-v2", ModelKind::Embedder, 16), 2);
        let d = Slots::parse("").unwrap();
        assert_eq!(
            (
                d.for_model("echo", ModelKind::Echo, 16),
                d.for_model("all-minilm-l6-v2", ModelKind::Embedder, 16),
                d.for_model("smollm2-135m-instruct", ModelKind::Chat, 12)
            ),
            (4, 32, 12)
        );
        assert!(Slots::parse("echo=0").is_err());
        assert!(Slots::parse("x").is_err());
    }
}
