//! The model registry under `/admin/v1/models`: models, versions, labels,
//! loads and unloads, and each version's state on each worker (the index).
//!
//! - `GET /admin/v1/models`: every model with its labels and versions, each
//!   version with its load request and its state per worker.
//! - `POST /admin/v1/models/{name}/versions` `{version, path, checksum?, settings?}`
//!   → 201: registers an immutable version from files under `MAAS_MODELS_DIR`.
//! - `POST .../versions/{version}/load` `{replicas?}` → 202: workers load it
//!   (all, or that many); the state moves `loading` → `warming` → `ready`, or
//!   `failed` with the reason.
//! - `POST .../versions/{version}/unload` → 202: workers drain it (its jobs
//!   finish) and unload it; 409 while a label points at it.
//! - `PUT /admin/v1/models/{name}/labels/{label}` `{version}` → 200: moves
//!   the label atomically; 409 unless the version is `ready` on a live worker.

use crate::auth::Admin;
use crate::error::ApiError;
use crate::routes::admin::audit;
use crate::routes::resource;
use crate::state::AppState;
use actix_web::{web, HttpResponse};
use maas_core::Code;
use maas_store::registry::{self, UnloadRefused};
use serde::Deserialize;
use serde_json::{json, Value};

pub fn config(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/admin/v1/models")
            .service(resource("").route(web::get().to(index)))
            .service(resource("/{name}/versions").route(web::post().to(register)))
            .service(resource("/{name}/versions/{version}/load").route(web::post().to(load)))
            .service(resource("/{name}/versions/{version}/unload").route(web::post().to(unload)))
            .service(resource("/{name}/labels/{label}").route(web::put().to(set_label))),
    );
}

/// Version and label names: lower case, digits, `.`, `_`, `-`; 1–64.
fn check_name(what: &str, s: &str) -> Result<(), ApiError> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
        && s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            format!("{what} must be 1 to 64 of a-z, 0-9, '.', '_', '-', starting with a letter or digit"),
            Some(what),
        ))
    }
}

fn model_404(name: &str) -> ApiError {
    ApiError::NotFound {
        message: format!("no model '{name}' in the registry"),
        code: Code::ModelNotFound,
    }
}

fn version_404(name: &str, version: &str) -> ApiError {
    ApiError::NotFound {
        message: format!("the model '{name}' has no version '{version}'"),
        code: Code::NotFound,
    }
}

#[utoipa::path(get, path = "/admin/v1/models", tag = "admin", security(("admin_jwt" = [])),
    responses((status = 200, description = "Models, versions, labels and each version's state per worker")))]
pub async fn index(state: web::Data<AppState>, _admin: Admin) -> Result<HttpResponse, ApiError> {
    let snap = registry::snapshot(&state.db).await?;
    let replicas = registry::replicas(&state.db).await?;
    let data: Vec<Value> = snap
        .models
        .iter()
        .map(|m| {
            let labels: serde_json::Map<String, Value> = snap
                .labels
                .iter()
                .filter(|l| l.model == m.name)
                .map(|l| (l.label.clone(), Value::String(l.version.clone())))
                .collect();
            let versions: Vec<Value> = snap
                .versions
                .iter()
                .filter(|v| v.model == m.name)
                .map(|v| {
                    let load = snap
                        .loads
                        .iter()
                        .find(|l| l.model == v.model && l.version == v.version);
                    let workers: Vec<&registry::ReplicaRow> = replicas
                        .iter()
                        .filter(|r| r.model == v.model && r.version == v.version)
                        .collect();
                    let ready = workers
                        .iter()
                        .filter(|r| r.worker_alive && r.state == "ready")
                        .count();
                    json!({
                        "version": v.version, "path": v.path, "checksum": v.checksum,
                        "settings": v.settings, "created_at": v.created_at,
                        "load": load.map(|l| json!({"replicas": l.replicas, "requested_at": l.requested_at})),
                        "ready_workers": ready,
                        "workers": workers,
                    })
                })
                .collect();
            json!({"name": m.name, "kind": m.kind, "created_at": m.created_at, "labels": labels, "versions": versions})
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({"object": "list", "data": data})))
}

/// Body of `POST /admin/v1/models/{name}/versions`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterVersion {
    pub version: String,
    /// The version's files (a folder or a file), relative to `MAAS_MODELS_DIR`.
    pub path: String,
    /// The files' sha256 as `docs/models.md` defines it; when absent, the
    /// first worker to load the version pins it.
    pub checksum: Option<String>,
    /// Runtime settings: `slots`, and for an embedder `max_batch_tokens` and
    /// `precision` (see docs/models.md); unknown fields are a 400.
    #[schema(value_type = Option<Object>)]
    pub settings: Option<Value>,
}

#[utoipa::path(post, path = "/admin/v1/models/{name}/versions", tag = "admin", security(("admin_jwt" = [])),
    request_body = RegisterVersion,
    responses((status = 201, description = "Registered"), (status = 400, body = crate::error::ErrorBody),
              (status = 404, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
pub async fn register(
    state: web::Data<AppState>,
    admin: Admin,
    path: web::Path<String>,
    body: web::Json<RegisterVersion>,
) -> Result<HttpResponse, ApiError> {
    let name = path.into_inner();
    let snap = registry::snapshot(&state.db).await?;
    if snap.model(&name).is_none() {
        return Err(model_404(&name));
    }
    check_name("version", &body.version)?;
    let rel = std::path::Path::new(&body.path);
    if body.path.is_empty()
        || rel.is_absolute()
        || rel
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(ApiError::invalid(
            "path must be relative to MAAS_MODELS_DIR, without '..'",
            Some("path"),
        ));
    }
    if let Some(c) = &body.checksum {
        if c.len() != 64 || !c.chars().all(|x| x.is_ascii_hexdigit()) {
            return Err(ApiError::invalid(
                "checksum must be 64 hex digits (sha256)",
                Some("checksum"),
            ));
        }
    }
    let kind = snap
        .model(&name)
        .and_then(|m| m.kind())
        .ok_or_else(|| model_404(&name))?;
    let settings = body.settings.clone().unwrap_or_else(|| json!({}));
    let typed = maas_core::models::VersionSettings::parse(kind, &settings)
        .map_err(|e| ApiError::invalid(e.message, Some(&e.param)))?;
    let settings = serde_json::to_value(typed).unwrap_or_else(|_| json!({}));
    let v = registry::register_version(
        &state.db,
        &name,
        &body.version,
        Some(&body.path),
        body.checksum
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref(),
        &settings,
    )
    .await?;
    state.registry.invalidate();
    audit(
        &state,
        &admin,
        "model.version.register",
        uuid::Uuid::nil(),
        json!({"model": name, "version": v.version, "path": v.path}),
    )
    .await;
    Ok(HttpResponse::Created().json(v))
}

/// Body of `POST .../load`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoadVersion {
    /// On that many workers; absent: on every worker.
    pub replicas: Option<i32>,
}

#[utoipa::path(post, path = "/admin/v1/models/{name}/versions/{version}/load", tag = "admin", security(("admin_jwt" = [])),
    request_body = Option<LoadVersion>,
    responses((status = 202, description = "Workers load it; follow its state in GET /admin/v1/models"),
              (status = 404, body = crate::error::ErrorBody)))]
pub async fn load(
    state: web::Data<AppState>,
    admin: Admin,
    path: web::Path<(String, String)>,
    body: Option<web::Json<LoadVersion>>,
) -> Result<HttpResponse, ApiError> {
    let (name, version) = path.into_inner();
    let replicas = body.map(|b| b.into_inner()).unwrap_or_default().replicas;
    if replicas.is_some_and(|n| !(1..=10_000).contains(&n)) {
        return Err(ApiError::invalid(
            "replicas must be between 1 and 10000",
            Some("replicas"),
        ));
    }
    let snap = registry::snapshot(&state.db).await?;
    if snap.model(&name).is_none() {
        return Err(model_404(&name));
    }
    if snap.version(&name, &version).is_none() {
        return Err(version_404(&name, &version));
    }
    let l = registry::request_load(&state.db, &name, &version, replicas).await?;
    state.registry.invalidate();
    audit(
        &state,
        &admin,
        "model.version.load",
        uuid::Uuid::nil(),
        json!({"model": name, "version": version, "replicas": replicas}),
    )
    .await;
    Ok(HttpResponse::Accepted().json(l))
}

#[utoipa::path(post, path = "/admin/v1/models/{name}/versions/{version}/unload", tag = "admin", security(("admin_jwt" = [])),
    responses((status = 202, description = "Workers drain and unload it"),
              (status = 404, body = crate::error::ErrorBody),
              (status = 409, description = "A label points at it", body = crate::error::ErrorBody)))]
pub async fn unload(
    state: web::Data<AppState>,
    admin: Admin,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (name, version) = path.into_inner();
    let snap = registry::snapshot(&state.db).await?;
    if snap.version(&name, &version).is_none() {
        return Err(version_404(&name, &version));
    }
    match registry::request_unload(&state.db, &name, &version).await? {
        Err(UnloadRefused::Labelled(labels)) => Err(ApiError::Conflict {
            message: format!(
                "the labels {labels:?} point at {name}@{version}; move them to another version first"
            ),
            code: Code::VersionInUse,
        }),
        Ok(_) => {
            state.registry.invalidate();
            audit(&state, &admin, "model.version.unload", uuid::Uuid::nil(),
                json!({"model": name, "version": version})).await;
            Ok(HttpResponse::Accepted().json(json!({"model": name, "version": version, "unload": true})))
        }
    }
}

/// Body of `PUT /admin/v1/models/{name}/labels/{label}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetLabel {
    pub version: String,
}

#[utoipa::path(put, path = "/admin/v1/models/{name}/labels/{label}", tag = "admin", security(("admin_jwt" = [])),
    request_body = SetLabel,
    responses((status = 200, description = "The label points at the version"),
              (status = 404, body = crate::error::ErrorBody),
              (status = 409, description = "The version is not ready on any live worker", body = crate::error::ErrorBody)))]
pub async fn set_label(
    state: web::Data<AppState>,
    admin: Admin,
    path: web::Path<(String, String)>,
    body: web::Json<SetLabel>,
) -> Result<HttpResponse, ApiError> {
    let (name, label) = path.into_inner();
    check_name("label", &label)?;
    let snap = registry::snapshot(&state.db).await?;
    if snap.model(&name).is_none() {
        return Err(model_404(&name));
    }
    if snap.version(&name, &body.version).is_none() {
        return Err(version_404(&name, &body.version));
    }
    let row = registry::set_label(&state.db, &name, &label, &body.version)
        .await?
        .ok_or_else(|| ApiError::Conflict {
            message: format!(
                "{name}@{} is not ready on any live worker; load it and wait for 'ready' in GET /admin/v1/models",
                body.version
            ),
            code: Code::VersionNotReady,
        })?;
    state.registry.invalidate();
    audit(
        &state,
        &admin,
        "model.label.set",
        uuid::Uuid::nil(),
        json!({"model": name, "label": label, "version": body.version}),
    )
    .await;
    Ok(HttpResponse::Ok().json(row))
}
