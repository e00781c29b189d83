//! HTTP routes, one module per resource, each with its own `config`.

pub mod admin;
pub mod chat;
pub mod embeddings;
pub mod health;
pub mod jobs;
pub mod models;
pub mod usage;

use crate::error::ApiError;
use actix_web::{web, HttpRequest};
use maas_core::Code;

/// Everything the API serves.
pub fn config(cfg: &mut web::ServiceConfig) {
    health::config(cfg);
    jobs::config(cfg);
    embeddings::config(cfg);
    chat::config(cfg);
    models::config(cfg);
    usage::config(cfg);
    admin::config(cfg);
    cfg.service(resource("/openapi.json").route(web::get().to(crate::openapi::serve)));
    cfg.service(resource("/metrics").route(web::get().to(crate::observe::serve_metrics)));
}

/// Unknown routes answer with the same error object as everything else.
pub async fn not_found(req: HttpRequest) -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::NotFound {
        message: format!("no route for {} {}", req.method(), req.path()),
        code: Code::UnknownRoute,
    })
}

/// A resource whose other methods answer 405 with the error object.
pub fn resource(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(method_not_allowed))
}

/// A known route with another method.
pub async fn method_not_allowed() -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed)
}

/// A model name from a request body: 404 `model_not_found` outside the
/// catalogue, and for a model the tenant may not use (the same answer: to
/// such a tenant the model does not exist).
pub fn parse_model(
    principal: &crate::auth::Principal,
    name: &str,
) -> Result<maas_core::models::ModelName, ApiError> {
    maas_core::models::ModelName::parse(name)
        .filter(|m| principal.may_use(m.as_str()))
        .ok_or_else(|| ApiError::NotFound {
            message: format!("the model '{name}' does not exist; see GET /v1/models"),
            code: Code::ModelNotFound,
        })
}

/// A job's input for its model's kind, parsed and checked once, here.
pub fn parse_input(
    model: &maas_core::models::ModelName,
    input: &serde_json::Value,
) -> Result<maas_core::models::JobInput, ApiError> {
    model
        .kind()
        .parse_input(input)
        .map_err(|e| ApiError::invalid(e.message, Some(&e.param)))
}

/// A path id that is not a UUID names nothing: 404, like an unknown id.
pub fn parse_id(raw: &str, what: &str) -> Result<uuid::Uuid, ApiError> {
    uuid::Uuid::parse_str(raw).map_err(|_| ApiError::not_found(what))
}
