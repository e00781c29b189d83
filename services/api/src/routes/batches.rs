//! The Batches API, as OpenAI's: create (validating the input file at
//! once, line by line), get, list, cancel; plus the finished lines of a
//! batch that is still running (an extension). Each line runs as a job of
//! the batch's tenant in the batch lane; a finalizer on every API replica
//! writes the output and error files when the last line has ended.

use crate::auth::Principal;
use crate::error::ApiError;
use crate::observe::{
    BATCH_DEADLINE_MISSES, BATCH_FIRST_LINE, BATCH_LINES_EXPIRED, BATCH_LINES_QUEUED,
};
use crate::routes::resource;
use crate::state::AppState;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use maas_core::messages::BatchSubmitted;
use maas_core::metrics::tenant_label;
use maas_core::Code;
use maas_mq::PublishOpts;
use maas_store::batches::{self, BatchRow, NewBatch, NewLine, Run};
use maas_store::files::NewFile;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::Digest;
use std::collections::{HashMap, HashSet};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

pub fn config(cfg: &mut web::ServiceConfig) {
    cfg.service(
        resource("/v1/batches")
            .route(web::post().to(create))
            .route(web::get().to(list)),
    )
    .service(resource("/v1/batches/{id}").route(web::get().to(get)))
    .service(resource("/v1/batches/{id}/cancel").route(web::post().to(cancel)))
    .service(resource("/v1/batches/{id}/output").route(web::get().to(partial_output)));
}

/// The endpoints a batch may target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Embeddings,
    ChatCompletions,
    Completions,
}

impl Endpoint {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "/v1/embeddings" => Some(Self::Embeddings),
            "/v1/chat/completions" => Some(Self::ChatCompletions),
            "/v1/completions" => Some(Self::Completions),
            _ => None,
        }
    }

    /// The key scope family of the endpoint.
    fn family(self) -> &'static str {
        match self {
            Self::Embeddings => "embeddings",
            Self::ChatCompletions => "chat",
            Self::Completions => "completions",
        }
    }

    /// A line's body, checked as the endpoint checks a request: its input,
    /// its response options, its token bound.
    fn prepare(
        self,
        model: &maas_store::registry::Resolved,
        body: &Value,
    ) -> Result<(Value, Value, i64), ApiError> {
        let invalid =
            |e: serde_json::Error| ApiError::invalid(format!("invalid body: {e}"), Some("body"));
        let (input, opts) = match self {
            Self::Embeddings => {
                let req: super::embeddings::EmbeddingsRequest =
                    serde_json::from_value(body.clone()).map_err(invalid)?;
                let (input, base64) = super::embeddings::prepare(model, &req)?;
                (input, json!({"base64": base64}))
            }
            Self::ChatCompletions | Self::Completions => {
                let req: super::chat::GenerationRequest =
                    serde_json::from_value(body.clone()).map_err(invalid)?;
                if req.stream == Some(true) {
                    return Err(ApiError::invalid(
                        "stream: true is not allowed in a batch",
                        Some("body.stream"),
                    ));
                }
                let chat = super::chat::prepare(model, req, self == Self::ChatCompletions)?;
                (maas_core::models::JobInput::Chat(chat), json!({}))
            }
        };
        let tokens = input.token_bound();
        Ok((input.to_value(), opts, tokens))
    }

    /// The response body a line's finished job would have had as a request.
    fn body(self, line: &batches::LineResult, model: &str) -> Value {
        let out = line.output.clone().unwrap_or_default();
        match self {
            Self::Embeddings => {
                let base64 = line
                    .batch_opts
                    .as_ref()
                    .and_then(|o| o["base64"].as_bool())
                    .unwrap_or(false);
                super::embeddings::response_body(&out, model, base64)
            }
            Self::ChatCompletions => {
                super::chat::chat_body_of(line.id, line.created_at.timestamp(), &out, model)
            }
            Self::Completions => {
                super::chat::completion_body_of(line.id, line.created_at.timestamp(), &out, model)
            }
        }
    }
}

/// Body of `POST /v1/batches`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBatch {
    /// A file of purpose `batch` of this tenant.
    pub input_file_id: String,
    /// `/v1/embeddings`, `/v1/chat/completions` or `/v1/completions`.
    pub endpoint: String,
    /// `24h`, or `1h`.
    pub completion_window: String,
    /// Up to 16 string pairs (keys up to 64 characters, values up to 512).
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// `{anchor: "created_at", seconds}`: when the output and error files expire.
    #[schema(value_type = Option<Object>)]
    pub output_expires_after: Option<Value>,
}

/// A batch as OpenAI's client reads it.
pub fn view(b: &BatchRow, counts: batches::Counts) -> Value {
    let ts = |t: Option<chrono::DateTime<chrono::Utc>>| t.map(|t| t.timestamp());
    let (completed, failed) = match (b.completed_count, b.failed_count) {
        (Some(c), Some(f)) => (i64::from(c), i64::from(f)),
        _ => (counts.completed, counts.failed),
    };
    json!({
        "id": b.id,
        "object": "batch",
        "endpoint": b.endpoint,
        "model": b.model,
        "errors": b.errors,
        "input_file_id": b.input_file_id,
        "completion_window": b.completion_window,
        "status": b.status,
        "output_file_id": b.output_file_id,
        "error_file_id": b.error_file_id,
        "created_at": b.created_at.timestamp(),
        "in_progress_at": ts(b.in_progress_at),
        "expires_at": ts(b.expires_at),
        "finalizing_at": ts(b.finalizing_at),
        "completed_at": ts(b.completed_at),
        "failed_at": ts(b.failed_at),
        "expired_at": ts(b.expired_at),
        "cancelling_at": ts(b.cancelling_at),
        "cancelled_at": ts(b.cancelled_at),
        "request_counts": {"total": b.total, "completed": completed, "failed": failed},
        "usage": b.usage.clone().unwrap_or_else(|| usage_json(0, 0)),
        "metadata": b.metadata,
    })
}

fn usage_json(input: i64, output: i64) -> Value {
    json!({
        "input_tokens": input,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input + output,
    })
}

/// A batch this large refreshes the planner's statistics of `jobs`
/// ([`batches::refresh_job_stats`]), at most every [`STATS_EVERY`] per replica.
const STATS_AFTER_LINES: usize = 1000;
const STATS_EVERY: Duration = Duration::from_secs(10);
static STATS_AT: LazyLock<Mutex<Option<Instant>>> = LazyLock::new(Mutex::default);

fn refresh_stats_soon(state: &AppState) {
    let Ok(mut at) = STATS_AT.lock() else { return };
    if at.is_some_and(|t| t.elapsed() < STATS_EVERY) {
        return;
    }
    *at = Some(Instant::now());
    let db = state.db.clone();
    tokio::spawn(async move {
        if let Err(e) = batches::refresh_job_stats(&db).await {
            tracing::warn!(error = %e, "could not analyze the jobs table");
        }
    });
}

/// Each open batch's line counts as last read by this replica, kept for
/// [`COUNTS_FRESH`]: however often clients poll a batch, its lines are
/// counted at most once a second per replica (the finalizer's own count each
/// tick refreshes it too).
static COUNTS: LazyLock<Mutex<HashMap<String, (Instant, batches::Counts)>>> =
    LazyLock::new(Mutex::default);
const COUNTS_FRESH: Duration = Duration::from_secs(1);

fn remember_counts(id: &str, c: batches::Counts) {
    if let Ok(mut m) = COUNTS.lock() {
        if m.len() > 10_000 {
            m.retain(|_, (at, _)| at.elapsed() < COUNTS_FRESH);
        }
        m.insert(id.to_owned(), (Instant::now(), c));
    }
}

/// An open batch's line counts, at most [`COUNTS_FRESH`] old.
pub async fn live_counts(state: &AppState, id: &str) -> Result<batches::Counts, ApiError> {
    let known = COUNTS.lock().ok().and_then(|m| {
        m.get(id)
            .filter(|(at, _)| at.elapsed() < COUNTS_FRESH)
            .map(|(_, c)| *c)
    });
    if let Some(c) = known {
        return Ok(c);
    }
    let c = batches::counts(&state.db, id).await?;
    remember_counts(id, c);
    Ok(c)
}

async fn respond(state: &AppState, b: &BatchRow) -> Result<HttpResponse, ApiError> {
    let counts = if b.completed_count.is_some() {
        batches::Counts::default()
    } else {
        live_counts(state, &b.id).await?
    };
    Ok(HttpResponse::Ok().json(view(b, counts)))
}

fn batch_not_found(id: &str) -> ApiError {
    ApiError::NotFound {
        message: format!("no such batch: '{id}'"),
        code: Code::NotFound,
    }
}

async fn tenant_batch(
    state: &AppState,
    tenant: uuid::Uuid,
    id: &str,
) -> Result<BatchRow, ApiError> {
    if !id.starts_with("batch_") || id.len() > 64 {
        return Err(batch_not_found(id));
    }
    batches::get(&state.db, tenant, id)
        .await?
        .ok_or_else(|| batch_not_found(id))
}

fn check_metadata(m: &Option<Value>) -> Result<(), ApiError> {
    let Some(m) = m else { return Ok(()) };
    if m.is_null() {
        return Ok(());
    }
    let bad = |msg: &str| ApiError::invalid(msg, Some("metadata"));
    let obj = m
        .as_object()
        .ok_or_else(|| bad("metadata must be an object of strings"))?;
    if obj.len() > 16 {
        return Err(bad("metadata holds at most 16 pairs"));
    }
    for (k, v) in obj {
        let v = v
            .as_str()
            .ok_or_else(|| bad("metadata values must be strings"))?;
        if k.chars().count() > 64 || v.chars().count() > 512 {
            return Err(bad(
                "metadata keys are at most 64 characters and values at most 512",
            ));
        }
    }
    Ok(())
}

fn output_expiry(v: &Option<Value>) -> Result<Option<i64>, ApiError> {
    let Some(v) = v.as_ref().filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let bad = |msg: &str| ApiError::invalid(msg, Some("output_expires_after"));
    if v["anchor"] != "created_at" {
        return Err(bad("output_expires_after.anchor must be 'created_at'"));
    }
    match v["seconds"].as_i64() {
        Some(s) if (3600..=30 * 24 * 3600).contains(&s) => Ok(Some(s)),
        _ => Err(bad(
            "output_expires_after.seconds must be between 3600 and 2592000",
        )),
    }
}

/// One line error, OpenAI's way (lines count from 1).
fn line_error(code: &str, line: usize, message: impl Into<String>, param: Option<&str>) -> Value {
    json!({"code": code, "line": line, "message": message.into(), "param": param})
}

/// Most line errors a failed batch reports.
const MAX_ERRORS: usize = 100;

/// What reading the input file found.
enum Parsed {
    Lines(Vec<NewLine>, maas_store::registry::Resolved),
    Failed(Vec<Value>),
}

/// Reads and checks every line of the input file.
async fn parse_file(
    state: &AppState,
    principal: &Principal,
    file: &maas_store::files::FileRow,
    endpoint: Endpoint,
    endpoint_url: &str,
    max_lines: i64,
) -> Result<Parsed, ApiError> {
    let mut content = state.files.open(file).await?;
    let mut errors = Vec::new();
    let mut lines = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    let mut model: Option<(String, Result<maas_store::registry::Resolved, ApiError>)> = None;
    let mut pending: Vec<u8> = Vec::new();
    let mut number = 0usize;
    let mut count = 0i64;
    let push_err = |errors: &mut Vec<Value>, e: Value| {
        if errors.len() < MAX_ERRORS {
            errors.push(e);
        }
    };
    let mut done = false;
    while !done {
        let chunk = match content.next().await {
            Some(c) => Some(c?),
            None => None,
        };
        match &chunk {
            Some(c) => pending.extend_from_slice(c),
            None => done = true,
        }
        // Every complete line in `pending` (the last one even without "\n").
        let mut start = 0;
        loop {
            let end = match pending[start..].iter().position(|&b| b == b'\n') {
                Some(i) => start + i,
                None if done && start < pending.len() => pending.len(),
                None => break,
            };
            number += 1;
            let raw = &pending[start..end];
            start = (end + 1).min(pending.len());
            let text = std::str::from_utf8(raw).map_err(|_| {
                ApiError::invalid(
                    format!("the input file is not JSONL: line {number} is not UTF-8 text"),
                    Some("input_file_id"),
                )
            })?;
            let text = text.trim();
            if text.is_empty() {
                continue;
            }
            count += 1;
            if count > max_lines {
                push_err(
                    &mut errors,
                    line_error(
                        "too_many_tasks",
                        number,
                        format!("a batch holds at most {max_lines} requests"),
                        None,
                    ),
                );
                done = true;
                break;
            }
            let v: Value = match serde_json::from_str(text) {
                Ok(v) => v,
                Err(e) => {
                    push_err(
                        &mut errors,
                        line_error(
                            "invalid_json_line",
                            number,
                            format!("this line is not valid JSON: {e}"),
                            None,
                        ),
                    );
                    continue;
                }
            };
            let Some(custom_id) = v["custom_id"]
                .as_str()
                .filter(|c| !c.is_empty() && c.len() <= 512)
            else {
                push_err(
                    &mut errors,
                    line_error(
                        "missing_required_parameter",
                        number,
                        "custom_id must be a non-empty string (at most 512 bytes)",
                        Some("custom_id"),
                    ),
                );
                continue;
            };
            if !seen.insert(custom_id.to_owned()) {
                push_err(
                    &mut errors,
                    line_error(
                        "duplicate_custom_id",
                        number,
                        format!("the custom_id '{custom_id}' is used by an earlier line"),
                        Some("custom_id"),
                    ),
                );
                continue;
            }
            if v.get("method")
                .and_then(Value::as_str)
                .is_some_and(|m| m != "POST")
            {
                push_err(
                    &mut errors,
                    line_error(
                        "invalid_request",
                        number,
                        "method must be POST",
                        Some("method"),
                    ),
                );
                continue;
            }
            if v["url"].as_str() != Some(endpoint_url) {
                push_err(
                    &mut errors,
                    line_error(
                        "url_mismatch",
                        number,
                        format!("this line's url must be the batch's endpoint, {endpoint_url}"),
                        Some("url"),
                    ),
                );
                continue;
            }
            let body = &v["body"];
            let Some(name) = body["model"].as_str() else {
                push_err(
                    &mut errors,
                    line_error(
                        "missing_required_parameter",
                        number,
                        "body.model is required",
                        Some("body.model"),
                    ),
                );
                continue;
            };
            let resolved = match &model {
                None => {
                    let r = match super::resolve_model(state, principal, name).await {
                        Ok(r) => principal
                            .require(endpoint.family(), Some(&r.model))
                            .map(|_| r),
                        Err(e) => Err(e),
                    };
                    model = Some((name.to_owned(), r));
                    model.as_ref().map(|(_, r)| r)
                }
                Some((first, _)) if first != name => {
                    push_err(
                        &mut errors,
                        line_error(
                            "model_mismatch",
                            number,
                            format!("every line of a batch must use one model; an earlier line uses '{first}'"),
                            Some("body.model"),
                        ),
                    );
                    continue;
                }
                Some((_, r)) => Some(r),
            };
            let resolved = match resolved {
                Some(Ok(r)) => r,
                Some(Err(e)) => {
                    let (code, message) = error_parts(e);
                    push_err(
                        &mut errors,
                        line_error(&code, number, message, Some("body.model")),
                    );
                    continue;
                }
                None => continue,
            };
            match endpoint.prepare(resolved, body) {
                Ok((input, opts, tokens)) => lines.push(NewLine {
                    line: number as i32,
                    custom_id: custom_id.to_owned(),
                    input,
                    opts,
                    tokens,
                }),
                Err(e) => {
                    let param = match &e {
                        ApiError::InvalidRequest { param: Some(p), .. } => {
                            Some(format!("body.{p}"))
                        }
                        _ => Some("body".into()),
                    };
                    let (code, message) = error_parts(&e);
                    push_err(
                        &mut errors,
                        line_error(&code, number, message, param.as_deref()),
                    );
                }
            }
        }
        pending.drain(..start.min(pending.len()));
    }
    if count == 0 && errors.is_empty() {
        errors.push(json!({"code": "empty_file", "line": null, "message": "the input file has no requests", "param": null}));
    }
    if !errors.is_empty() {
        return Ok(Parsed::Failed(errors));
    }
    match model {
        Some((_, Ok(m))) => Ok(Parsed::Lines(lines, m)),
        _ => Ok(Parsed::Failed(vec![
            json!({"code": "empty_file", "line": null, "message": "the input file has no requests", "param": null}),
        ])),
    }
}

/// An error's code and message as a line error carries them.
fn error_parts(e: &ApiError) -> (String, String) {
    let message = e.to_string();
    let code = match e {
        ApiError::InvalidRequest { code, .. }
        | ApiError::NotFound { code, .. }
        | ApiError::Forbidden { code, .. }
        | ApiError::Conflict { code, .. } => code.as_str().to_owned(),
        ApiError::ModelUnavailable { .. } => Code::ModelUnavailable.as_str().to_owned(),
        _ => Code::InvalidRequest.as_str().to_owned(),
    };
    // The message without its "400 code: " prefix.
    let message = message
        .split_once(": ")
        .map(|(_, m)| m.to_owned())
        .unwrap_or(message);
    (code, message)
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

/// How long an identical create (same key and body, no Idempotency-Key)
/// is answered with the first batch: a client's retry of a create whose
/// answer it lost.
const DEDUPE_SECS: i64 = 600;

#[utoipa::path(post, path = "/v1/batches", tag = "batches", security(("api_key" = [])), request_body = CreateBatch,
    params(("Idempotency-Key" = Option<String>, Header, description = "Same key, same batch")),
    responses(
        (status = 200, description = "The batch: in_progress, or failed with line errors"),
        (status = 400, body = crate::error::ErrorBody),
        (status = 429, description = "The batch cannot fit the tenant's enqueued tokens or token budget", body = crate::error::ErrorBody),
    ))]
pub async fn create(
    state: web::Data<AppState>,
    principal: Principal,
    req: HttpRequest,
    body: web::Json<CreateBatch>,
) -> Result<HttpResponse, ApiError> {
    principal.require("batches", None)?;
    let body = body.into_inner();
    let endpoint = Endpoint::parse(&body.endpoint).ok_or_else(|| {
        ApiError::invalid(
            format!(
                "endpoint must be /v1/embeddings, /v1/chat/completions or /v1/completions; got '{}'",
                body.endpoint
            ),
            Some("endpoint"),
        )
    })?;
    let window_secs = match body.completion_window.as_str() {
        "24h" => 24 * 3600,
        "1h" => 3600,
        other => {
            return Err(ApiError::invalid(
                format!("completion_window must be '24h' or '1h'; got '{other}'"),
                Some("completion_window"),
            ))
        }
    };
    check_metadata(&body.metadata)?;
    let output_expires_secs = output_expiry(&body.output_expires_after)?;
    let key = idempotency_key(&req)?;
    let file = super::files::tenant_file(&state, principal.tenant_id, &body.input_file_id)
        .await
        .map_err(|_| {
            ApiError::invalid(
                format!(
                    "no such file: '{}' (upload it with purpose 'batch')",
                    body.input_file_id
                ),
                Some("input_file_id"),
            )
        })?;
    if file.purpose != "batch" {
        return Err(ApiError::invalid(
            format!(
                "the file '{}' has purpose '{}', not 'batch'",
                file.id, file.purpose
            ),
            Some("input_file_id"),
        ));
    }
    let hash = hex::encode(sha2::Sha256::digest(
        serde_json::to_vec(&json!([
            body.input_file_id,
            body.endpoint,
            body.completion_window,
            body.metadata,
            body.output_expires_after
        ]))
        .unwrap_or_default(),
    ));
    let new = NewBatch {
        tenant_id: principal.tenant_id,
        key_id: Some(principal.key_id),
        endpoint: &body.endpoint,
        input_file_id: &file.id,
        completion_window: &body.completion_window,
        window_secs,
        metadata: body.metadata.as_ref().filter(|m| !m.is_null()),
        output_expires_secs,
        idempotency_key: key.as_deref(),
        request_hash: &hash,
        dedupe_secs: DEDUPE_SECS,
    };
    let limits = super::files::limits(&state, principal.tenant_id).await?;
    let started = std::time::Instant::now();
    let parsed = parse_file(
        &state,
        &principal,
        &file,
        endpoint,
        &body.endpoint,
        limits.max_batch_lines,
    )
    .await?;
    let (row, fresh) = match parsed {
        Parsed::Failed(errors) => {
            let errors = json!({"object": "list", "data": errors});
            batches::insert_failed(&state.db, &new, &errors).await?
        }
        Parsed::Lines(lines, model) => {
            let traceparent = super::jobs::trace_context(&req).to_string();
            let run = Run {
                model: &model.model,
                model_version: &model.version,
                lane: maas_core::Lane::Batch.as_str(),
                traceparent: Some(&traceparent),
                max_enqueued_tokens: limits.max_batch_enqueued_tokens,
                urgent: body.completion_window == "1h",
            };
            let (row, fresh) = batches::insert_running(&state.db, &new, &run, &lines).await?;
            if fresh {
                tracing::info!(
                    batch_id = %row.id, lines = lines.len(), model = %model.route(),
                    secs = started.elapsed().as_secs_f64(), "batch created"
                );
                announce(&state, &row).await;
                if lines.len() >= STATS_AFTER_LINES {
                    refresh_stats_soon(&state);
                }
            }
            (row, fresh)
        }
    };
    if !fresh {
        tracing::info!(batch_id = %row.id, "batch create replayed");
    }
    respond(&state, &row).await
}

/// Wakes the scheduler for a new batch. A lost message costs time only:
/// the scheduler's sweep finds queued lines without one.
async fn announce(state: &AppState, row: &BatchRow) {
    let msg = BatchSubmitted {
        batch_id: row.id.clone(),
        tenant_id: row.tenant_id,
    };
    let opts = PublishOpts {
        persistent: true,
        ..PublishOpts::traced(None)
    };
    if let Err(e) = state
        .broker
        .publish_to_queue(&state.broker.names.jobs(), &msg, opts)
        .await
    {
        tracing::warn!(batch_id = %row.id, error = %e, "could not announce a batch; the scheduler's sweep will find its lines");
    }
}

#[utoipa::path(get, path = "/v1/batches/{id}", tag = "batches", security(("api_key" = [])),
    params(("id" = String, Path, description = "Batch id")),
    responses((status = 200, description = "The batch"), (status = 404, body = crate::error::ErrorBody)))]
pub async fn get(
    state: web::Data<AppState>,
    principal: Principal,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    principal.require("batches", None)?;
    let row = tenant_batch(&state, principal.tenant_id, &path).await?;
    respond(&state, &row).await
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// The id of the last batch of the previous page.
    pub after: Option<String>,
    /// 1 to 100, default 20.
    pub limit: Option<i64>,
}

#[utoipa::path(get, path = "/v1/batches", tag = "batches", security(("api_key" = [])), params(ListQuery),
    responses((status = 200, description = "A page of batches, newest first")))]
pub async fn list(
    state: web::Data<AppState>,
    principal: Principal,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    principal.require("batches", None)?;
    let limit = query.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::invalid(
            "limit must be between 1 and 100",
            Some("limit"),
        ));
    }
    let mut rows = batches::list(
        &state.db,
        principal.tenant_id,
        query.after.as_deref(),
        limit + 1,
    )
    .await?;
    let has_more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let mut data = Vec::with_capacity(rows.len());
    for r in &rows {
        let counts = if r.completed_count.is_some() {
            batches::Counts::default()
        } else {
            live_counts(&state, &r.id).await?
        };
        data.push(view(r, counts));
    }
    Ok(HttpResponse::Ok().json(json!({
        "object": "list",
        "data": data,
        "first_id": rows.first().map(|r| &r.id),
        "last_id": rows.last().map(|r| &r.id),
        "has_more": has_more,
    })))
}

/// Stops the given jobs on their workers (they are ended in Postgres).
async fn stop_on_workers(state: &AppState, ids: &[uuid::Uuid]) {
    let exchange = state.broker.names.cancel_exchange();
    for id in ids {
        let opts = PublishOpts {
            traceparent: None,
            persistent: false,
            expiration_ms: Some(60_000),
        };
        if let Err(e) = state
            .broker
            .publish(
                &exchange,
                "",
                &maas_core::messages::CancelJob { job_id: *id },
                opts,
            )
            .await
        {
            tracing::warn!(job_id = %id, error = %e, "could not broadcast a batch line's cancel");
            return;
        }
    }
}

#[utoipa::path(post, path = "/v1/batches/{id}/cancel", tag = "batches", security(("api_key" = [])),
    params(("id" = String, Path, description = "Batch id")),
    responses((status = 200, description = "The batch, cancelling (or already cancelling or cancelled)"),
               (status = 404, body = crate::error::ErrorBody),
               (status = 409, description = "The batch has already ended", body = crate::error::ErrorBody)))]
pub async fn cancel(
    state: web::Data<AppState>,
    principal: Principal,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    principal.require("batches", None)?;
    let row = tenant_batch(&state, principal.tenant_id, &path).await?;
    cancel_batch(&state, &row).await
}

/// Cancels a batch (a tenant's call, or an admin's).
pub async fn cancel_batch(state: &AppState, row: &BatchRow) -> Result<HttpResponse, ApiError> {
    match batches::end_early(&state.db, row.tenant_id, &row.id, "cancelled").await? {
        Some(Ok((row, held, _))) => {
            tracing::info!(batch_id = %row.id, on_workers = held.len(), "batch cancelling");
            stop_on_workers(state, &held).await;
            respond(state, &row).await
        }
        Some(Err(row)) if ["cancelling", "cancelled"].contains(&row.status.as_str()) => {
            respond(state, &row).await
        }
        Some(Err(row)) => Err(ApiError::Conflict {
            message: format!(
                "the batch has already ended ({}) and cannot be cancelled",
                row.status
            ),
            code: Code::BatchNotCancellable,
        }),
        None => Err(batch_not_found(&row.id)),
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct OutputQuery {
    /// Only lines after this line number (from 1; default 0).
    pub after_line: Option<i32>,
    /// At most this many lines (1 to 10,000, default 1,000).
    pub limit: Option<i64>,
}

#[utoipa::path(get, path = "/v1/batches/{id}/output", tag = "batches", security(("api_key" = [])),
    params(("id" = String, Path, description = "Batch id"), OutputQuery),
    responses((status = 200, description = "JSONL: the batch's lines that have ended so far, in line order, each as in the output or error file with its line number (an extension of the Batch API)"),
              (status = 404, body = crate::error::ErrorBody)))]
pub async fn partial_output(
    state: web::Data<AppState>,
    principal: Principal,
    path: web::Path<String>,
    query: web::Query<OutputQuery>,
) -> Result<HttpResponse, ApiError> {
    principal.require("batches", None)?;
    let row = tenant_batch(&state, principal.tenant_id, &path).await?;
    let limit = query.limit.unwrap_or(1000);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::invalid(
            "limit must be between 1 and 10000",
            Some("limit"),
        ));
    }
    let endpoint = Endpoint::parse(&row.endpoint).unwrap_or(Endpoint::Embeddings);
    let model = row.model.clone().unwrap_or_default();
    let lines = batches::ended_lines_after(
        &state.db,
        &row.id,
        query.after_line.unwrap_or(0).max(0),
        limit,
    )
    .await?;
    let mut body = Vec::new();
    for l in &lines {
        let (mut v, _) = output_line(endpoint, l, &model);
        v["line"] = json!(l.batch_line);
        body.extend_from_slice(v.to_string().as_bytes());
        body.push(b'\n');
    }
    Ok(HttpResponse::Ok()
        .content_type("application/jsonl")
        .insert_header((
            "x-batch-last-line",
            lines.last().map_or(0, |l| l.batch_line).to_string(),
        ))
        .body(body))
}

/// A line of the output or error file, and whether it belongs in the output
/// file (a 200 answer) rather than the error file.
fn output_line(endpoint: Endpoint, l: &batches::LineResult, model: &str) -> (Value, bool) {
    let id = format!("batch_req_{}", l.id.simple());
    let request_id = l.id.to_string();
    match l.status.as_str() {
        "succeeded" => (
            json!({
                "id": id, "custom_id": l.custom_id,
                "response": {"status_code": 200, "request_id": request_id, "body": endpoint.body(l, model)},
                "error": null,
            }),
            true,
        ),
        "failed" => {
            let e = l.error.clone().unwrap_or_default();
            let code = e["code"].as_str().unwrap_or("model_error").to_owned();
            let status = if code == "invalid_input" { 400 } else { 500 };
            let kind = if status == 400 {
                "invalid_request_error"
            } else {
                "server_error"
            };
            (
                json!({
                    "id": id, "custom_id": l.custom_id,
                    "response": {"status_code": status, "request_id": request_id, "body": {"error": {
                        "message": e["message"], "type": kind, "param": null, "code": code,
                    }}},
                    "error": null,
                }),
                false,
            )
        }
        other => {
            let code = if other == "expired" {
                "batch_expired"
            } else {
                "batch_cancelled"
            };
            let message = l
                .error
                .as_ref()
                .and_then(|e| e["message"].as_str())
                .unwrap_or("the line did not run")
                .to_owned();
            (
                json!({"id": id, "custom_id": l.custom_id, "response": null, "error": {"code": code, "message": message}}),
                false,
            )
        }
    }
}

/// Ends every batch whose lines have all ended, and expires batches past
/// their window: on every replica, each batch taken by one.
pub async fn finalize_forever(state: AppState, every: Duration) {
    let mut tick = tokio::time::interval(every);
    let mut shown: HashSet<(String, String)> = HashSet::new();
    loop {
        tick.tick().await;
        let open = match batches::open_ids(&state.db, 100).await {
            Ok(o) => o,
            Err(e) => {
                tracing::debug!(error = %e, "batch finalizer: cannot list open batches");
                continue;
            }
        };
        // Unfinished lines per (tenant label, model), for the gauge.
        let mut queued: HashMap<(String, String), i64> = HashMap::new();
        for (id, tenant) in open {
            match finalize(&state, &id, tenant).await {
                Ok(Some((model, unfinished))) => {
                    *queued.entry((tenant_label(tenant), model)).or_default() += unfinished;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(batch_id = %id, error = %e, "could not finalize a batch; will retry")
                }
            }
        }
        for key in shown.difference(&queued.keys().cloned().collect()) {
            let _ = BATCH_LINES_QUEUED.remove_label_values(&[&key.0, &key.1]);
        }
        for ((tenant, model), n) in &queued {
            BATCH_LINES_QUEUED
                .with_label_values(&[tenant, model])
                .set(*n);
        }
        shown = queued.into_keys().collect();
    }
}

/// Ends the batch if its lines have all ended (expiring it first when past
/// its window). Returns its model and unfinished lines while it runs.
async fn finalize(
    state: &AppState,
    id: &str,
    tenant: uuid::Uuid,
) -> Result<Option<(String, i64)>, ApiError> {
    let Some(row) = batches::get(&state.db, tenant, id).await? else {
        return Ok(None);
    };
    let model = row.model.clone().unwrap_or_default();
    let labels = || [tenant_label(tenant), model.clone()];
    if row.status == "in_progress" && row.expires_at.is_some_and(|t| t <= chrono::Utc::now()) {
        if let Some(Ok((_, held, ended))) =
            batches::end_early(&state.db, tenant, id, "expired").await?
        {
            tracing::warn!(batch_id = %id, unfinished = ended, "batch past its completion window; expiring");
            BATCH_DEADLINE_MISSES.with_label_values(&labels()).inc();
            BATCH_LINES_EXPIRED
                .with_label_values(&labels())
                .inc_by(ended as u64);
            stop_on_workers(state, &held).await;
        }
    }
    let counts = batches::counts(&state.db, id).await?;
    remember_counts(id, counts);
    if row.first_line_at.is_none() && counts.completed + counts.failed > 0 {
        // Observed once, by whichever replica records it.
        if let Some((created, first)) = batches::mark_first_line(&state.db, id).await? {
            BATCH_FIRST_LINE
                .with_label_values(&labels())
                .observe((first - created).num_milliseconds().max(0) as f64 / 1000.0);
        }
    }
    if counts.unfinished > 0 {
        return Ok(Some((model, counts.unfinished)));
    }
    batches::mark_finalizing(&state.db, id).await?;
    let mut tx = state
        .db
        .begin()
        .await
        .map_err(maas_store::StoreError::from)?;
    let Some(row) = batches::lock_open(&mut tx, id).await? else {
        return Ok(None);
    };
    let endpoint = Endpoint::parse(&row.endpoint).unwrap_or(Endpoint::Embeddings);
    let model = row.model.clone().unwrap_or_default();
    let expires_at = Some(
        chrono::Utc::now()
            + chrono::Duration::seconds(
                row.output_expires_secs
                    .unwrap_or(state.settings.files_default_expiry_secs),
            ),
    );
    let (mut out, mut err) = (
        state.files.begin(tenant).await?,
        state.files.begin(tenant).await?,
    );
    let (mut n_out, mut n_err, mut after) = (0i64, 0i64, 0);
    loop {
        let page = batches::lines_after(&state.db, id, after, 1000).await?;
        let Some(last) = page.last() else { break };
        after = last.batch_line;
        let (mut ob, mut eb) = (Vec::new(), Vec::new());
        for l in &page {
            let (v, ok) = output_line(endpoint, l, &model);
            let buf = if ok {
                n_out += 1;
                &mut ob
            } else {
                n_err += 1;
                &mut eb
            };
            buf.extend_from_slice(v.to_string().as_bytes());
            buf.push(b'\n');
        }
        out.write(&ob).await?;
        err.write(&eb).await?;
    }
    let meta = |kind: &str| NewFile {
        tenant_id: tenant,
        purpose: "batch_output".into(),
        filename: format!("{id}_{kind}.jsonl"),
        expires_at,
    };
    let output_file_id = if n_out > 0 {
        Some(out.finish(meta("output"), None).await?.id)
    } else {
        None
    };
    let error_file_id = if n_err > 0 {
        Some(err.finish(meta("error"), None).await?.id)
    } else {
        None
    };
    let counts = batches::counts(&state.db, id).await?;
    let (input, output) = batches::usage(&state.db, id).await?;
    let usage = usage_json(input, output);
    let ended = batches::finish(
        &mut tx,
        &row,
        &batches::Ended {
            output_file_id: output_file_id.as_deref(),
            error_file_id: error_file_id.as_deref(),
            counts,
            usage: &usage,
        },
    )
    .await?;
    tx.commit().await.map_err(maas_store::StoreError::from)?;
    tracing::info!(batch_id = %id, status = %ended.status, completed = counts.completed, failed = counts.failed, "batch ended");
    Ok(None)
}
