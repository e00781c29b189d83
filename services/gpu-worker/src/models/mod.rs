//! What every runtime shares: the cancel flag, outputs and errors (the
//! runtimes themselves are in [`crate::runtime`] and the actors).

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
