//! `GET /v1/models` and `GET /v1/models/{id}`: the models this tenant may
//! use, in OpenAI's format. A model the tenant may not use is not listed and
//! is a 404, as if it did not exist.

use crate::auth::Principal;
use crate::error::ApiError;
use actix_web::{web, HttpResponse};
use maas_core::models::{CatalogueEntry, CATALOGUE};
use maas_core::Code;
use serde_json::{json, Value};

pub fn config(cfg: &mut web::ServiceConfig) {
    cfg.service(super::resource("/v1/models").route(web::get().to(list_models)))
        .service(super::resource("/v1/models/{id}").route(web::get().to(get_model)));
}

fn view(m: &CatalogueEntry) -> Value {
    let caps = m.kind.capabilities();
    json!({
        "id": m.name, "object": "model", "created": 0, "owned_by": "maas",
        "kind": m.kind.as_str(),
        "capabilities": {"embeddings": caps.embeds, "generation": caps.generates},
    })
}

#[utoipa::path(get, path = "/v1/models", tag = "models", security(("api_key" = [])),
    responses((status = 200, description = "The models this tenant may use")))]
pub async fn list_models(principal: Principal) -> HttpResponse {
    let data: Vec<_> = CATALOGUE
        .iter()
        .filter(|m| principal.may_use(m.name))
        .map(view)
        .collect();
    HttpResponse::Ok().json(json!({"object": "list", "data": data}))
}

#[utoipa::path(get, path = "/v1/models/{id}", tag = "models", security(("api_key" = [])),
    params(("id" = String, Path, description = "The model's name")),
    responses(
        (status = 200, description = "The model"),
        (status = 404, description = "No such model, or not one this tenant may use", body = crate::error::ErrorBody),
    ))]
pub async fn get_model(
    principal: Principal,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    CATALOGUE
        .iter()
        .find(|m| m.name == id.as_str() && principal.may_use(m.name))
        .map(|m| HttpResponse::Ok().json(view(m)))
        .ok_or_else(|| ApiError::NotFound {
            message: format!("the model '{id}' does not exist; see GET /v1/models"),
            code: Code::ModelNotFound,
        })
}
