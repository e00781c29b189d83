//! Shared state of the API handlers.

use crate::auth::JwtVerifier;
use crate::replies::Replies;
use crate::settings::ApiSettings;
use maas_mq::Broker;
use maas_store::cache::Cache;
use sqlx::PgPool;
use std::sync::Arc;

#[derive(Clone)]
pub struct AppState {
    pub db: PgPool,
    pub cache: Cache,
    pub broker: Arc<Broker>,
    pub replies: Arc<Replies>,
    pub jwt: Arc<JwtVerifier>,
    pub settings: Arc<ApiSettings>,
    /// This instance's reply queue, named in sync jobs' `reply_to`.
    pub reply_queue: String,
}
