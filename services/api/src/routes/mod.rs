//! HTTP routes, one module per resource, each with its own `config`.

pub mod admin;
pub mod batches;
pub mod chat;
pub mod embeddings;
pub mod files;
pub mod health;
pub mod jobs;
pub mod models;
pub mod registry;
pub mod usage;
pub mod webhooks;

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
    files::config(cfg);
    batches::config(cfg);
    usage::config(cfg);
    webhooks::config(cfg);
    // The registry's scope is longer than the admin scope's and must come first:
    // a scope matches by prefix, so `/admin/v1` would otherwise answer for it.
    registry::config(cfg);
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

/// The 404 of a model string that names nothing this tenant may use.
pub fn model_not_found(name: &str) -> ApiError {
    ApiError::NotFound {
        message: format!("the model '{name}' does not exist; see GET /v1/models"),
        code: Code::ModelNotFound,
    }
}

/// A model string from a request (`name`, `name:label` or `name@version`),
/// resolved through the registry to the exact version that will run it:
/// 404 `model_not_found` when it names nothing, and for a model the tenant
/// may not use (the same answer: to such a tenant the model does not exist).
pub async fn resolve_model(
    state: &crate::state::AppState,
    principal: &crate::auth::Principal,
    name: &str,
) -> Result<maas_store::registry::Resolved, ApiError> {
    let snap = state.registry.get(&state.db).await?;
    let resolved = snap
        .resolve(name)
        .filter(|m| principal.may_use(&m.model))
        .ok_or_else(|| model_not_found(name))?;
    // A version named exactly but not loaded (any more) runs nowhere.
    if !snap.is_loaded(&resolved.model, &resolved.version) {
        return Err(ApiError::ModelUnavailable {
            model: resolved.route(),
        });
    }
    Ok(resolved)
}

/// A job's input for its model's kind, parsed and checked once, here.
pub fn parse_input(
    model: &maas_store::registry::Resolved,
    input: &serde_json::Value,
) -> Result<maas_core::models::JobInput, ApiError> {
    model
        .kind
        .parse_input(input)
        .map_err(|e| ApiError::invalid(e.message, Some(&e.param)))
}

/// A path id that is not a UUID names nothing: 404, like an unknown id.
pub fn parse_id(raw: &str, what: &str) -> Result<uuid::Uuid, ApiError> {
    uuid::Uuid::parse_str(raw).map_err(|_| ApiError::not_found(what))
}
