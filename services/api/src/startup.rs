//! Builds the application: connections, migrations, topology, the reply
//! consumer and the HTTP server bound to its own listener.

use crate::auth::JwtVerifier;
use crate::error::ApiError;
use crate::replies::Replies;
use crate::settings::ApiSettings;
use crate::state::AppState;
use actix_web::dev::Server;
use actix_web::error::{JsonPayloadError, QueryPayloadError};
use actix_web::{web, App, HttpRequest, HttpServer};
use anyhow::Context;
use maas_mq::{Broker, BrokerConfig};
use maas_store::cache::Cache;
use std::net::TcpListener;
use std::sync::Arc;

pub struct Application {
    port: u16,
    server: Server,
    broker: Arc<Broker>,
}

fn json_error(err: JsonPayloadError, limit: usize) -> ApiError {
    match err {
        JsonPayloadError::OverflowKnownLength { .. } | JsonPayloadError::Overflow { .. } => {
            ApiError::PayloadTooLarge { limit }
        }
        JsonPayloadError::ContentType => ApiError::UnsupportedMediaType,
        JsonPayloadError::Deserialize(e) => {
            ApiError::invalid(format!("invalid JSON body: {e}"), None)
        }
        JsonPayloadError::Serialize(e) => ApiError::internal(e),
        JsonPayloadError::Payload(e) => {
            ApiError::invalid(format!("could not read the body: {e}"), None)
        }
        other => ApiError::invalid(format!("invalid body: {other}"), None),
    }
}

fn query_error(err: QueryPayloadError, _req: &HttpRequest) -> actix_web::Error {
    ApiError::invalid(format!("invalid query string: {err}"), None).into()
}

fn path_error(err: actix_web::error::PathError, _req: &HttpRequest) -> actix_web::Error {
    ApiError::invalid(format!("invalid path: {err}"), None).into()
}

impl Application {
    pub async fn build(settings: ApiSettings) -> anyhow::Result<Self> {
        let jwt_key = settings.jwt_key().map_err(anyhow::Error::msg)?;
        if settings.jwt_secret.is_none() {
            tracing::warn!("MAAS_JWT_SECRET is not set: dev mode uses a public key, admin tokens are forgeable");
        }
        let common = &settings.common;
        // Nothing here waits for a dependency: the API listens at once and
        // answers 503 for what needs a dependency that is away; `/readyz`
        // says which. Each connection comes (back) on its own.
        let db = maas_store::connect_lazy(&common.database_url, 16, common.db_acquire_timeout())
            .context("the Postgres URL")?;
        tokio::spawn({
            let db = db.clone();
            async move { maas_store::migrate_when_reachable(&db).await }
        });
        let cache = Cache::new(&common.redis_url, &common.namespace).context("the Redis URL")?;
        let instance = uuid::Uuid::new_v4().simple().to_string();
        let mut amqp = BrokerConfig::new(common, &format!("maas-api-{instance}"));
        // A caller waits on this: an unconfirmed publish is answered quickly.
        amqp.confirm_timeout = std::time::Duration::from_secs(2);
        let broker = Broker::start(amqp).context("the RabbitMQ URL")?;
        let reply_queue = broker.names.reply(&instance);
        let replies = Arc::new(Replies::default());
        tokio::spawn(maas_mq::consume_forever(broker.clone(), "replies", {
            let (replies, queue) = (replies.clone(), reply_queue.clone());
            move |link| replies.clone().session(link, queue.clone())
        }));
        let outbox = Arc::new(crate::outbox::Outbox::default());
        tokio::spawn(outbox.clone().relay(broker.clone()));

        let files = maas_store::files::FileStore::from_setting(db.clone(), &settings.file_store)
            .map_err(anyhow::Error::msg)?;
        tokio::spawn(crate::routes::files::sweep_forever(
            files.clone(),
            std::time::Duration::from_secs(settings.files_sweep_secs.max(1)),
        ));
        let state = AppState {
            files,
            db,
            cache,
            broker: broker.clone(),
            replies,
            jwt: Arc::new(JwtVerifier::new(&jwt_key).map_err(anyhow::Error::msg)?),
            settings: Arc::new(settings.clone()),
            reply_queue,
            outbox,
            served: Default::default(),
            registry: Default::default(),
            quotas: Default::default(),
            key_touches: Default::default(),
        };
        tokio::spawn(crate::routes::batches::finalize_forever(
            state.clone(),
            std::time::Duration::from_millis(settings.batch_finalize_ms.max(50)),
        ));
        // Webhook deliveries: due ones are looked for every second.
        tokio::spawn(crate::webhooks::deliver_forever(
            state.clone(),
            std::time::Duration::from_secs(1),
        ));
        let listener = TcpListener::bind(settings.listen)
            .with_context(|| format!("binding {}", settings.listen))?;
        let port = listener.local_addr()?.port();
        let limit = settings.max_body_bytes;
        let data = web::Data::new(state);
        let mut server = HttpServer::new(move || {
            App::new()
                .wrap(actix_web::middleware::from_fn(
                    crate::ratelimit::headers_middleware,
                ))
                .wrap(actix_web::middleware::from_fn(crate::observe::middleware))
                .app_data(data.clone())
                .app_data(
                    web::JsonConfig::default()
                        .limit(limit)
                        .error_handler(move |e, _| json_error(e, limit).into()),
                )
                .app_data(web::PayloadConfig::default().limit(limit))
                .app_data(web::QueryConfig::default().error_handler(query_error))
                .app_data(web::PathConfig::default().error_handler(path_error))
                .configure(crate::routes::config)
                .default_service(web::to(crate::routes::not_found))
        })
        .shutdown_timeout(settings.shutdown_timeout_secs)
        .listen(listener)?;
        if let Some(w) = settings.workers {
            server = server.workers(w);
        }
        Ok(Self {
            port,
            server: server.run(),
            broker,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until SIGTERM/SIGINT: then stops accepting, lets in-flight
    /// requests finish (up to the shutdown timeout) and closes the broker.
    /// A dependency's outage never stops it.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let result = self.server.await;
        self.broker.close().await;
        Ok(result?)
    }
}
