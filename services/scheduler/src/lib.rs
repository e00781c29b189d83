//! The scheduler owns the job state machine between `queued` and a worker.
//!
//! One scheduler is active at a time: it holds a Postgres advisory lock on a
//! dedicated connection ([`leader`]); a standby waits for the lock and takes
//! over when the active one dies, rebuilding its state from Postgres.
//!
//! Concurrency model: one task owns all scheduling state ([`core::Core`]) and
//! handles, in turn, submitted jobs, worker events and a periodic tick; there
//! are no locks. The fair-share queue ([`fair`]) is a pure data structure,
//! tested in isolation.

pub mod core;
pub mod fair;
pub mod health;
pub mod leader;
pub mod metrics;
pub mod settings;
pub mod startup;

pub use settings::SchedulerSettings;
pub use startup::Scheduler;
