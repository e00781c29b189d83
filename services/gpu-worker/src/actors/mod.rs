//! The worker's actors and model runtimes.

pub mod batcher;
pub mod chat;
pub mod model;
pub mod supervisor;

use crate::models::{CancelFlag, ModelError, ModelOutput};
use actix::Addr;
use serde_json::Value;

/// How a model is run: a pool of slot threads (one job each), or one model
/// thread that batches jobs dynamically.
#[derive(Clone)]
pub enum Pool {
    Threads(Addr<model::ModelRunner>),
    Batched(batcher::EmbedderHandle),
    Chat(chat::ChatHandle),
}

impl Pool {
    /// Runs one job; a chat model with a `sink` hands over its text as it
    /// grows. `origin` is when the job was created (latency metrics count from it).
    pub async fn run(
        &self,
        input: Value,
        cancel: CancelFlag,
        sink: Option<chat::TextSink>,
        origin: std::time::Instant,
    ) -> Result<ModelOutput, ModelError> {
        match self {
            Pool::Threads(addr) => addr
                .send(model::RunJob { input, cancel })
                .await
                .unwrap_or_else(|e| Err(ModelError::Failed(e.to_string()))),
            Pool::Batched(handle) => handle.run(&input, cancel).await,
            Pool::Chat(handle) => handle.run(&input, cancel, sink, origin).await,
        }
    }
}
