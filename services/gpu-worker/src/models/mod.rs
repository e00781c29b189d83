//! Models a worker can serve, behind one small synchronous trait. Each
//! instance lives on its own thread (a slot) and is called with one job at a
//! time.

pub mod echo;

use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Set by a cancel; models check it between steps.
#[derive(Debug, Clone, Default)]
pub struct CancelFlag(Arc<AtomicBool>);

impl CancelFlag {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

#[derive(Debug, Clone)]
pub struct ModelOutput {
    pub output: Value,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cancelled")]
    Cancelled,
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("model failure: {0}")]
    Failed(String),
}

pub trait Model: Send + 'static {
    fn name(&self) -> &'static str;
    /// Runs one job; returns `Cancelled` soon after `cancel` is set.
    fn run(&mut self, input: &Value, cancel: &CancelFlag) -> Result<ModelOutput, ModelError>;
}
