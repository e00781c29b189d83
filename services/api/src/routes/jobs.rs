//! The native jobs API: submit (sync or async), get, list, cancel.

use crate::auth::Principal;
use crate::error::ApiError;
use crate::routes::{parse_id, resource};
use crate::state::AppState;
use crate::submit::{cancel, load_job, submit, Submission, Submitted};
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use maas_core::trace::TraceParent;
use maas_core::Code;
use maas_core::{JobMode, JobStatus, Lane};
use maas_store::jobs::{self, Job};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;
use uuid::Uuid;

pub fn config(cfg: &mut web::ServiceConfig) {
    cfg.service(
        resource("/v1/jobs")
            .route(web::post().to(create_job))
            .route(web::get().to(list_jobs)),
    )
    .service(resource("/v1/jobs/{id}").route(web::get().to(get_job)))
    .service(resource("/v1/jobs/{id}/cancel").route(web::post().to(cancel_job)))
    .service(resource("/v1/queue").route(web::get().to(queue_stats)));
}

/// Body of `POST /v1/jobs`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateJob {
    /// A model of `GET /v1/models`.
    pub model: String,
    /// The model's input; for `echo`: `{"text": string, "delay_ms"?: integer}`.
    #[schema(value_type = Object)]
    pub input: Value,
    /// `sync` waits for the result (up to `timeout_ms`), `async` answers 202 at once.
    pub mode: JobMode,
    /// Scheduling lane; defaults to `interactive` for sync and `batch` for async.
    pub priority: Option<Lane>,
    /// Sync only: how long to wait before answering 202 (default 30000).
    pub timeout_ms: Option<u64>,
}

/// A job as tenants see it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobView {
    pub id: Uuid,
    /// Always `job`.
    pub object: &'static str,
    pub model: String,
    /// The exact version of the model that runs (ran) the job.
    pub model_version: Option<String>,
    pub status: JobStatus,
    pub mode: JobMode,
    pub priority: Lane,
    #[schema(value_type = Option<Object>)]
    pub input: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub output: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub error: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub usage: Option<Value>,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// While queued (on `GET /v1/jobs/{id}`): its place in the queue and when
    /// it should start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<maas_store::queue::Standing>,
}

impl From<&Job> for JobView {
    fn from(j: &Job) -> Self {
        Self {
            id: j.id,
            object: "job",
            model: j.model.clone(),
            model_version: j.model_version.clone(),
            status: j.status,
            mode: j.mode,
            priority: j.lane,
            input: j.input.clone(),
            output: j.output.clone(),
            error: j.error.clone(),
            usage: j.usage.clone(),
            attempts: j.attempts,
            created_at: j.created_at,
            started_at: j.started_at,
            finished_at: j.finished_at,
            queue: None,
        }
    }
}

fn location(job: &Job) -> String {
    format!("/v1/jobs/{}", job.id)
}

pub(crate) fn accepted(job: &Job) -> HttpResponse {
    HttpResponse::Accepted()
        .insert_header((header::LOCATION, location(job)))
        .json(JobView::from(job))
}

pub(crate) fn finished_or_accepted(job: &Job) -> HttpResponse {
    if job.status.is_terminal() {
        HttpResponse::Ok().json(JobView::from(job))
    } else {
        accepted(job)
    }
}

fn idempotency_key(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    let Some(v) = req.headers().get("idempotency-key") else {
        return Ok(None);
    };
    let s = v.to_str().map_err(|_| {
        ApiError::invalid(
            "Idempotency-Key must be visible ASCII",
            Some("Idempotency-Key"),
        )
    })?;
    if s.is_empty() || s.len() > 255 {
        return Err(ApiError::invalid(
            "Idempotency-Key must be 1 to 255 characters",
            Some("Idempotency-Key"),
        ));
    }
    Ok(Some(s.to_owned()))
}

/// The request's own trace context (continuing the caller's): what its job
/// carries to the scheduler and the worker.
pub(crate) fn trace_context(req: &HttpRequest) -> TraceParent {
    crate::observe::context(req).trace
}

#[utoipa::path(post, path = "/v1/jobs", tag = "jobs", security(("api_key" = [])),
    request_body = CreateJob,
    params(("Idempotency-Key" = Option<String>, Header, description = "Same key, same job: the first answer is replayed")),
    responses(
        (status = 200, description = "Sync job finished", body = JobView),
        (status = 202, description = "Async job accepted, or sync job still running after timeout_ms", body = JobView),
        (status = 400, description = "Invalid request", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = crate::error::ErrorBody),
        (status = 404, description = "Unknown model", body = crate::error::ErrorBody),
        (status = 413, description = "Body too large", body = crate::error::ErrorBody),
        (status = 503, description = "Broker unavailable; retry", body = crate::error::ErrorBody),
    ))]
pub async fn create_job(
    state: web::Data<AppState>,
    principal: Principal,
    req: HttpRequest,
    body: web::Json<CreateJob>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let model = super::resolve_model(&state, &principal, &body.model).await?;
    principal.require("jobs", Some(&model.model))?;
    let input = super::parse_input(&model, &body.input)?;
    let timeout_ms = match (body.mode, body.timeout_ms) {
        (JobMode::Async, Some(_)) => {
            return Err(ApiError::invalid(
                "timeout_ms applies to sync jobs only",
                Some("timeout_ms"),
            ));
        }
        (JobMode::Sync, Some(t)) if t == 0 || t > state.settings.max_sync_timeout_ms => {
            return Err(ApiError::invalid(
                format!(
                    "timeout_ms must be between 1 and {}",
                    state.settings.max_sync_timeout_ms
                ),
                Some("timeout_ms"),
            ));
        }
        (_, t) => t.unwrap_or(state.settings.sync_timeout_ms),
    };
    let sub = Submission {
        model: &model,
        input: &input,
        mode: body.mode,
        lane: body.priority.unwrap_or(body.mode.default_lane()),
        idempotency_key: idempotency_key(&req)?,
        traceparent: trace_context(&req).to_string(),
        timeout: Duration::from_millis(timeout_ms),
        stream: false,
    };
    Ok(match submit(&state, &principal, sub).await? {
        // Same Idempotency-Key: replay the first answer from the job as it stands.
        Submitted::Replayed(job) => match Some(job.mode) {
            Some(JobMode::Sync) => finished_or_accepted(&job),
            _ => accepted(&job),
        },
        Submitted::Accepted(job) => accepted(&job),
        Submitted::Waited(job) | Submitted::Streaming { job, .. } => finished_or_accepted(&job),
    })
}

#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs", security(("api_key" = [])),
    params(("id" = String, Path, description = "Job id")),
    responses((status = 200, body = JobView), (status = 404, body = crate::error::ErrorBody)))]
pub async fn get_job(
    state: web::Data<AppState>,
    principal: Principal,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    principal.require("jobs", None)?;
    let id = parse_id(&path, "job")?;
    let job = load_job(&state, id, principal.tenant_id)
        .await?
        .ok_or_else(|| ApiError::not_found("job"))?;
    let mut view = JobView::from(&job);
    if job.status == JobStatus::Queued {
        view.queue = Some(
            maas_store::queue::standing(
                &state.db,
                job.id,
                job.tenant_id,
                &job.model,
                job.model_version.as_deref(),
                job.lane.as_str(),
                job.created_at,
            )
            .await?,
        );
    }
    Ok(HttpResponse::Ok().json(view))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// 1 to 100, default 20.
    pub limit: Option<i64>,
    /// The `last_id` of the previous page.
    pub after: Option<String>,
    /// Only jobs in this state.
    pub status: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct JobList {
    pub object: &'static str,
    pub data: Vec<JobView>,
    pub first_id: Option<Uuid>,
    pub last_id: Option<Uuid>,
    pub has_more: bool,
}

#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", security(("api_key" = [])), params(ListQuery),
    responses((status = 200, body = JobList), (status = 400, body = crate::error::ErrorBody)))]
pub async fn list_jobs(
    state: web::Data<AppState>,
    principal: Principal,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    principal.require("jobs", None)?;
    let limit = query.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::invalid(
            "limit must be between 1 and 100",
            Some("limit"),
        ));
    }
    let after = match &query.after {
        Some(a) => Some(
            Uuid::parse_str(a)
                .map_err(|_| ApiError::invalid("after must be a job id", Some("after")))?,
        ),
        None => None,
    };
    let status =
        match &query.status {
            Some(s) => Some(JobStatus::parse(s).ok_or_else(|| {
                ApiError::invalid(format!("unknown status '{s}'"), Some("status"))
            })?),
            None => None,
        };
    let mut rows =
        jobs::list_for_tenant(&state.db, principal.tenant_id, after, status, limit + 1).await?;
    let has_more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let data: Vec<JobView> = rows.iter().map(JobView::from).collect();
    Ok(HttpResponse::Ok().json(JobList {
        object: "list",
        first_id: data.first().map(|j| j.id),
        last_id: data.last().map(|j| j.id),
        has_more,
        data,
    }))
}

#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", tag = "jobs", security(("api_key" = [])),
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "Cancelled (or already cancelled)", body = JobView),
        (status = 404, body = crate::error::ErrorBody),
        (status = 409, description = "The job already finished", body = crate::error::ErrorBody),
    ))]
pub async fn cancel_job(
    state: web::Data<AppState>,
    principal: Principal,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    principal.require("jobs", None)?;
    let id = parse_id(&path, "job")?;
    match cancel(&state, id, principal.tenant_id).await? {
        Some(Ok(job)) => Ok(HttpResponse::Ok().json(JobView::from(&job))),
        Some(Err(job)) if job.status == JobStatus::Cancelled => {
            Ok(HttpResponse::Ok().json(JobView::from(&job)))
        }
        Some(Err(job)) => Err(ApiError::Conflict {
            message: format!(
                "the job has already finished ({}) and cannot be cancelled",
                job.status
            ),
            code: Code::JobNotCancellable,
        }),
        None => Err(ApiError::not_found("job")),
    }
}

#[utoipa::path(get, path = "/v1/queue", tag = "jobs", security(("api_key" = [])),
    responses((status = 200, description = "The tenant's jobs queued now, and the queue time (creation to dispatch) of its jobs dispatched in the last hour: p50 and p95, overall and per model")))]
pub async fn queue_stats(
    state: web::Data<AppState>,
    principal: Principal,
) -> Result<HttpResponse, ApiError> {
    let times = maas_store::queue::queue_times(&state.db, principal.tenant_id).await?;
    let queued = maas_store::queue::queued_now(&state.db, principal.tenant_id).await?;
    let overall = times.iter().find(|t| t.model.is_none()).cloned();
    let by_model: Vec<_> = times.into_iter().filter(|t| t.model.is_some()).collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "object": "queue_stats",
        "window_secs": 3600,
        "queued_now": queued.iter().map(|(_, n)| n).sum::<i64>(),
        "queued_by_model": queued.into_iter().map(|(m, n)| serde_json::json!({"model": m, "queued": n})).collect::<Vec<_>>(),
        "queue_time": overall,
        "queue_time_by_model": by_model,
    })))
}
