//! Per-tenant rate limits: requests per minute (every authenticated tenant
//! request) and tokens per minute (inference jobs), each a token bucket in
//! Redis taken by one atomic script, so the limits hold across any number of
//! API replicas. Tokens are estimated at admission (prompt ≈ bytes / 4, plus
//! `max_tokens` for generation) and settled when a sync job ends: the
//! difference between the estimate and the recorded usage goes back into (or
//! out of) the bucket.
//!
//! Every tenant response carries OpenAI's `x-ratelimit-*` headers for the
//! limits that apply; a refusal is a 429 with `Retry-After` and code
//! `rate_limit_exceeded`, and consumes nothing. The limits come from the
//! tenant's quota record, re-read at most every 2 s.

use crate::error::ApiError;
use crate::state::AppState;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::HttpMessage;
use maas_store::cache::RateDecision;
use maas_store::quotas::Quota;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

const WINDOW_MS: u64 = 60_000;

/// The limits' state for this request, filled as it is admitted and written
/// into the response headers on the way out.
#[derive(Debug, Default, Clone)]
pub struct RateHeaders {
    pub requests: Option<RateDecision>,
    pub tokens: Option<RateDecision>,
}

pub type SharedRateHeaders = Arc<Mutex<RateHeaders>>;

/// Tenants' quotas, cached briefly per API instance.
#[derive(Default)]
pub struct QuotaCache {
    entries: Mutex<HashMap<Uuid, (Instant, Quota)>>,
}

impl QuotaCache {
    pub async fn get(&self, state: &AppState, tenant: Uuid) -> Result<Quota, ApiError> {
        if let Some(q) = self.entries.lock().ok().and_then(|m| m.get(&tenant).filter(|(at, _)| at.elapsed() < Duration::from_secs(2)).map(|(_, q)| q.clone())) {
            return Ok(q);
        }
        let q = maas_store::quotas::get(&state.db, tenant).await?.map(|r| r.quota).unwrap_or_default();
        if let Ok(mut m) = self.entries.lock() {
            m.insert(tenant, (Instant::now(), q.clone()));
        }
        Ok(q)
    }
}

/// `6s`, `1m30s`, `250ms`: the form OpenAI's reset headers use.
fn duration_text(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let s = ms.div_ceil(1000);
    if s < 60 {
        format!("{s}s")
    } else {
        format!("{}m{}s", s / 60, s % 60)
    }
}

fn refused(what: &str, d: &RateDecision) -> ApiError {
    ApiError::RateLimited {
        message: format!("rate limit reached: {} {what} per minute; retry after {}", d.limit, duration_text(d.retry_after_ms)),
        retry_after_secs: d.retry_after_ms.div_ceil(1000).max(1),
    }
}

async fn take(state: &AppState, bucket: String, limit: i64, cost: i64, force: bool) -> Result<Option<RateDecision>, ApiError> {
    let limit = u64::try_from(limit).unwrap_or(0);
    match state.cache.rate_take(&bucket, limit, cost, WINDOW_MS, force).await {
        Ok(d) => Ok(Some(d)),
        Err(e) => {
            // Redis down: admit (the budget ledger, not this limiter, is what
            // must never be overspent) and say so in the log.
            tracing::warn!(error = %e, "rate limiter unavailable; admitting");
            Ok(None)
        }
    }
}

/// One request against the tenant's RPM limit.
pub async fn admit_request(state: &AppState, tenant: Uuid, headers: &SharedRateHeaders) -> Result<(), ApiError> {
    let q = state.quotas.get(state, tenant).await?;
    let Some(rpm) = q.rpm else { return Ok(()) };
    let Some(d) = take(state, format!("{tenant}:requests"), rpm, 1, false).await? else { return Ok(()) };
    if let Ok(mut h) = headers.lock() {
        h.requests = Some(d);
    }
    if d.taken {
        Ok(())
    } else {
        Err(refused("requests", &d))
    }
}

/// A job's estimated tokens against the tenant's TPM limit; returns the
/// estimate charged (0 when no limit applies), to settle later.
pub async fn admit_tokens(state: &AppState, tenant: Uuid, estimate: i64, headers: &SharedRateHeaders) -> Result<i64, ApiError> {
    let q = state.quotas.get(state, tenant).await?;
    let Some(tpm) = q.tpm else { return Ok(0) };
    if estimate > tpm {
        return Err(ApiError::RateLimited {
            message: format!("this request needs about {estimate} tokens, more than the limit of {tpm} tokens per minute; send less or ask for a higher limit"),
            retry_after_secs: 60,
        });
    }
    let Some(d) = take(state, format!("{tenant}:tokens"), tpm, estimate, false).await? else { return Ok(0) };
    if let Ok(mut h) = headers.lock() {
        h.tokens = Some(d);
    }
    if d.taken {
        Ok(estimate)
    } else {
        Err(refused("tokens", &d))
    }
}

/// Settles a job's charge with its recorded usage.
pub async fn settle_tokens(state: &AppState, tenant: Uuid, charged: i64, actual: i64) {
    if charged == 0 || charged == actual {
        return;
    }
    let Ok(q) = state.quotas.get(state, tenant).await else { return };
    if let Some(tpm) = q.tpm {
        // A negative cost gives tokens back; a positive one takes the excess.
        let _ = take(state, format!("{tenant}:tokens"), tpm, actual - charged, true).await;
    }
}

/// Tokens a job is expected to use: its text inputs at ~4 bytes a token, ids
/// one each, plus what it may generate.
pub fn estimate_tokens(input: &Value) -> i64 {
    fn text(v: &Value) -> i64 {
        match v {
            Value::String(s) => s.len().div_ceil(4) as i64,
            Value::Number(_) => 1,
            Value::Array(a) => a.iter().map(text).sum(),
            Value::Object(o) => o.iter().filter(|(k, _)| matches!(k.as_str(), "input" | "prompt" | "messages" | "content" | "text")).map(|(_, v)| text(v)).sum(),
            _ => 0,
        }
    }
    let generation = if input.get("messages").is_some() || input.get("prompt").is_some() {
        input.get("max_tokens").and_then(Value::as_i64).unwrap_or(256)
    } else {
        0
    };
    (text(input) + generation).max(1)
}

/// Writes the `x-ratelimit-*` headers of whatever limits the request met.
pub async fn headers_middleware(req: ServiceRequest, next: Next<impl MessageBody>) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let shared: SharedRateHeaders = Arc::default();
    req.extensions_mut().insert(shared.clone());
    let mut res = next.call(req).await?;
    let h = shared.lock().map(|h| h.clone()).unwrap_or_default();
    let headers = res.headers_mut();
    for (kind, d) in [("requests", h.requests), ("tokens", h.tokens)] {
        let Some(d) = d else { continue };
        for (name, value) in [
            (format!("x-ratelimit-limit-{kind}"), d.limit.to_string()),
            (format!("x-ratelimit-remaining-{kind}"), d.remaining.to_string()),
            (format!("x-ratelimit-reset-{kind}"), duration_text(d.reset_ms)),
        ] {
            if let (Ok(n), Ok(v)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
                headers.insert(n, v);
            }
        }
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn estimates_count_text_ids_and_generation() {
        assert_eq!(estimate_tokens(&json!({"input": "abcdefgh"})), 2);
        assert_eq!(estimate_tokens(&json!({"input": [[1, 2, 3], [4]]})), 4);
        assert_eq!(estimate_tokens(&json!({"messages": [{"role": "user", "content": "abcd"}], "max_tokens": 10})), 11);
        assert_eq!(estimate_tokens(&json!({"prompt": "abcd", "max_tokens": null})), 257);
        assert_eq!(estimate_tokens(&json!({"text": ""})), 1);
        assert_eq!(duration_text(250), "250ms");
        assert_eq!(duration_text(6_000), "6s");
        assert_eq!(duration_text(90_000), "1m30s");
    }
}
