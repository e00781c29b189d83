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
use maas_mq::Broker;
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
        let db = maas_store::connect(&common.database_url, 16)
            .await
            .context("connecting to Postgres")?;
        maas_store::migrate(&db)
            .await
            .context("applying migrations")?;
        let cache = Cache::connect(&common.redis_url, &common.namespace)
            .await
            .context("connecting to Redis")?;
        let instance = uuid::Uuid::new_v4().simple().to_string();
        let broker = Arc::new(
            Broker::connect(
                &common.amqp_url,
                &common.namespace,
                &format!("maas-api-{instance}"),
                common.amqp_queue_expires_ms,
            )
            .await
            .context("connecting to RabbitMQ")?,
        );
        let reply_queue = broker.names.reply(&instance);
        let replies = Arc::new(Replies::default());
        {
            // Declare the reply queue before taking requests, then consume it.
            let ch = broker.consumer_channel(1).await?;
            broker
                .declare_private_queue(&ch, &reply_queue)
                .await
                .context("declaring the reply queue")?;
            let _ = ch.close(200, "declared".into()).await;
        }
        let consumer = tokio::spawn({
            let (replies, broker, queue) = (replies.clone(), broker.clone(), reply_queue.clone());
            async move { replies.run(broker, queue).await }
        });
        tokio::spawn(async move {
            match consumer.await {
                Ok(Ok(())) => tracing::warn!("reply consumer ended"),
                Ok(Err(e)) => tracing::error!(error = %e, "reply consumer failed"),
                Err(e) => tracing::error!(error = %e, "reply consumer panicked"),
            }
        });

        let state = AppState {
            db,
            cache,
            broker: broker.clone(),
            replies,
            jwt: Arc::new(JwtVerifier::new(&jwt_key).map_err(anyhow::Error::msg)?),
            settings: Arc::new(settings.clone()),
            reply_queue,
            served: Default::default(),
            quotas: Default::default(),
            key_touches: Default::default(),
        };
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
    /// Also stops (with an error) when the broker connection is lost, so the
    /// process supervisor restarts it rather than leaving it unable to queue.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let handle = self.server.handle();
        let mut server = tokio::spawn(self.server);
        tokio::select! {
            result = &mut server => {
                self.broker.close().await;
                result??;
                Ok(())
            }
            _ = self.broker.disconnected() => {
                tracing::error!("lost the RabbitMQ connection; stopping");
                handle.stop(true).await;
                let _ = server.await;
                anyhow::bail!("lost the RabbitMQ connection")
            }
        }
    }
}
