//! The tenant and admin HTTP API.
//!
//! Stateless: any number of replicas can run side by side. A request is
//! authenticated (API key or admin JWT), validated, written to Postgres and
//! announced on RabbitMQ with a publisher confirm before it is answered. Sync
//! callers then wait on this instance's own reply queue ([`replies`]).
//!
//! Concurrency: actix-web runs one single-threaded runtime per worker thread;
//! shared state ([`state::AppState`]) is cheap to clone and holds no lock
//! across an `.await`.

pub mod auth;
pub mod error;
pub mod observe;
pub mod openapi;
pub mod outbox;
pub mod ratelimit;
pub mod replies;
pub mod routes;
pub mod settings;
pub mod startup;
pub mod state;
pub mod submit;
pub mod webhooks;

pub use settings::ApiSettings;
pub use startup::Application;
