//! Model runtimes built on `maas-kernels`. Each model is plain synchronous
//! code, meant to be owned by one dedicated thread of a worker.

pub mod bert;
mod bert_gpu;
pub mod chat;
pub mod chat_template;
pub mod chat_tokenizer;
pub mod engine;
pub mod llama;
pub mod sampling;
pub mod weights;

pub use bert::{Device, EmbedError, EmbedInput, Embedder, Precision, MAX_TOKENS};
