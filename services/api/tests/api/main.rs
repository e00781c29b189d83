//! Black-box tests of the API against the real services.

#![allow(clippy::unwrap_used)]

mod admin;
mod auth;
mod bad_input;
mod batches;
mod budgets;
mod chat;
mod embeddings;
mod faults;
mod files;
mod jobs;
mod limits;
mod maasctl;
mod models;
mod observability;
mod registry;
mod webhooks;
