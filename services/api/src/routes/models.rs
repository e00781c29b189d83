//! `GET /v1/models`: the model catalogue, in OpenAI's list format.

use crate::auth::Principal;
use actix_web::{web, HttpResponse};
use maas_core::models::CATALOGUE;
use serde_json::json;

pub fn config(cfg: &mut web::ServiceConfig) {
    cfg.service(super::resource("/v1/models").route(web::get().to(list_models)));
}

#[utoipa::path(get, path = "/v1/models", tag = "models", security(("api_key" = [])),
    responses((status = 200, description = "The models this platform serves")))]
pub async fn list_models(_principal: Principal) -> HttpResponse {
    let data: Vec<_> = CATALOGUE
        .iter()
        .map(|m| json!({"id": m.name, "object": "model", "created": 0, "owned_by": "maas"}))
        .collect();
    HttpResponse::Ok().json(json!({"object": "list", "data": data}))
}
