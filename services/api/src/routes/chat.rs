//! `POST /v1/chat/completions` and `POST /v1/completions`, OpenAI's schema,
//! run as sync jobs through the scheduler. With `stream: true` the worker
//! sends the text through RabbitMQ to this instance as it is generated, and
//! it goes out as server-sent events (chunks, then `data: [DONE]`); a client
//! that disconnects cancels the generation. Logprobs come in each API's own
//! form (chat: `logprobs.content[]`; completions: `tokens`, `token_logprobs`,
//! `top_logprobs`, `text_offset`). `n` > 1 is refused with a 400.

use crate::auth::Principal;
use crate::error::ApiError;
use crate::routes::jobs::trace_context;
use crate::routes::resource;
use crate::state::AppState;
use crate::submit::{cancel, completed, submit, Submission, Submitted};
use actix_web::{web, HttpRequest, HttpResponse};
use maas_core::models::{ChatInput, ChatMessage, JobInput, Prompt, Stop};
use maas_core::Code;
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
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub stream_options: Option<Value>,
    pub n: Option<u32>,
    /// Chat: `true` for logprobs; completions: how many alternatives (0–5).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub logprobs: Option<Value>,
    /// Chat: alternatives per token (0–20), with `logprobs: true`.
    pub top_logprobs: Option<u32>,
}

fn unsupported(what: &str, param: &str) -> ApiError {
    ApiError::InvalidRequest {
        message: format!("{what} is not supported yet"),
        param: Some(param.into()),
        code: Code::UnsupportedParameter,
    }
}

/// What a generation request turned into (one per request, moved once).
#[allow(clippy::large_enum_variant)]
enum Generated {
    Done(Job, String),
    Streaming(Submitted, String, bool),
}

async fn generate(
    state: &AppState,
    principal: &Principal,
    req: &HttpRequest,
    body: GenerationRequest,
    family: &str,
    chat: bool,
) -> Result<Generated, ApiError> {
    let stream = body.stream == Some(true);
    let include_usage = body
        .stream_options
        .as_ref()
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let model = super::resolve_model(state, principal, &body.model).await?;
    principal.require(family, Some(&model.model))?;
    let chat = prepare(&model, body, chat)?;
    let input = JobInput::Chat(chat);
    let sub = Submission {
        model: &model,
        input: &input,
        mode: JobMode::Sync,
        lane: Lane::Interactive,
        idempotency_key: None,
        traceparent: trace_context(req).to_string(),
        timeout: Duration::from_millis(state.settings.sync_timeout_ms),
        stream,
    };
    let job = match submit(state, principal, sub).await? {
        s @ Submitted::Streaming { .. } => {
            return Ok(Generated::Streaming(
                s,
                model.model.as_str().to_owned(),
                include_usage,
            ))
        }
        Submitted::Waited(job) | Submitted::Accepted(job) | Submitted::Replayed(job) => job,
    };
    let job = completed(state, principal.tenant_id, job, None).await?;
    Ok(Generated::Done(job, model.model.as_str().to_owned()))
}

/// A request as the chat (`chat`) or completions endpoint takes it, for a
/// resolved model: its input. The same checks for a single call and for a
/// batch line.
pub(crate) fn prepare(
    model: &maas_store::registry::Resolved,
    body: GenerationRequest,
    chat: bool,
) -> Result<ChatInput, ApiError> {
    let stream = body.stream == Some(true);
    if !model.kind.capabilities().generates {
        return Err(ApiError::InvalidRequest {
            message: format!(
                "the model '{}' does not generate text",
                model.model.as_str()
            ),
            param: Some("model".into()),
            code: Code::ModelNotSupported,
        });
    }
    if body.n.is_some_and(|n| n != 1) {
        return Err(unsupported("n other than 1", "n"));
    }
    let logprobs = requested_logprobs(&body, chat)?;
    let (messages, prompt) = if chat {
        (
            Some(
                body.messages
                    .ok_or_else(|| ApiError::invalid("messages is required", Some("messages")))?,
            ),
            None,
        )
    } else {
        (None, Some(parse_prompt(body.prompt)?))
    };
    let chat = ChatInput {
        messages,
        prompt,
        max_tokens: body.max_completion_tokens.or(body.max_tokens),
        temperature: body.temperature,
        top_p: body.top_p,
        top_k: body.top_k,
        seed: body.seed,
        stop: body.stop,
        stream,
        logprobs,
    };
    chat.validate()
        .map_err(|e| ApiError::invalid(e.message, Some(&e.param)))?;
    Ok(chat)
}

/// The response body of `/v1/chat/completions` for a finished job.
pub(crate) fn chat_body(job: &Job, model: &str) -> Value {
    let out = job.output.clone().unwrap_or_default();
    chat_body_of(job.id, job.created_at.timestamp(), &out, model)
}

pub(crate) fn chat_body_of(id: uuid::Uuid, created: i64, out: &Value, model: &str) -> Value {
    json!({
        "id": format!("chatcmpl-{}", id.simple()),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": out["text"]},
            "finish_reason": out["finish_reason"],
            "logprobs": out.get("logprobs").map(|e| json!({"content": e})),
        }],
        "usage": usage(out),
    })
}

/// The response body of `/v1/completions` for a finished job.
pub(crate) fn completion_body(job: &Job, model: &str) -> Value {
    let out = job.output.clone().unwrap_or_default();
    completion_body_of(job.id, job.created_at.timestamp(), &out, model)
}

pub(crate) fn completion_body_of(id: uuid::Uuid, created: i64, out: &Value, model: &str) -> Value {
    json!({
        "id": format!("cmpl-{}", id.simple()),
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "text": out["text"],
            "finish_reason": out["finish_reason"],
            "logprobs": out.get("logprobs").map(|e| completion_logprobs(e, 0).0),
        }],
        "usage": usage(out),
    })
}

/// How many alternatives per token the request asks logprobs for, if any.
fn requested_logprobs(body: &GenerationRequest, chat: bool) -> Result<Option<u32>, ApiError> {
    let bad = |m: &str, p: &str| ApiError::invalid(m, Some(p));
    if chat {
        let on = match &body.logprobs {
            None | Some(Value::Null) | Some(Value::Bool(false)) => false,
            Some(Value::Bool(true)) => true,
            Some(_) => return Err(bad("logprobs must be a boolean", "logprobs")),
        };
        match (on, body.top_logprobs) {
            (false, Some(_)) => Err(bad("top_logprobs needs logprobs: true", "top_logprobs")),
            (false, None) => Ok(None),
            (true, k) => Ok(Some(k.unwrap_or(0))),
        }
    } else {
        if body.top_logprobs.is_some() {
            return Err(bad(
                "top_logprobs is a chat parameter; give logprobs: <0–5> for completions",
                "top_logprobs",
            ));
        }
        match &body.logprobs {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => match n.as_u64() {
                Some(k) if k <= 5 => Ok(Some(k as u32)),
                _ => Err(bad("logprobs must be an integer from 0 to 5", "logprobs")),
            },
            Some(_) => Err(bad("logprobs must be an integer from 0 to 5", "logprobs")),
        }
    }
}

/// A completions prompt: text, token ids, or a one-element array of either.
fn parse_prompt(prompt: Option<Value>) -> Result<Prompt, ApiError> {
    let bad = |m: &str| ApiError::invalid(m, Some("prompt"));
    let one = |v: Value| -> Result<Prompt, ApiError> {
        match v {
            Value::String(s) => Ok(Prompt::Text(s)),
            Value::Array(a) if !a.is_empty() && a.iter().all(Value::is_number) => a
                .iter()
                .map(|x| x.as_u64().and_then(|n| u32::try_from(n).ok()))
                .collect::<Option<Vec<u32>>>()
                .map(Prompt::Ids)
                .ok_or_else(|| bad("token ids must be non-negative integers")),
            _ => Err(bad(
                "prompt must be a string, an array of token ids, or a one-element array of either",
            )),
        }
    };
    match prompt {
        None | Some(Value::Null) => Err(bad("prompt is required")),
        Some(Value::Array(a)) if a.first().is_some_and(|x| x.is_string() || x.is_array()) => {
            if a.len() != 1 {
                return Err(ApiError::InvalidRequest {
                    message: "several prompts in one request are not supported; send one request per prompt".into(),
                    param: Some("prompt".into()),
                    code: Code::UnsupportedParameter,
                });
            }
            one(a.into_iter().next().unwrap_or(Value::Null))
        }
        Some(v) => one(v),
    }
}

/// Chat logprob entries in the completions form, text offsets from `offset`
/// (characters into the completion); returns the form and the next offset.
fn completion_logprobs(entries: &Value, mut offset: usize) -> (Value, usize) {
    let (mut tokens, mut lps, mut tops, mut offsets) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for e in entries.as_array().map(Vec::as_slice).unwrap_or_default() {
        let token = e["token"].as_str().unwrap_or_default();
        tokens.push(json!(token));
        lps.push(e["logprob"].clone());
        let alt: serde_json::Map<String, Value> = e["top_logprobs"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|t| {
                (
                    t["token"].as_str().unwrap_or_default().to_owned(),
                    t["logprob"].clone(),
                )
            })
            .collect();
        tops.push(Value::Object(alt));
        offsets.push(json!(offset));
        offset += token.chars().count();
    }
    (
        json!({"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}),
        offset,
    )
}

fn usage(out: &Value) -> Value {
    let (p, c) = (
        out["prompt_tokens"].as_u64().unwrap_or(0),
        out["completion_tokens"].as_u64().unwrap_or(0),
    );
    json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c})
}

#[utoipa::path(post, path = "/v1/chat/completions", tag = "openai", security(("api_key" = [])), request_body = GenerationRequest,
    responses((status = 200, description = "chat.completion"), (status = 400, body = crate::error::ErrorBody), (status = 504, body = crate::error::ErrorBody)))]
pub async fn chat_completions(
    state: web::Data<AppState>,
    principal: Principal,
    req: HttpRequest,
    body: web::Json<GenerationRequest>,
) -> Result<HttpResponse, ApiError> {
    let (job, model) =
        match generate(&state, &principal, &req, body.into_inner(), "chat", true).await? {
            Generated::Done(job, model) => (job, model),
            Generated::Streaming(s, model, usage) => {
                return Ok(sse(
                    state.get_ref().clone(),
                    principal.tenant_id,
                    s,
                    model,
                    usage,
                    true,
                ))
            }
        };
    Ok(HttpResponse::Ok().json(chat_body(&job, &model)))
}

#[utoipa::path(post, path = "/v1/completions", tag = "openai", security(("api_key" = [])), request_body = GenerationRequest,
    responses((status = 200, description = "text_completion"), (status = 400, body = crate::error::ErrorBody), (status = 504, body = crate::error::ErrorBody)))]
pub async fn completions(
    state: web::Data<AppState>,
    principal: Principal,
    req: HttpRequest,
    body: web::Json<GenerationRequest>,
) -> Result<HttpResponse, ApiError> {
    let (job, model) = match generate(
        &state,
        &principal,
        &req,
        body.into_inner(),
        "completions",
        false,
    )
    .await?
    {
        Generated::Done(job, model) => (job, model),
        Generated::Streaming(s, model, usage) => {
            return Ok(sse(
                state.get_ref().clone(),
                principal.tenant_id,
                s,
                model,
                usage,
                false,
            ))
        }
    };
    Ok(HttpResponse::Ok().json(completion_body(&job, &model)))
}

/// One server-sent event.
fn event(v: &Value) -> web::Bytes {
    web::Bytes::from(format!("data: {v}\n\n"))
}

/// What a stream's job is doing when no piece has arrived for a while.
enum StreamCheck {
    /// Queued, or running the attempt the caller is receiving.
    Going,
    /// Finished (its wake-up was lost).
    Ended,
    /// Part of one attempt's output went out and the job is running again
    /// (its worker was lost): the stream cannot continue.
    Restarted,
}

async fn stream_check(
    state: &AppState,
    job_id: uuid::Uuid,
    tenant_id: uuid::Uuid,
    streamed: Option<i32>,
) -> StreamCheck {
    let job = match crate::submit::load_job(state, job_id, tenant_id).await {
        Ok(Some(j)) => j,
        // Its row was lost with a database crash: it will not run.
        Ok(None) => return StreamCheck::Ended,
        // A passing read error says nothing about the job: keep waiting.
        Err(_) => return StreamCheck::Going,
    };
    if job.status.is_terminal() {
        return StreamCheck::Ended;
    }
    match streamed {
        Some(a) if job.attempts != a || job.status == JobStatus::Queued => StreamCheck::Restarted,
        _ => StreamCheck::Going,
    }
}

/// The streaming answer: a first chunk (chat: the assistant role), a chunk
/// per piece of text, a last chunk with the finish reason, the usage if asked
/// (`stream_options.include_usage`), then `data: [DONE]`.
fn sse(
    state: AppState,
    tenant_id: uuid::Uuid,
    s: Submitted,
    model: String,
    include_usage: bool,
    chat: bool,
) -> HttpResponse {
    let Submitted::Streaming {
        job,
        waiter,
        done,
        guard,
    } = s
    else {
        return HttpResponse::InternalServerError().finish();
    };
    let (object, id) = if chat {
        (
            "chat.completion.chunk",
            format!("chatcmpl-{}", job.id.simple()),
        )
    } else {
        ("text_completion", format!("cmpl-{}", job.id.simple()))
    };
    let created = job.created_at.timestamp();
    let chunk = move |delta: Option<&str>, finish: Option<&str>, logprobs: Value| -> Value {
        let choice = if chat {
            let d = match delta {
                Some(t) => json!({"content": t}),
                None if finish.is_none() => json!({"role": "assistant", "content": ""}),
                None => json!({}),
            };
            json!({"index": 0, "delta": d, "finish_reason": finish, "logprobs": logprobs})
        } else {
            json!({"index": 0, "text": delta.unwrap_or(""), "finish_reason": finish, "logprobs": logprobs})
        };
        json!({"id": id, "object": object, "created": created, "model": model, "choices": [choice]})
    };
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(state.settings.max_sync_timeout_ms);
    struct Flow {
        state: AppState,
        tenant_id: uuid::Uuid,
        job_id: uuid::Uuid,
        waiter: crate::replies::StreamWaiter,
        _done: crate::replies::Waiter,
        guard: crate::submit::CancelOnDrop,
        pending: std::collections::VecDeque<web::Bytes>,
        finished: bool,
        /// Completions: characters of completion text so far (`text_offset`).
        offset: usize,
        /// The attempt whose output the caller has received, once it has.
        attempt: Option<i32>,
    }
    let mut first = std::collections::VecDeque::new();
    if chat {
        first.push_back(event(&chunk(None, None, Value::Null)));
    }
    let flow = Flow {
        state,
        tenant_id,
        job_id: job.id,
        waiter,
        _done: done,
        guard,
        pending: first,
        finished: false,
        offset: 0,
        attempt: None,
    };
    let body = futures_util::stream::unfold(flow, move |mut f| {
        let chunk = chunk.clone();
        async move {
            loop {
                if let Some(b) = f.pending.pop_front() {
                    return Some((Ok::<_, actix_web::Error>(b), f));
                }
                if f.finished {
                    return None;
                }
                // Silence is looked into every 2 s: a job whose worker was
                // lost is noticed within seconds, not at the deadline.
                let slice = deadline.min(tokio::time::Instant::now() + Duration::from_secs(2));
                let next = match tokio::time::timeout_at(slice, f.waiter.chunks.recv()).await {
                    // A later attempt's output: the attempt the caller has
                    // part of is gone (its worker was lost).
                    Ok(Some((Some(a), _))) if f.attempt.is_some_and(|s| a > s) => Err(true),
                    Ok(next) => Ok(next),
                    Err(_) if tokio::time::Instant::now() >= deadline => Err(false),
                    Err(_) => {
                        match stream_check(&f.state, f.job_id, f.tenant_id, f.attempt).await {
                            StreamCheck::Going => continue,
                            // The end was recorded but its wake-up was lost.
                            StreamCheck::Ended => Ok(None),
                            StreamCheck::Restarted => Err(true),
                        }
                    }
                };
                match next {
                    Err(true) => {
                        f.finished = true;
                        let _ = cancel(&f.state, f.job_id, f.tenant_id).await;
                        f.guard.disarm();
                        f.pending.push_back(event(&json!({"error": {"message": "the worker generating this stream was lost and the output cannot be resumed; retry the request", "type": "server_error", "param": null, "code": Code::WorkerLost}})));
                        f.pending
                            .push_back(web::Bytes::from_static(b"data: [DONE]\n\n"));
                    }
                    Ok(Some((attempt, _)))
                        if f.attempt.is_some() && attempt.is_some() && attempt != f.attempt =>
                    {
                        // A late piece of an earlier attempt: never spliced
                        // into this output.
                        continue;
                    }
                    Ok(Some((attempt, piece))) => {
                        if f.attempt.is_none() {
                            f.attempt = attempt;
                        }
                        let logprobs = match piece.logprobs {
                            None => Value::Null,
                            Some(e) if chat => json!({"content": e}),
                            Some(e) => {
                                let (lp, next) = completion_logprobs(&e, f.offset);
                                f.offset = next;
                                lp
                            }
                        };
                        f.pending
                            .push_back(event(&chunk(Some(&piece.text), None, logprobs)));
                    }
                    Ok(None) => {
                        // Done: the final state says how it ended.
                        f.finished = true;
                        f.guard.disarm();
                        let job = crate::submit::load_job(&f.state, f.job_id, f.tenant_id)
                            .await
                            .ok()
                            .flatten();
                        match job.as_ref().map(|j| {
                            (
                                j.status,
                                j.output.clone().unwrap_or_default(),
                                j.error.clone(),
                            )
                        }) {
                            Some((JobStatus::Succeeded, out, _)) => {
                                f.pending.push_back(event(&chunk(
                                    None,
                                    Some(out["finish_reason"].as_str().unwrap_or("stop")),
                                    Value::Null,
                                )));
                                if include_usage {
                                    let mut u = chunk(None, None, Value::Null);
                                    u["choices"] = json!([]);
                                    u["usage"] = usage(&out);
                                    f.pending.push_back(event(&u));
                                }
                            }
                            other => {
                                let message = other
                                    .and_then(|(_, _, e)| e)
                                    .and_then(|e| e["message"].as_str().map(str::to_owned))
                                    .unwrap_or_else(|| "the generation did not complete".into());
                                f.pending.push_back(event(&json!({"error": {"message": message, "type": "server_error", "param": null, "code": Code::GenerationFailed}})));
                            }
                        }
                        f.pending
                            .push_back(web::Bytes::from_static(b"data: [DONE]\n\n"));
                    }
                    Err(false) => {
                        f.finished = true;
                        let _ = cancel(&f.state, f.job_id, f.tenant_id).await;
                        f.guard.disarm();
                        f.pending.push_back(event(&json!({"error": {"message": "the generation took too long and was cancelled", "type": "timeout_error", "param": null, "code": Code::Timeout}})));
                        f.pending
                            .push_back(web::Bytes::from_static(b"data: [DONE]\n\n"));
                    }
                }
            }
        }
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        .streaming(body)
}
