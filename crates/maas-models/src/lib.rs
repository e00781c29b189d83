//! Model runtimes built on `maas-kernels`. Each model is plain synchronous
//! code, meant to be owned by one dedicated thread of a worker.

pub mod bert;
pub mod weights;

pub use bert::{EmbedInput, Embedder, EmbedError, MAX_TOKENS};
