//! `POST /v1/chat/completions` and `POST /v1/completions`, OpenAI's schema,
//! run as sync jobs through the scheduler. Streaming, `n` > 1 and logprobs
//! are refused with a 400 until they are supported.

use crate::auth::Principal;
use crate::error::ApiError;
use crate::routes::jobs::trace_context;
use crate::routes::resource;
use crate::state::AppState;
use crate::submit::{cancel, submit, Submission, Submitted};
use actix_web::{web, HttpRequest, HttpResponse};
use maas_core::models::{validate_input, ChatMessage, Stop, SMOLLM2};
use maas_core::{JobMode, JobStatus, Lane};
use maas_store::jobs::Job;
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::Duration;

pub fn config(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/v1/chat/completions").route(web::post().to(chat_completions)))
        .service(resource("/v1/completions").route(web::post().to(completions)));
}

/// The fields both endpoints share; others that clients send are ignored.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct GenerationRequest {
    pub model: String,
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub messages: Option<Vec<ChatMessage>>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub prompt: Option<Value>,
    pub max_tokens: Option<u32>,
    pub max_completion_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<u32>,
    pub seed: Option<u64>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub stop: Option<Stop>,
    #[serde(default)]
    pub stream: Option<bool>,
    pub n: Option<u32>,
    #[serde(default)]
    pub logprobs: Option<Value>,
}

fn unsupported(what: &str, param: &str) -> ApiError {
    ApiError::InvalidRequest { message: format!("{what} is not supported yet"), param: Some(param.into()), code: "unsupported_parameter" }
}

async fn generate(state: &AppState, principal: &Principal, req: &HttpRequest, body: GenerationRequest, family: &str, chat: bool) -> Result<(Job, String), ApiError> {
    let model = super::parse_model(&body.model)?;
    principal.require(family, Some(&model))?;
    if model.as_str() != SMOLLM2 {
        return Err(ApiError::InvalidRequest {
            message: format!("the model '{}' does not generate text", model.as_str()),
            param: Some("model".into()),
            code: "model_not_supported",
        });
    }
    if body.stream == Some(true) {
        return Err(unsupported("stream", "stream"));
    }
    if body.n.is_some_and(|n| n != 1) {
        return Err(unsupported("n other than 1", "n"));
    }
    if body.logprobs.as_ref().is_some_and(|v| !v.is_null() && v != &Value::Bool(false)) {
        return Err(unsupported("logprobs", "logprobs"));
    }
    let (messages, prompt) = if chat {
        (Some(body.messages.ok_or_else(|| ApiError::invalid("messages is required", Some("messages")))?), None)
    } else {
        match body.prompt {
            Some(Value::String(s)) => (None, Some(s)),
            Some(_) => return Err(ApiError::invalid("prompt must be a string", Some("prompt"))),
            None => return Err(ApiError::invalid("prompt is required", Some("prompt"))),
        }
    };
    let input = json!({
        "messages": messages, "prompt": prompt,
        "max_tokens": body.max_completion_tokens.or(body.max_tokens),
        "temperature": body.temperature, "top_p": body.top_p, "top_k": body.top_k,
        "seed": body.seed, "stop": body.stop,
    });
    validate_input(&model, &input).map_err(|e| ApiError::invalid(e.message, Some(&e.param)))?;
    let sub = Submission {
        model: &model,
        input: &input,
        mode: JobMode::Sync,
        lane: Lane::Interactive,
        idempotency_key: None,
        traceparent: trace_context(req).to_string(),
        timeout: Duration::from_millis(state.settings.sync_timeout_ms),
    };
    let job = match submit(state, principal, sub).await? {
        Submitted::Waited(job) | Submitted::Accepted(job) | Submitted::Replayed(job) => job,
    };
    match job.status() {
        JobStatus::Succeeded => Ok((job, model.as_str().to_owned())),
        JobStatus::Failed => {
            let code = job.error.as_ref().and_then(|e| e["code"].as_str()).unwrap_or_default();
            let message = job.error.as_ref().and_then(|e| e["message"].as_str()).unwrap_or("the job failed").to_owned();
            Err(if code == "invalid_input" { ApiError::invalid(message, None) } else { ApiError::internal(format!("job {} failed: {message}", job.id)) })
        }
        JobStatus::Cancelled | JobStatus::Expired => {
            Err(ApiError::Conflict { message: format!("the job was {}", job.status()), code: "job_not_completed" })
        }
        JobStatus::Queued | JobStatus::Dispatched | JobStatus::Running => {
            let _ = cancel(state, job.id, principal.tenant_id).await;
            Err(ApiError::Timeout { message: format!("the completion was not ready within {} ms", state.settings.sync_timeout_ms) })
        }
    }
}

fn usage(out: &Value) -> Value {
    let (p, c) = (out["prompt_tokens"].as_u64().unwrap_or(0), out["completion_tokens"].as_u64().unwrap_or(0));
    json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c})
}

#[utoipa::path(post, path = "/v1/chat/completions", tag = "openai", security(("api_key" = [])), request_body = GenerationRequest,
    responses((status = 200, description = "chat.completion"), (status = 400, body = crate::error::ErrorBody), (status = 504, body = crate::error::ErrorBody)))]
pub async fn chat_completions(state: web::Data<AppState>, principal: Principal, req: HttpRequest, body: web::Json<GenerationRequest>) -> Result<HttpResponse, ApiError> {
    let (job, model) = generate(&state, &principal, &req, body.into_inner(), "chat", true).await?;
    let out = job.output.clone().unwrap_or_default();
    Ok(HttpResponse::Ok().json(json!({
        "id": format!("chatcmpl-{}", job.id.simple()),
        "object": "chat.completion",
        "created": job.created_at.timestamp(),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": out["text"]}, "finish_reason": out["finish_reason"], "logprobs": null}],
        "usage": usage(&out),
    })))
}

#[utoipa::path(post, path = "/v1/completions", tag = "openai", security(("api_key" = [])), request_body = GenerationRequest,
    responses((status = 200, description = "text_completion"), (status = 400, body = crate::error::ErrorBody), (status = 504, body = crate::error::ErrorBody)))]
pub async fn completions(state: web::Data<AppState>, principal: Principal, req: HttpRequest, body: web::Json<GenerationRequest>) -> Result<HttpResponse, ApiError> {
    let (job, model) = generate(&state, &principal, &req, body.into_inner(), "completions", false).await?;
    let out = job.output.clone().unwrap_or_default();
    Ok(HttpResponse::Ok().json(json!({
        "id": format!("cmpl-{}", job.id.simple()),
        "object": "text_completion",
        "created": job.created_at.timestamp(),
        "model": model,
        "choices": [{"index": 0, "text": out["text"], "finish_reason": out["finish_reason"], "logprobs": null}],
        "usage": usage(&out),
    })))
}
