//! `/healthz` (alive) and `/readyz` (broker connected and every model
//! healthy; an unhealthy model is named with its reason).

use crate::runtime::{Health, Loaded};
use actix_web::{web, HttpResponse};
use maas_mq::Broker;
use serde_json::{json, Map, Value};
use std::sync::Arc;

pub struct HealthState {
    pub broker: Arc<Broker>,
    pub worker_id: String,
    pub loaded: Loaded,
    /// `POST /debug/panic/{model}` is served (tests only).
    pub faults: bool,
}

pub fn config(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/healthz",
        web::get().to(|| async { HttpResponse::Ok().json(json!({"status": "ok"})) }),
    )
    .route("/readyz", web::get().to(readyz))
    .route("/debug/panic/{model}", web::post().to(inject_panic))
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
    let mut models = Map::new();
    let mut unhealthy = Vec::new();
    // Each version's state here (loading, warming, ready, draining, failed,
    // unloaded); a runtime whose thread died is `failed` whatever it was.
    for (key, st) in state.loaded.states() {
        models.insert(key, json!({"state": st.state, "reason": st.reason}));
    }
    for (key, rt, _) in state.loaded.all() {
        if let Health::Failed(reason) = rt.health().borrow().clone() {
            unhealthy.push(Value::String(format!("{key}: {reason}")));
            models.insert(key, json!({"state": "failed", "reason": reason}));
        }
    }
    let ready = connected && unhealthy.is_empty();
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "worker_id": state.worker_id,
        "models": models,
        "unhealthy": unhealthy,
        "checks": {"rabbitmq": connected, "models_healthy": unhealthy.is_empty()},
    });
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// Makes a model's thread panic on its next job (`MAAS_WORKER_FAULTS` only).
async fn inject_panic(state: web::Data<HealthState>, model: web::Path<String>) -> HttpResponse {
    if !state.faults {
        return HttpResponse::NotFound().json(json!({"error": "fault injection is off"}));
    }
    // `name@version`, or a bare name for every version of it.
    let targets: Vec<_> = state
        .loaded
        .all()
        .into_iter()
        .filter(|(k, _, _)| k == model.as_str() || k.split('@').next() == Some(model.as_str()))
        .map(|(_, r, _)| r)
        .collect();
    match targets.first() {
        Some(r) => {
            tracing::warn!(model = %model, "fault injected: the model's next job panics its thread");
            r.panic_next();
            HttpResponse::Accepted().json(json!({"model": model.as_str(), "panic_next": true}))
        }
        None => HttpResponse::NotFound().json(json!({"error": "no such model on this worker"})),
    }
}
