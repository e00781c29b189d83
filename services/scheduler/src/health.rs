//! `/healthz` and `/readyz` of the scheduler. Ready means connected and
//! either active or standing by; the body says which, and what is missing.

use actix_web::{web, HttpResponse};
use maas_mq::Broker;
use serde_json::json;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

pub const STARTING: u8 = 0;
pub const STANDBY: u8 = 1;
pub const ACTIVE: u8 = 2;

#[derive(Clone, Default)]
pub struct Role(pub Arc<AtomicU8>);

impl Role {
    pub fn set(&self, r: u8) {
        self.0.store(r, Ordering::SeqCst);
    }
    fn name(&self) -> &'static str {
        match self.0.load(Ordering::SeqCst) {
            ACTIVE => "active",
            STANDBY => "standby",
            _ => "starting",
        }
    }
}

/// What `/readyz` reports on.
pub struct HealthState {
    pub role: Role,
    pub broker: Arc<Broker>,
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
    let name = state.role.name();
    let rabbitmq = state.broker.is_connected();
    // Standing by needs Postgres (the lock is competed for there); being
    // active needs the broker too.
    let mut missing = Vec::new();
    if name == "starting" {
        missing.push("postgres");
    }
    if !rabbitmq {
        missing.push("rabbitmq");
    }
    let ready = missing.is_empty();
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "role": name,
        "checks": {"rabbitmq": rabbitmq},
        "missing": missing,
    });
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
