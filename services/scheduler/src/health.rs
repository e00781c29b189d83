//! `/healthz` and `/readyz` of the scheduler. Ready means connected and
//! either active or standing by; the body says which.

use actix_web::{web, HttpResponse};
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

async fn readyz(role: web::Data<Role>) -> HttpResponse {
    let name = role.name();
    let body =
        json!({"status": if name == "starting" { "not_ready" } else { "ready" }, "role": name});
    if name == "starting" {
        HttpResponse::ServiceUnavailable().json(body)
    } else {
        HttpResponse::Ok().json(body)
    }
}
