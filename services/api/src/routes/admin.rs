//! Admin API under `/admin/v1`, behind an admin JWT. Every change is written
//! to the audit log with the token's `sub`.

use crate::auth::{validate_scopes, Admin};
use crate::error::ApiError;
use crate::routes::{parse_id, resource};
use crate::state::AppState;
use actix_web::{web, HttpResponse};
use chrono::{DateTime, Duration, Utc};
use maas_core::apikey::NewKey;
use maas_store::budget::{self, Period};
use maas_store::keys::{self, ApiKey, KeyLimits, NewKeyRow};
use maas_store::quotas::{self, Quota};
use maas_store::{audit, tenants, usage, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

pub fn config(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/admin/v1")
            .service(
                resource("/tenants")
                    .route(web::post().to(create_tenant))
                    .route(web::get().to(list_tenants)),
            )
            .service(
                resource("/tenants/{id}")
                    .route(web::get().to(get_tenant))
                    .route(web::patch().to(update_tenant))
                    .route(web::delete().to(delete_tenant)),
            )
            .service(
                resource("/tenants/{id}/keys")
                    .route(web::post().to(create_key))
                    .route(web::get().to(list_keys)),
            )
            .service(
                resource("/tenants/{id}/quota")
                    .route(web::put().to(put_quota))
                    .route(web::get().to(get_quota)),
            )
            .service(
                resource("/tenants/{id}/file-limits")
                    .route(web::put().to(put_file_limits))
                    .route(web::get().to(get_file_limits)),
            )
            .service(resource("/tenants/{id}/batches").route(web::get().to(list_tenant_batches)))
            .service(
                resource("/tenants/{id}/batches/{batch_id}/cancel")
                    .route(web::post().to(cancel_tenant_batch)),
            )
            .service(resource("/tenants/{id}/usage").route(web::get().to(get_usage)))
            .service(resource("/tenants/{id}/models").route(web::put().to(put_tenant_models)))
            .service(
                resource("/keys/{key_id}")
                    .route(web::delete().to(revoke_key))
                    .route(web::patch().to(set_key_limits)),
            ),
    );
}

pub(crate) async fn audit(
    state: &AppState,
    admin: &Admin,
    action: &str,
    target: Uuid,
    details: serde_json::Value,
) {
    if let Err(e) = audit::record(
        &state.db,
        &admin.sub,
        action,
        Some(&target.to_string()),
        details,
    )
    .await
    {
        tracing::error!(error = %e, action, "could not write audit log");
    }
}

/// Rewrites the cached authentication data of every key of a tenant, so a
/// change (revocation, disabling) applies on the next request on every replica.
async fn refresh_key_cache(state: &AppState, tenant_id: Uuid) -> Result<(), ApiError> {
    for (prefix, auth) in keys::auth_for_tenant(&state.db, tenant_id).await? {
        state.cache.replace_key(&prefix, &auth).await.map_err(|e| ApiError::Unavailable {
            message: format!("the change is saved but the shared key cache could not be updated ({e}); retry"),
            retry_after_secs: 1,
        })?;
    }
    Ok(())
}

pub(crate) async fn tenant_or_404(
    state: &AppState,
    raw: &str,
) -> Result<tenants::Tenant, ApiError> {
    let id = parse_id(raw, "tenant")?;
    tenants::get(&state.db, id)
        .await?
        .ok_or_else(|| ApiError::not_found("tenant"))
}

fn check_name(name: &str) -> Result<(), ApiError> {
    if name.trim().is_empty() || name.len() > 200 {
        return Err(ApiError::invalid(
            "name must be 1 to 200 characters",
            Some("name"),
        ));
    }
    Ok(())
}

fn check_weight(weight: i32) -> Result<(), ApiError> {
    if !(1..=1000).contains(&weight) {
        return Err(ApiError::invalid(
            "weight must be between 1 and 1000",
            Some("weight"),
        ));
    }
    Ok(())
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    pub name: String,
    /// Fair-share weight, 1 to 1000 (default 1).
    pub weight: Option<i32>,
}

#[utoipa::path(post, path = "/admin/v1/tenants", tag = "admin", security(("admin_jwt" = [])), request_body = CreateTenant,
    responses((status = 201, description = "Created"), (status = 401, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
pub async fn create_tenant(
    state: web::Data<AppState>,
    admin: Admin,
    body: web::Json<CreateTenant>,
) -> Result<HttpResponse, ApiError> {
    check_name(&body.name)?;
    let weight = body.weight.unwrap_or(1);
    check_weight(weight)?;
    let t = tenants::create(&state.db, body.name.trim(), weight).await?;
    audit(
        &state,
        &admin,
        "tenant.create",
        t.id,
        json!({"name": t.name, "weight": t.weight}),
    )
    .await;
    Ok(HttpResponse::Created().json(t))
}

#[utoipa::path(get, path = "/admin/v1/tenants", tag = "admin", security(("admin_jwt" = [])), responses((status = 200, description = "Every tenant")))]
pub async fn list_tenants(
    state: web::Data<AppState>,
    _admin: Admin,
) -> Result<HttpResponse, ApiError> {
    let list = tenants::list(&state.db).await?;
    Ok(HttpResponse::Ok().json(json!({"object": "list", "data": list})))
}

#[utoipa::path(get, path = "/admin/v1/tenants/{id}", tag = "admin", security(("admin_jwt" = [])),
    responses((status = 200, description = "The tenant"), (status = 404, body = crate::error::ErrorBody)))]
pub async fn get_tenant(
    state: web::Data<AppState>,
    _admin: Admin,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(tenant_or_404(&state, &path).await?))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTenant {
    pub name: Option<String>,
    pub weight: Option<i32>,
    pub disabled: Option<bool>,
}

#[utoipa::path(patch, path = "/admin/v1/tenants/{id}", tag = "admin", security(("admin_jwt" = [])), request_body = UpdateTenant,
    responses((status = 200, description = "The updated tenant"), (status = 404, body = crate::error::ErrorBody)))]
pub async fn update_tenant(
    state: web::Data<AppState>,
    admin: Admin,
    path: web::Path<String>,
    body: web::Json<UpdateTenant>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path, "tenant")?;
    if let Some(n) = &body.name {
        check_name(n)?;
    }
    if let Some(w) = body.weight {
        check_weight(w)?;
    }
    let t = tenants::update(
        &state.db,
        id,
        body.name.as_deref().map(str::trim),
        body.weight,
        body.disabled,
    )
    .await?
    .ok_or_else(|| ApiError::not_found("tenant"))?;
    if body.disabled.is_some() {
        // Keys cache the tenant's disabled flag.
        refresh_key_cache(&state, id).await?;
    }
    audit(
        &state,
        &admin,
        "tenant.update",
        id,
        json!({"name": body.name, "weight": body.weight, "disabled": body.disabled}),
    )
    .await;
    Ok(HttpResponse::Ok().json(t))
}

/// Body of `PUT /admin/v1/tenants/{id}/models`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantModels {
    /// The models the tenant may use; `null`: every model.
    pub allow: Option<Vec<String>>,
}

/// Most entries in a tenant's allow list.
const MAX_ALLOWED_MODELS: usize = 256;

#[utoipa::path(put, path = "/admin/v1/tenants/{id}/models", tag = "admin", security(("admin_jwt" = [])),
    request_body = TenantModels,
    responses(
        (status = 200, description = "The tenant, with its allowed models"),
        (status = 400, description = "An unknown model", body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody),
    ))]
pub async fn put_tenant_models(
    state: web::Data<AppState>,
    admin: Admin,
    path: web::Path<String>,
    body: web::Json<TenantModels>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path, "tenant")?;
    let allow = match &body.allow {
        None => None,
        Some(list) => {
            if list.len() > MAX_ALLOWED_MODELS {
                return Err(ApiError::invalid(
                    format!("at most {MAX_ALLOWED_MODELS} models in an allow list"),
                    Some("allow"),
                ));
            }
            let snap = state.registry.get(&state.db).await?;
            let mut names: Vec<String> = Vec::with_capacity(list.len());
            for m in list {
                let model = snap.model(m).ok_or_else(|| {
                    ApiError::invalid(format!("unknown model '{m}'"), Some("allow"))
                })?;
                if !names.contains(&model.name) {
                    names.push(model.name.clone());
                }
            }
            Some(names)
        }
    };
    let t = tenants::set_allowed_models(&state.db, id, allow.as_deref())
        .await?
        .ok_or_else(|| ApiError::not_found("tenant"))?;
    // Keys cache the tenant's allow list: every replica sees the change on
    // the next request.
    refresh_key_cache(&state, id).await?;
    audit(&state, &admin, "tenant.models", id, json!({"allow": allow})).await;
    Ok(HttpResponse::Ok().json(t))
}

#[utoipa::path(delete, path = "/admin/v1/tenants/{id}", tag = "admin", security(("admin_jwt" = [])),
    responses((status = 204, description = "Deleted; its keys are revoked"), (status = 404, body = crate::error::ErrorBody)))]
pub async fn delete_tenant(
    state: web::Data<AppState>,
    admin: Admin,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path, "tenant")?;
    let prefixes = tenants::delete(&state.db, id)
        .await?
        .ok_or_else(|| ApiError::not_found("tenant"))?;
    refresh_key_cache(&state, id).await?;
    audit(
        &state,
        &admin,
        "tenant.delete",
        id,
        json!({"revoked_keys": prefixes.len()}),
    )
    .await;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    pub name: Option<String>,
    /// Endpoint families and `model:<name>` entries; absent means all.
    pub scopes: Option<Vec<String>>,
    pub expires_at: Option<DateTime<Utc>>,
    /// The key's own requests per minute (the tenant's limit applies too).
    pub rpm: Option<i64>,
    /// The key's own tokens per minute (the tenant's limit applies too).
    pub tpm: Option<i64>,
}

fn check_key_limits(l: &KeyLimits) -> Result<(), ApiError> {
    for (name, v) in [("rpm", l.rpm), ("tpm", l.tpm)] {
        if v.is_some_and(|v| v < 0) {
            return Err(ApiError::invalid(
                format!("{name} must not be negative"),
                Some(name),
            ));
        }
    }
    Ok(())
}

/// A new key: the only response that ever carries the secret.
#[derive(Serialize)]
struct CreatedKey {
    #[serde(flatten)]
    key: ApiKey,
    /// The secret, shown once.
    #[serde(rename = "key")]
    secret: String,
}

#[utoipa::path(post, path = "/admin/v1/tenants/{id}/keys", tag = "admin", security(("admin_jwt" = [])), request_body = CreateKey,
    responses((status = 201, description = "Created; `key` is the secret, shown only here"), (status = 404, body = crate::error::ErrorBody)))]
pub async fn create_key(
    state: web::Data<AppState>,
    admin: Admin,
    path: web::Path<String>,
    body: web::Json<CreateKey>,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant_or_404(&state, &path).await?;
    if let Some(s) = &body.scopes {
        let snap = state.registry.get(&state.db).await?;
        validate_scopes(s, &|m| snap.model(m).is_some())?;
    }
    if body.expires_at.is_some_and(|t| t <= Utc::now()) {
        return Err(ApiError::invalid(
            "expires_at must be in the future",
            Some("expires_at"),
        ));
    }
    let limits = KeyLimits {
        rpm: body.rpm,
        tpm: body.tpm,
    };
    check_key_limits(&limits)?;
    if body.name.as_ref().is_some_and(|n| n.len() > 200) {
        return Err(ApiError::invalid(
            "name must be at most 200 characters",
            Some("name"),
        ));
    }
    // A prefix collision is astronomically unlikely; retry once anyway.
    let mut attempt = 0;
    let (created, secret) = loop {
        let new = NewKey::generate();
        let row = NewKeyRow {
            tenant_id: tenant.id,
            name: body.name.as_deref(),
            prefix: &new.prefix,
            secret_hash: &new.hash,
            scopes: body.scopes.as_deref(),
            expires_at: body.expires_at,
            limits,
        };
        match keys::create(&state.db, row).await {
            Ok(k) => break (k, new.secret),
            Err(StoreError::Conflict(_)) if attempt == 0 => attempt += 1,
            Err(e) => return Err(e.into()),
        }
    };
    audit(
        &state,
        &admin,
        "key.create",
        created.id,
        json!({"tenant_id": tenant.id, "prefix": created.prefix, "scopes": created.scopes, "rpm": created.rpm, "tpm": created.tpm}),
    )
    .await;
    Ok(HttpResponse::Created().json(CreatedKey {
        key: created,
        secret,
    }))
}

#[utoipa::path(get, path = "/admin/v1/tenants/{id}/keys", tag = "admin", security(("admin_jwt" = [])),
    responses((status = 200, description = "The tenant's keys, without secrets")))]
pub async fn list_keys(
    state: web::Data<AppState>,
    _admin: Admin,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant_or_404(&state, &path).await?;
    let list = keys::list_for_tenant(&state.db, tenant.id).await?;
    Ok(HttpResponse::Ok().json(json!({"object": "list", "data": list})))
}

#[utoipa::path(delete, path = "/admin/v1/keys/{key_id}", tag = "admin", security(("admin_jwt" = [])),
    responses((status = 200, description = "Revoked; refused on its next request on every replica"), (status = 404, body = crate::error::ErrorBody)))]
pub async fn revoke_key(
    state: web::Data<AppState>,
    admin: Admin,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path, "key")?;
    let key = keys::revoke(&state.db, id)
        .await?
        .ok_or_else(|| ApiError::not_found("key"))?;
    refresh_key_cache(&state, key.tenant_id).await?;
    audit(
        &state,
        &admin,
        "key.revoke",
        id,
        json!({"tenant_id": key.tenant_id, "prefix": key.prefix}),
    )
    .await;
    Ok(HttpResponse::Ok().json(key))
}

#[utoipa::path(patch, path = "/admin/v1/keys/{key_id}", tag = "admin", security(("admin_jwt" = [])), request_body = KeyLimits,
    responses((status = 200, description = "The key with its new limits (both replaced; null: none of its own)"), (status = 404, body = crate::error::ErrorBody)))]
pub async fn set_key_limits(
    state: web::Data<AppState>,
    admin: Admin,
    path: web::Path<String>,
    body: web::Json<KeyLimits>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path, "key")?;
    check_key_limits(&body)?;
    let key = keys::set_limits(&state.db, id, *body)
        .await?
        .ok_or_else(|| ApiError::not_found("key"))?;
    refresh_key_cache(&state, key.tenant_id).await?;
    audit(
        &state,
        &admin,
        "key.limits",
        id,
        json!({"tenant_id": key.tenant_id, "rpm": key.rpm, "tpm": key.tpm}),
    )
    .await;
    Ok(HttpResponse::Ok().json(key))
}

fn check_quota(q: &Quota) -> Result<(), ApiError> {
    let fields = [
        ("rpm", q.rpm),
        ("tpm", q.tpm),
        ("max_concurrent", q.max_concurrent),
        ("max_queued", q.max_queued),
        ("token_budget", q.token_budget),
    ];
    for (name, v) in fields {
        if v.is_some_and(|v| v < 0) {
            return Err(ApiError::invalid(
                format!("{name} must not be negative"),
                Some(name),
            ));
        }
    }
    if let Some(p) = &q.budget_period {
        if !["day", "week", "month"].contains(&p.as_str()) {
            return Err(ApiError::invalid(
                "budget_period must be day, week or month",
                Some("budget_period"),
            ));
        }
    }
    Ok(())
}

#[utoipa::path(put, path = "/admin/v1/tenants/{id}/quota", tag = "admin", security(("admin_jwt" = [])), request_body = Quota,
    responses((status = 200, description = "The quota, replacing the previous one; omitted fields are unlimited")))]
pub async fn put_quota(
    state: web::Data<AppState>,
    admin: Admin,
    path: web::Path<String>,
    body: web::Json<Quota>,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant_or_404(&state, &path).await?;
    check_quota(&body)?;
    let q = quotas::put(&state.db, tenant.id, &body).await?;
    audit(
        &state,
        &admin,
        "quota.put",
        tenant.id,
        serde_json::to_value(&q.quota).unwrap_or_default(),
    )
    .await;
    Ok(HttpResponse::Ok().json(q))
}

#[utoipa::path(get, path = "/admin/v1/tenants/{id}/quota", tag = "admin", security(("admin_jwt" = [])),
    responses((status = 200, description = "The quota (all null: unlimited)")))]
pub async fn get_quota(
    state: web::Data<AppState>,
    _admin: Admin,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant_or_404(&state, &path).await?;
    let q = quotas::get(&state.db, tenant.id).await?;
    Ok(HttpResponse::Ok().json(match q {
        Some(q) => serde_json::to_value(q).unwrap_or_default(),
        None => json!({"tenant_id": tenant.id, "rpm": null, "tpm": null, "max_concurrent": null, "max_queued": null,
                       "token_budget": null, "budget_period": null, "updated_at": null}),
    }))
}

#[utoipa::path(get, path = "/admin/v1/tenants/{id}/batches", tag = "admin", security(("admin_jwt" = [])),
    params(crate::routes::batches::ListQuery),
    responses((status = 200, description = "A page of the tenant's batches, newest first")))]
pub async fn list_tenant_batches(
    state: web::Data<AppState>,
    _admin: Admin,
    path: web::Path<String>,
    query: web::Query<crate::routes::batches::ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant_or_404(&state, &path).await?;
    let limit = query.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::invalid(
            "limit must be between 1 and 100",
            Some("limit"),
        ));
    }
    let mut rows =
        maas_store::batches::list(&state.db, tenant.id, query.after.as_deref(), limit + 1).await?;
    let has_more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let mut data = Vec::with_capacity(rows.len());
    for r in &rows {
        let counts = if r.completed_count.is_some() {
            maas_store::batches::Counts::default()
        } else {
            crate::routes::batches::live_counts(&state, &r.id).await?
        };
        data.push(crate::routes::batches::view(r, counts));
    }
    Ok(HttpResponse::Ok().json(json!({
        "object": "list", "data": data, "has_more": has_more,
        "first_id": rows.first().map(|r| &r.id), "last_id": rows.last().map(|r| &r.id),
    })))
}

#[utoipa::path(post, path = "/admin/v1/tenants/{id}/batches/{batch_id}/cancel", tag = "admin", security(("admin_jwt" = [])),
    responses((status = 200, description = "The batch, cancelling"), (status = 404), (status = 409)))]
pub async fn cancel_tenant_batch(
    state: web::Data<AppState>,
    admin: Admin,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (tenant, batch_id) = path.into_inner();
    let tenant = tenant_or_404(&state, &tenant).await?;
    let row = maas_store::batches::get(&state.db, tenant.id, &batch_id)
        .await?
        .ok_or_else(|| ApiError::not_found("batch"))?;
    let resp = crate::routes::batches::cancel_batch(&state, &row).await?;
    audit(
        &state,
        &admin,
        "batch.cancel",
        tenant.id,
        json!({"batch_id": batch_id}),
    )
    .await;
    Ok(resp)
}

fn file_limits_view(
    state: &AppState,
    tenant: Uuid,
    o: &maas_store::files::FileLimits,
) -> serde_json::Value {
    let s = &state.settings;
    json!({
        "tenant_id": tenant,
        "overrides": o,
        "in_force": {
            "max_file_bytes": o.max_file_bytes.unwrap_or(s.files_max_bytes),
            "max_batch_lines": o.max_batch_lines.unwrap_or(s.batch_max_lines),
            "max_stored_bytes": o.max_stored_bytes.unwrap_or(s.files_max_stored_bytes),
            "max_batch_enqueued_tokens": o.max_batch_enqueued_tokens.unwrap_or(s.batch_max_enqueued_tokens),
        },
    })
}

#[utoipa::path(put, path = "/admin/v1/tenants/{id}/file-limits", tag = "admin", security(("admin_jwt" = [])),
    request_body = maas_store::files::FileLimits,
    responses((status = 200, description = "The tenant's overrides (replacing the previous ones; an omitted field takes the platform's default) and the limits in force")))]
pub async fn put_file_limits(
    state: web::Data<AppState>,
    admin: Admin,
    path: web::Path<String>,
    body: web::Json<maas_store::files::FileLimits>,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant_or_404(&state, &path).await?;
    for (name, v) in [
        ("max_file_bytes", body.max_file_bytes),
        ("max_batch_lines", body.max_batch_lines),
        ("max_stored_bytes", body.max_stored_bytes),
        ("max_batch_enqueued_tokens", body.max_batch_enqueued_tokens),
    ] {
        if v.is_some_and(|v| v <= 0) {
            return Err(ApiError::invalid(
                format!("{name} must be positive"),
                Some(name),
            ));
        }
    }
    let o = maas_store::files::put_limits(&state.db, tenant.id, &body).await?;
    audit(
        &state,
        &admin,
        "file_limits.put",
        tenant.id,
        serde_json::to_value(&o).unwrap_or_default(),
    )
    .await;
    Ok(HttpResponse::Ok().json(file_limits_view(&state, tenant.id, &o)))
}

#[utoipa::path(get, path = "/admin/v1/tenants/{id}/file-limits", tag = "admin", security(("admin_jwt" = [])),
    responses((status = 200, description = "The tenant's overrides and the limits in force")))]
pub async fn get_file_limits(
    state: web::Data<AppState>,
    _admin: Admin,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant_or_404(&state, &path).await?;
    let o = maas_store::files::limits(&state.db, tenant.id).await?;
    Ok(HttpResponse::Ok().json(file_limits_view(&state, tenant.id, &o)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct UsageQuery {
    /// Days back from today (1 to 366, default 30).
    pub days: Option<i64>,
}

#[utoipa::path(get, path = "/admin/v1/tenants/{id}/usage", tag = "admin", security(("admin_jwt" = [])), params(UsageQuery),
    responses((status = 200, description = "Requests, tokens and compute time per day, key and model version")))]
pub async fn get_usage(
    state: web::Data<AppState>,
    _admin: Admin,
    path: web::Path<String>,
    query: web::Query<UsageQuery>,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant_or_404(&state, &path).await?;
    usage_report(&state, tenant.id, query.days).await
}

/// Usage per day, key and model version over the last `days` days (1–366, default 30).
pub async fn usage_report(
    state: &AppState,
    tenant_id: uuid::Uuid,
    days: Option<i64>,
) -> Result<HttpResponse, ApiError> {
    let days = days.unwrap_or(30);
    if !(1..=366).contains(&days) {
        return Err(ApiError::invalid(
            "days must be between 1 and 366",
            Some("days"),
        ));
    }
    let since = (Utc::now() - Duration::days(days - 1)).date_naive();
    let rows = usage::by_day(&state.db, tenant_id, since).await?;
    // The token budget's current period, when the tenant has one.
    let quota = quotas::get(&state.db, tenant_id)
        .await?
        .map(|r| r.quota)
        .unwrap_or_default();
    let budget = match quota.token_budget {
        Some(limit) => {
            let period = Period::parse(quota.budget_period.as_deref()).unwrap_or(Period::Month);
            let s = budget::current(&state.db, tenant_id, period).await?;
            json!({
                "limit": limit, "period": period.as_str(), "period_start": s.period_start,
                "spent": s.spent, "reserved": s.reserved, "remaining": (limit - s.spent - s.reserved).max(0),
            })
        }
        None => serde_json::Value::Null,
    };
    Ok(HttpResponse::Ok()
        .json(json!({"object": "list", "tenant_id": tenant_id, "data": rows, "budget": budget})))
}
