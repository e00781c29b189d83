//! `/healthz` (the process is alive) and `/readyz` (Postgres, Redis and
//! RabbitMQ reachable, schema current).

use crate::state::AppState;
use actix_web::{web, HttpResponse};
use serde_json::json;
use std::time::Duration;

pub fn config(cfg: &mut web::ServiceConfig) {
    cfg.service(super::resource("/healthz").route(web::get().to(healthz)))
        .service(super::resource("/readyz").route(web::get().to(readyz)));
}

#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, description = "The process is alive")))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

#[utoipa::path(get, path = "/readyz", tag = "health", responses(
    (status = 200, description = "Every dependency is reachable and the schema is current"),
    (status = 503, description = "A dependency is missing; the body says which"),
))]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let limit = Duration::from_secs(2);
    let postgres = matches!(
        tokio::time::timeout(limit, maas_store::schema_current(&state.db)).await,
        Ok(Ok(true))
    );
    let redis = matches!(
        tokio::time::timeout(limit, state.cache.ping()).await,
        Ok(Ok(()))
    );
    let rabbitmq = state.broker.is_connected();
    let missing: Vec<&str> = [
        ("postgres", postgres),
        ("redis", redis),
        ("rabbitmq", rabbitmq),
    ]
    .into_iter()
    .filter(|(_, up)| !up)
    .map(|(name, _)| name)
    .collect();
    let body = json!({
        "status": if missing.is_empty() { "ready" } else { "not_ready" },
        "checks": {"postgres": postgres, "redis": redis, "rabbitmq": rabbitmq},
        "missing": missing,
        // Accepted async jobs whose announcement waits for the broker.
        "outbox": state.outbox.len(),
    });
    if missing.is_empty() {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
