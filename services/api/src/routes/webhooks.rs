//! Webhook endpoints, as OpenAI's `client.webhooks` manages them, for a
//! tenant's own endpoints under `/v1/webhook_endpoints` (scope `webhooks`)
//! and for admins under `/admin/v1/tenants/{id}/webhook_endpoints`; plus the
//! delivery log of each endpoint (an extension). Another tenant's endpoint
//! is a 404 on every route.

use crate::auth::{Admin, Principal};
use crate::error::ApiError;
use crate::routes::resource;
use crate::state::AppState;
use crate::webhooks::{self as hooks, EVENT_TYPES};
use actix_web::{web, HttpResponse};
use chrono::Utc;
use maas_store::webhooks::{self, EndpointRow};
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

pub fn config(cfg: &mut web::ServiceConfig) {
    cfg.service(
        resource("/v1/webhook_endpoints")
            .route(web::post().to(tenant_create))
            .route(web::get().to(tenant_list)),
    )
    .service(
        resource("/v1/webhook_endpoints/{wid}")
            .route(web::get().to(tenant_get))
            .route(web::post().to(tenant_update))
            .route(web::delete().to(tenant_delete)),
    )
    .service(
        resource("/v1/webhook_endpoints/{wid}/rotate_secret").route(web::post().to(tenant_rotate)),
    )
    .service(resource("/v1/webhook_endpoints/{wid}/test").route(web::post().to(tenant_test)))
    .service(
        resource("/v1/webhook_endpoints/{wid}/deliveries").route(web::get().to(tenant_deliveries)),
    )
    // Longer than the admin scope's prefix: registered before it.
    .service(
        web::scope("/admin/v1/tenants/{id}/webhook_endpoints")
            .service(
                resource("")
                    .route(web::post().to(admin_create))
                    .route(web::get().to(admin_list)),
            )
            .service(
                resource("/{wid}")
                    .route(web::get().to(admin_get))
                    .route(web::post().to(admin_update))
                    .route(web::delete().to(admin_delete)),
            )
            .service(resource("/{wid}/rotate_secret").route(web::post().to(admin_rotate)))
            .service(resource("/{wid}/test").route(web::post().to(admin_test)))
            .service(resource("/{wid}/deliveries").route(web::get().to(admin_deliveries))),
    );
}

/// An endpoint as OpenAI's client reads it; the secret only when just made.
fn view(e: &EndpointRow, with_secret: bool) -> Value {
    let mut v = json!({
        "id": e.id,
        "object": "webhook_endpoint",
        "created_at": e.created_at.timestamp(),
        "updated_at": e.updated_at.timestamp(),
        "event_types": e.event_types,
        "name": e.name,
        "url": e.url,
        "signing_secret_hint": hooks::secret_hint(&e.secret),
        "tenant_id": e.tenant_id,
        "previous_secret_active_until": e.previous_secret_until
            .filter(|t| *t > Utc::now())
            .map(|t| t.timestamp()),
    });
    if with_secret {
        v["signing_secret"] = json!(e.secret);
    }
    v
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CreateEndpoint {
    /// A name for people (1 to 200 characters).
    pub name: String,
    /// Where deliveries are POSTed: https, not a private address.
    pub url: String,
    /// Any of `batch.completed`, `batch.failed`, `batch.expired`, `batch.cancelled`.
    pub event_types: Vec<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct UpdateEndpoint {
    pub name: Option<String>,
    pub url: Option<String>,
    /// The complete set of event types (replaces the old one).
    pub event_types: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct RotateSecret {
    /// Keep signing with the old secret as well for 24 hours (default false:
    /// the old secret stops at once).
    #[serde(default)]
    pub keep_old_secret_active_for_24_hours: bool,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct TestEndpoint {
    /// The event type of the sample delivery.
    pub event_type: String,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ListQuery {
    /// The last endpoint id of the previous page.
    pub after: Option<String>,
    /// 1 to 100, default 20.
    pub limit: Option<i64>,
}

fn check_name(name: &str) -> Result<(), ApiError> {
    if name.trim().is_empty() || name.chars().count() > 200 {
        return Err(ApiError::invalid(
            "name must be 1 to 200 characters",
            Some("name"),
        ));
    }
    Ok(())
}

fn check_events(events: &[String]) -> Result<Vec<String>, ApiError> {
    if events.is_empty() {
        return Err(ApiError::invalid(
            format!("event_types must name at least one of {EVENT_TYPES:?}"),
            Some("event_types"),
        ));
    }
    let mut out: Vec<String> = Vec::new();
    for e in events {
        if !EVENT_TYPES.contains(&e.as_str()) {
            return Err(ApiError::invalid(
                format!("unsupported event type '{e}'; expected any of {EVENT_TYPES:?}"),
                Some("event_types"),
            ));
        }
        if !out.contains(e) {
            out.push(e.clone());
        }
    }
    Ok(out)
}

async fn check_url(state: &AppState, url: &str) -> Result<(), ApiError> {
    hooks::check_url(url, state.settings.webhook_allow_private)
        .await
        .map(|_| ())
        .map_err(|m| ApiError::invalid(m, Some("url")))
}

fn endpoint_not_found() -> ApiError {
    ApiError::not_found("webhook endpoint")
}

async fn endpoint(state: &AppState, tenant: Uuid, wid: &str) -> Result<EndpointRow, ApiError> {
    webhooks::get_endpoint(&state.db, tenant, wid)
        .await?
        .ok_or_else(endpoint_not_found)
}

async fn create(state: &AppState, tenant: Uuid, body: CreateEndpoint) -> Result<Value, ApiError> {
    check_name(&body.name)?;
    let events = check_events(&body.event_types)?;
    check_url(state, &body.url).await?;
    let max = state.settings.webhook_max_endpoints;
    let row = webhooks::create_endpoint(
        &state.db,
        tenant,
        body.name.trim(),
        &body.url,
        &events,
        &hooks::new_secret(),
        max,
    )
    .await?
    .ok_or_else(|| {
        ApiError::invalid(
            format!("a tenant may register at most {max} webhook endpoints"),
            None,
        )
    })?;
    tracing::info!(tenant_id = %tenant, endpoint = %row.id, "webhook endpoint created");
    Ok(view(&row, true))
}

async fn list(state: &AppState, tenant: Uuid, q: &ListQuery) -> Result<Value, ApiError> {
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::invalid(
            "limit must be between 1 and 100",
            Some("limit"),
        ));
    }
    let mut rows =
        webhooks::list_endpoints(&state.db, tenant, q.after.as_deref(), limit + 1).await?;
    let has_more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    Ok(json!({
        "object": "list",
        "data": rows.iter().map(|r| view(r, false)).collect::<Vec<_>>(),
        "first_id": rows.first().map(|r| &r.id),
        "last_id": rows.last().map(|r| &r.id),
        "has_more": has_more,
    }))
}

async fn update(
    state: &AppState,
    tenant: Uuid,
    wid: &str,
    body: UpdateEndpoint,
) -> Result<Value, ApiError> {
    if let Some(n) = &body.name {
        check_name(n)?;
    }
    let events = body.event_types.as_deref().map(check_events).transpose()?;
    if let Some(u) = &body.url {
        check_url(state, u).await?;
    }
    let row = webhooks::update_endpoint(
        &state.db,
        tenant,
        wid,
        body.name.as_deref().map(str::trim),
        body.url.as_deref(),
        events.as_deref(),
    )
    .await?
    .ok_or_else(endpoint_not_found)?;
    Ok(view(&row, false))
}

async fn delete(state: &AppState, tenant: Uuid, wid: &str) -> Result<Value, ApiError> {
    if !webhooks::delete_endpoint(&state.db, tenant, wid).await? {
        return Err(endpoint_not_found());
    }
    Ok(json!({"id": wid, "object": "webhook_endpoint.deleted", "deleted": true}))
}

async fn rotate(
    state: &AppState,
    tenant: Uuid,
    wid: &str,
    body: RotateSecret,
) -> Result<Value, ApiError> {
    let keep = body
        .keep_old_secret_active_for_24_hours
        .then(|| Utc::now() + chrono::Duration::hours(24));
    let row = webhooks::rotate_secret(&state.db, tenant, wid, &hooks::new_secret(), keep)
        .await?
        .ok_or_else(endpoint_not_found)?;
    tracing::info!(tenant_id = %tenant, endpoint = %wid, kept_old = keep.is_some(), "webhook secret rotated");
    Ok(view(&row, true))
}

/// Sends a sample event of `event_type` now, signed as a real one, and
/// reports what the endpoint answered (not retried, not in the log).
async fn test(
    state: &AppState,
    tenant: Uuid,
    wid: &str,
    body: TestEndpoint,
) -> Result<Value, ApiError> {
    if !EVENT_TYPES.contains(&body.event_type.as_str()) {
        return Err(ApiError::invalid(
            format!(
                "unsupported event type '{}'; expected one of {EVENT_TYPES:?}",
                body.event_type
            ),
            Some("event_type"),
        ));
    }
    let e = endpoint(state, tenant, wid).await?;
    let s = &state.settings;
    let payload = json!({
        "id": webhooks::new_event_id(),
        "object": "event",
        "created_at": Utc::now().timestamp(),
        "type": body.event_type,
        "data": {"id": "batch_test"},
    })
    .to_string();
    let mut secrets = vec![e.secret.as_str()];
    if let Some(p) = e
        .previous_secret
        .as_deref()
        .filter(|_| e.previous_secret_until.is_some_and(|t| t > Utc::now()))
    {
        secrets.push(p);
    }
    let http = hooks::client(
        s.webhook_allow_private,
        std::time::Duration::from_secs(s.webhook_timeout_secs.max(1)),
    );
    let id = format!("wh_{}", Uuid::new_v4().simple());
    let sent = hooks::send(
        &http,
        s.webhook_allow_private,
        &e.url,
        &id,
        &secrets,
        &payload,
    )
    .await;
    Ok(json!({
        "object": "webhook_endpoint.test",
        "event_type": body.event_type,
        "webhook_endpoint_id": e.id,
        "success": true,
        "status_code": sent.status.unwrap_or(0),
        "error": sent.error,
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct DeliveriesQuery {
    /// 1 to 100, default 20.
    pub limit: Option<i64>,
}

async fn deliveries(
    state: &AppState,
    tenant: Uuid,
    wid: &str,
    q: &DeliveriesQuery,
) -> Result<Value, ApiError> {
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::invalid(
            "limit must be between 1 and 100",
            Some("limit"),
        ));
    }
    endpoint(state, tenant, wid).await?;
    let rows: Vec<webhooks::DeliveryView> = webhooks::deliveries(&state.db, wid, limit).await?;
    Ok(json!({"object": "list", "data": rows}))
}

// ---- tenant routes ----

fn ok(v: Value) -> HttpResponse {
    HttpResponse::Ok().json(v)
}

#[utoipa::path(post, path = "/v1/webhook_endpoints", tag = "webhooks", security(("api_key" = [])), request_body = CreateEndpoint,
    responses((status = 200, description = "The endpoint, with its signing secret (shown only now)"), (status = 400, description = "Bad name, url or event types, or too many endpoints")))]
pub async fn tenant_create(
    state: web::Data<AppState>,
    p: Principal,
    body: web::Json<CreateEndpoint>,
) -> Result<HttpResponse, ApiError> {
    p.require("webhooks", None)?;
    Ok(ok(create(&state, p.tenant_id, body.into_inner()).await?))
}

#[utoipa::path(get, path = "/v1/webhook_endpoints", tag = "webhooks", security(("api_key" = [])), params(ListQuery),
    responses((status = 200, description = "A page of the tenant's endpoints, newest first")))]
pub async fn tenant_list(
    state: web::Data<AppState>,
    p: Principal,
    q: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    p.require("webhooks", None)?;
    Ok(ok(list(&state, p.tenant_id, &q).await?))
}

#[utoipa::path(get, path = "/v1/webhook_endpoints/{id}", tag = "webhooks", security(("api_key" = [])),
    responses((status = 200, description = "The endpoint"), (status = 404, description = "No such endpoint of this tenant")))]
pub async fn tenant_get(
    state: web::Data<AppState>,
    p: Principal,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    p.require("webhooks", None)?;
    Ok(ok(view(
        &endpoint(&state, p.tenant_id, &path).await?,
        false,
    )))
}

#[utoipa::path(post, path = "/v1/webhook_endpoints/{id}", tag = "webhooks", security(("api_key" = [])), request_body = UpdateEndpoint,
    responses((status = 200, description = "The endpoint as changed")))]
pub async fn tenant_update(
    state: web::Data<AppState>,
    p: Principal,
    path: web::Path<String>,
    body: web::Json<UpdateEndpoint>,
) -> Result<HttpResponse, ApiError> {
    p.require("webhooks", None)?;
    Ok(ok(
        update(&state, p.tenant_id, &path, body.into_inner()).await?
    ))
}

#[utoipa::path(delete, path = "/v1/webhook_endpoints/{id}", tag = "webhooks", security(("api_key" = [])),
    responses((status = 200, description = "Deleted, with its pending deliveries and log")))]
pub async fn tenant_delete(
    state: web::Data<AppState>,
    p: Principal,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    p.require("webhooks", None)?;
    Ok(ok(delete(&state, p.tenant_id, &path).await?))
}

#[utoipa::path(post, path = "/v1/webhook_endpoints/{id}/rotate_secret", tag = "webhooks", security(("api_key" = [])), request_body = RotateSecret,
    responses((status = 200, description = "The endpoint with its new signing secret")))]
pub async fn tenant_rotate(
    state: web::Data<AppState>,
    p: Principal,
    path: web::Path<String>,
    body: Option<web::Json<RotateSecret>>,
) -> Result<HttpResponse, ApiError> {
    p.require("webhooks", None)?;
    let body = body.map(web::Json::into_inner).unwrap_or_default();
    Ok(ok(rotate(&state, p.tenant_id, &path, body).await?))
}

#[utoipa::path(post, path = "/v1/webhook_endpoints/{id}/test", tag = "webhooks", security(("api_key" = [])), request_body = TestEndpoint,
    responses((status = 200, description = "What the endpoint answered a signed sample event")))]
pub async fn tenant_test(
    state: web::Data<AppState>,
    p: Principal,
    path: web::Path<String>,
    body: web::Json<TestEndpoint>,
) -> Result<HttpResponse, ApiError> {
    p.require("webhooks", None)?;
    Ok(ok(
        test(&state, p.tenant_id, &path, body.into_inner()).await?
    ))
}

#[utoipa::path(get, path = "/v1/webhook_endpoints/{id}/deliveries", tag = "webhooks", security(("api_key" = [])), params(DeliveriesQuery),
    responses((status = 200, description = "The endpoint's deliveries, newest first, each with its attempts")))]
pub async fn tenant_deliveries(
    state: web::Data<AppState>,
    p: Principal,
    path: web::Path<String>,
    q: web::Query<DeliveriesQuery>,
) -> Result<HttpResponse, ApiError> {
    p.require("webhooks", None)?;
    Ok(ok(deliveries(&state, p.tenant_id, &path, &q).await?))
}

// ---- admin routes ----

async fn tenant_of(state: &AppState, raw: &str) -> Result<Uuid, ApiError> {
    Ok(crate::routes::admin::tenant_or_404(state, raw).await?.id)
}

async fn audit(state: &AppState, admin: &Admin, action: &str, tenant: Uuid, endpoint: &Value) {
    crate::routes::admin::audit(
        state,
        admin,
        action,
        tenant,
        json!({"endpoint_id": endpoint["id"], "url": endpoint["url"], "event_types": endpoint["event_types"]}),
    )
    .await;
}

#[utoipa::path(post, path = "/admin/v1/tenants/{id}/webhook_endpoints", tag = "admin", security(("admin_jwt" = [])), request_body = CreateEndpoint,
    responses((status = 200, description = "The tenant's new endpoint, with its signing secret (shown only now)")))]
pub async fn admin_create(
    state: web::Data<AppState>,
    admin: Admin,
    path: web::Path<String>,
    body: web::Json<CreateEndpoint>,
) -> Result<HttpResponse, ApiError> {
    let t = tenant_of(&state, &path).await?;
    let v = create(&state, t, body.into_inner()).await?;
    audit(&state, &admin, "webhook_endpoint.create", t, &v).await;
    Ok(ok(v))
}

#[utoipa::path(get, path = "/admin/v1/tenants/{id}/webhook_endpoints", tag = "admin", security(("admin_jwt" = [])), params(ListQuery),
    responses((status = 200, description = "A page of the tenant's endpoints")))]
pub async fn admin_list(
    state: web::Data<AppState>,
    _admin: Admin,
    path: web::Path<String>,
    q: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let t = tenant_of(&state, &path).await?;
    Ok(ok(list(&state, t, &q).await?))
}

#[utoipa::path(get, path = "/admin/v1/tenants/{id}/webhook_endpoints/{wid}", tag = "admin", security(("admin_jwt" = [])),
    responses((status = 200, description = "The endpoint")))]
pub async fn admin_get(
    state: web::Data<AppState>,
    _admin: Admin,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (t, wid) = path.into_inner();
    let t = tenant_of(&state, &t).await?;
    Ok(ok(view(&endpoint(&state, t, &wid).await?, false)))
}

#[utoipa::path(post, path = "/admin/v1/tenants/{id}/webhook_endpoints/{wid}", tag = "admin", security(("admin_jwt" = [])), request_body = UpdateEndpoint,
    responses((status = 200, description = "The endpoint as changed")))]
pub async fn admin_update(
    state: web::Data<AppState>,
    admin: Admin,
    path: web::Path<(String, String)>,
    body: web::Json<UpdateEndpoint>,
) -> Result<HttpResponse, ApiError> {
    let (t, wid) = path.into_inner();
    let t = tenant_of(&state, &t).await?;
    let v = update(&state, t, &wid, body.into_inner()).await?;
    audit(&state, &admin, "webhook_endpoint.update", t, &v).await;
    Ok(ok(v))
}

#[utoipa::path(delete, path = "/admin/v1/tenants/{id}/webhook_endpoints/{wid}", tag = "admin", security(("admin_jwt" = [])),
    responses((status = 200, description = "Deleted")))]
pub async fn admin_delete(
    state: web::Data<AppState>,
    admin: Admin,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (t, wid) = path.into_inner();
    let t = tenant_of(&state, &t).await?;
    let v = delete(&state, t, &wid).await?;
    audit(&state, &admin, "webhook_endpoint.delete", t, &v).await;
    Ok(ok(v))
}

#[utoipa::path(post, path = "/admin/v1/tenants/{id}/webhook_endpoints/{wid}/rotate_secret", tag = "admin", security(("admin_jwt" = [])), request_body = RotateSecret,
    responses((status = 200, description = "The endpoint with its new signing secret")))]
pub async fn admin_rotate(
    state: web::Data<AppState>,
    admin: Admin,
    path: web::Path<(String, String)>,
    body: Option<web::Json<RotateSecret>>,
) -> Result<HttpResponse, ApiError> {
    let (t, wid) = path.into_inner();
    let t = tenant_of(&state, &t).await?;
    let body = body.map(web::Json::into_inner).unwrap_or_default();
    let v = rotate(&state, t, &wid, body).await?;
    audit(&state, &admin, "webhook_endpoint.rotate_secret", t, &v).await;
    Ok(ok(v))
}

#[utoipa::path(post, path = "/admin/v1/tenants/{id}/webhook_endpoints/{wid}/test", tag = "admin", security(("admin_jwt" = [])), request_body = TestEndpoint,
    responses((status = 200, description = "What the endpoint answered a signed sample event")))]
pub async fn admin_test(
    state: web::Data<AppState>,
    _admin: Admin,
    path: web::Path<(String, String)>,
    body: web::Json<TestEndpoint>,
) -> Result<HttpResponse, ApiError> {
    let (t, wid) = path.into_inner();
    let t = tenant_of(&state, &t).await?;
    Ok(ok(test(&state, t, &wid, body.into_inner()).await?))
}

#[utoipa::path(get, path = "/admin/v1/tenants/{id}/webhook_endpoints/{wid}/deliveries", tag = "admin", security(("admin_jwt" = [])), params(DeliveriesQuery),
    responses((status = 200, description = "The endpoint's deliveries, newest first, each with its attempts")))]
pub async fn admin_deliveries(
    state: web::Data<AppState>,
    _admin: Admin,
    path: web::Path<(String, String)>,
    q: web::Query<DeliveriesQuery>,
) -> Result<HttpResponse, ApiError> {
    let (t, wid) = path.into_inner();
    let t = tenant_of(&state, &t).await?;
    Ok(ok(deliveries(&state, t, &wid, &q).await?))
}
