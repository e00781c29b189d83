//! `POST /v1/embeddings`, OpenAI's schema. Runs as a sync job through the
//! scheduler like every other job (fair share and limits apply); the worker
//! batches concurrent requests together.

use crate::auth::Principal;
use crate::error::ApiError;
use crate::routes::jobs::trace_context;
use crate::routes::resource;
use crate::state::AppState;
use crate::submit::{completed, submit, Submission, Submitted};
use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine;
use maas_core::Code;
use maas_core::{JobMode, Lane};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::time::Duration;

pub fn config(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/v1/embeddings").route(web::post().to(create_embeddings)));
}

/// Body of `POST /v1/embeddings`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct EmbeddingsRequest {
    pub model: String,
    /// A string, an array of strings, an array of token ids, or an array of
    /// such arrays; at most 2048 inputs. Inputs longer than 256 word pieces
    /// are truncated.
    #[schema(value_type = Object)]
    pub input: Value,
    /// `float` (default) or `base64` (little-endian f32).
    pub encoding_format: Option<String>,
    /// Must be 384 if given: this model's only size.
    pub dimensions: Option<u32>,
    /// Accepted and ignored.
    pub user: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct EmbeddingsResponse {
    pub object: &'static str,
    #[schema(value_type = Vec<Object>)]
    pub data: Vec<Value>,
    pub model: String,
    #[schema(value_type = Object)]
    pub usage: Value,
}

#[utoipa::path(post, path = "/v1/embeddings", tag = "openai", security(("api_key" = [])),
    request_body = EmbeddingsRequest,
    responses(
        (status = 200, body = EmbeddingsResponse),
        (status = 400, body = crate::error::ErrorBody),
        (status = 404, description = "Unknown model", body = crate::error::ErrorBody),
        (status = 503, description = "No worker serves the model", body = crate::error::ErrorBody),
        (status = 504, description = "Not finished within the sync timeout", body = crate::error::ErrorBody),
    ))]
pub async fn create_embeddings(
    state: web::Data<AppState>,
    principal: Principal,
    req: HttpRequest,
    body: web::Json<EmbeddingsRequest>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let model = super::resolve_model(&state, &principal, &body.model).await?;
    principal.require("embeddings", Some(&model.model))?;
    let (input, base64) = prepare(&model, &body)?;
    let sub = Submission {
        model: &model,
        input: &input,
        mode: JobMode::Sync,
        lane: Lane::Interactive,
        idempotency_key: None,
        traceparent: trace_context(&req).to_string(),
        timeout: Duration::from_millis(state.settings.sync_timeout_ms),
        stream: false,
    };
    let job = match submit(&state, &principal, sub).await? {
        Submitted::Waited(job)
        | Submitted::Accepted(job)
        | Submitted::Replayed(job)
        | Submitted::Streaming { job, .. } => job,
    };
    let job = completed(&state, principal.tenant_id, job, Some("input")).await?;
    Ok(HttpResponse::Ok().json(response_body(
        &job.output.unwrap_or_default(),
        model.model.as_str(),
        base64,
    )))
}

/// A request as `/v1/embeddings` takes it, for a resolved model: its job
/// input, and whether the vectors are answered in base64. The same checks
/// for a single call and for a batch line.
pub(crate) fn prepare(
    model: &maas_store::registry::Resolved,
    body: &EmbeddingsRequest,
) -> Result<(maas_core::models::JobInput, bool), ApiError> {
    if !model.kind.capabilities().embeds {
        return Err(ApiError::InvalidRequest {
            message: format!(
                "the model '{}' does not produce embeddings",
                model.model.as_str()
            ),
            param: Some("model".into()),
            code: Code::ModelNotSupported,
        });
    }
    let base64 = match body.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                format!("encoding_format must be float or base64, not '{other}'"),
                Some("encoding_format"),
            ));
        }
    };
    if body.dimensions.is_some_and(|d| d != 384) {
        return Err(ApiError::invalid(
            "this model only produces 384 dimensions",
            Some("dimensions"),
        ));
    }
    let input = model
        .kind
        .parse_input(&json!({"input": body.input}))
        .map_err(|e| ApiError::invalid(e.message, Some("input")))?;
    Ok((input, base64))
}

/// The response body of `/v1/embeddings` for a finished job's output.
pub(crate) fn response_body(out: &Value, model: &str, base64: bool) -> Value {
    let vectors = out["embeddings"].as_array().cloned().unwrap_or_default();
    let tokens = out["prompt_tokens"].as_u64().unwrap_or(0);
    let data: Vec<Value> = vectors
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = v
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .flat_map(|x| (x.as_f64().unwrap_or(0.0) as f32).to_le_bytes())
                            .collect()
                    })
                    .unwrap_or_default();
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                v
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })
}
