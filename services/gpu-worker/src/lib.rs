//! The worker: an actix actor system that runs models.
//!
//! - [`actors::supervisor::Supervisor`] registers with the scheduler and
//!   heartbeats, receives dispatched jobs, records their transitions in
//!   Postgres, reports results and frees slots; it never computes.
//! - One [`runtime::Runtime`] per served model (echo, the embedder's
//!   dynamic batcher, the chat engine), each on its own device threads, so
//!   compute never runs on the async runtime; each publishes its health.
//!
//! A cancel (fanout from the API) sets the job's flag; models check it between
//! steps and stop.

pub mod actors;
pub mod health;
pub mod loader;
pub mod metrics;
pub mod models;
pub mod runtime;
pub mod settings;
pub mod startup;

pub use settings::WorkerSettings;
pub use startup::Worker;
