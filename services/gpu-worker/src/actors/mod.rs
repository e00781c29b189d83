//! The worker's actors and model runtimes.

pub mod batcher;
pub mod chat;
pub mod supervisor;
