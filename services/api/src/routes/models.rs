//! `GET /v1/models` and `GET /v1/models/{id}`: the models this tenant may
//! use, from the registry, in OpenAI's format. A model the tenant may not
//! use is not listed and is a 404, as if it did not exist. `{id}` may be any
//! model string (`name`, `name:label`, `name@version`).

use crate::auth::Principal;
use crate::error::ApiError;
use crate::state::AppState;
use actix_web::{web, HttpResponse};
use maas_store::registry::{ModelRow, Snapshot};
use serde_json::{json, Value};

pub fn config(cfg: &mut web::ServiceConfig) {
    cfg.service(super::resource("/v1/models").route(web::get().to(list_models)))
        .service(super::resource("/v1/models/{id}").route(web::get().to(get_model)));
}

fn view(snap: &Snapshot, m: &ModelRow, id: &str, version: Option<&str>) -> Value {
    let caps = m.kind().map(|k| k.capabilities());
    let labels: serde_json::Map<String, Value> = snap
        .labels
        .iter()
        .filter(|l| l.model == m.name)
        .map(|l| (l.label.clone(), Value::String(l.version.clone())))
        .collect();
    json!({
        "id": id, "object": "model", "created": m.created_at.timestamp(), "owned_by": "maas",
        "kind": m.kind, "version": version, "labels": labels,
        "capabilities": {
            "embeddings": caps.is_some_and(|c| c.embeds),
            "generation": caps.is_some_and(|c| c.generates),
        },
    })
}

#[utoipa::path(get, path = "/v1/models", tag = "models", security(("api_key" = [])),
    responses((status = 200, description = "The models this tenant may use")))]
pub async fn list_models(
    state: web::Data<AppState>,
    principal: Principal,
) -> Result<HttpResponse, ApiError> {
    let snap = state.registry.get(&state.db).await?;
    let data: Vec<_> = snap
        .models
        .iter()
        .filter(|m| principal.may_use(&m.name))
        .map(|m| {
            let stable = snap.resolve(&m.name).map(|r| r.version);
            view(&snap, m, &m.name, stable.as_deref())
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({"object": "list", "data": data})))
}

#[utoipa::path(get, path = "/v1/models/{id}", tag = "models", security(("api_key" = [])),
    params(("id" = String, Path, description = "A model string: name, name:label or name@version")),
    responses(
        (status = 200, description = "The model, with the version the string resolves to"),
        (status = 404, description = "No such model, or not one this tenant may use", body = crate::error::ErrorBody),
    ))]
pub async fn get_model(
    state: web::Data<AppState>,
    principal: Principal,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let snap = state.registry.get(&state.db).await?;
    let resolved = snap
        .resolve(&id)
        .filter(|r| principal.may_use(&r.model))
        .ok_or_else(|| super::model_not_found(&id))?;
    let m = snap
        .model(&resolved.model)
        .ok_or_else(|| super::model_not_found(&id))?;
    Ok(HttpResponse::Ok().json(view(&snap, m, &id, Some(&resolved.version))))
}
