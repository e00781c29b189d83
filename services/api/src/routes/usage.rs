//! `GET /v1/usage`: the calling tenant's own usage per day, key and model version
//! (requests, prompt and completion tokens, compute time), from the usage
//! record every finished job leaves.

use crate::auth::Principal;
use crate::error::ApiError;
use crate::routes::admin::{usage_report, UsageQuery};
use crate::state::AppState;
use actix_web::{web, HttpResponse};

pub fn config(cfg: &mut web::ServiceConfig) {
    cfg.service(super::resource("/v1/usage").route(web::get().to(tenant_usage)));
}

#[utoipa::path(get, path = "/v1/usage", tag = "usage", security(("api_key" = [])), params(UsageQuery),
    responses((status = 200, description = "Requests, tokens and compute time per day, key and model version"), (status = 400, body = crate::error::ErrorBody)))]
pub async fn tenant_usage(
    state: web::Data<AppState>,
    principal: Principal,
    query: web::Query<UsageQuery>,
) -> Result<HttpResponse, ApiError> {
    usage_report(&state, principal.tenant_id, query.days).await
}
