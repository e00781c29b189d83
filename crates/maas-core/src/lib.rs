//! Domain types shared by every service: job states and lanes, the messages
//! that travel through RabbitMQ, API-key material, the model catalogue, trace
//! context and logging setup.
//!
//! This crate does no I/O and holds no global state; everything here is plain
//! data and pure functions, safe to use from any thread.

pub mod apikey;
pub mod backoff;
pub mod codes;
pub mod job;
pub mod messages;
pub mod metrics;
pub mod models;
pub mod secret;
pub mod settings;
pub mod shutdown;
pub mod telemetry;
pub mod trace;

pub use codes::Code;
pub use job::{JobMode, JobStatus, Lane};
pub use secret::Secret;
