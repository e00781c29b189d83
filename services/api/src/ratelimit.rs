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

use crate::auth::Principal;
use crate::error::ApiError;
use crate::state::AppState;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::HttpMessage;
use maas_store::cache::{key_bucket, tenant_bucket, RateDecision, RATE_WINDOW_MS};
use maas_store::quotas::Quota;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The limits' state for this request (and a finished job's timing), filled
/// as it is admitted and served, and written into the response headers on
/// the way out.
#[derive(Debug, Default, Clone)]
pub struct RateHeaders {
    pub requests: Option<RateDecision>,
    pub tokens: Option<RateDecision>,
    /// A finished sync job's time in the queue and on its worker, in ms.
    pub timing: Option<(i64, i64)>,
}

pub type SharedRateHeaders = Arc<Mutex<RateHeaders>>;

/// Tenants' quotas, cached briefly per API instance.
#[derive(Default)]
pub struct QuotaCache {
    entries: Mutex<HashMap<Uuid, (Instant, Quota)>>,
}

impl QuotaCache {
    pub async fn get(&self, state: &AppState, tenant: Uuid) -> Result<Quota, ApiError> {
        if let Some(q) = self.entries.lock().ok().and_then(|m| {
            m.get(&tenant)
                .filter(|(at, _)| at.elapsed() < Duration::from_secs(2))
                .map(|(_, q)| q.clone())
        }) {
            return Ok(q);
        }
        let q = maas_store::quotas::get(&state.db, tenant)
            .await?
            .map(|r| r.quota)
            .unwrap_or_default();
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

fn refused(what: &str, owner: &str, d: &RateDecision) -> ApiError {
    ApiError::RateLimited {
        message: format!(
            "rate limit reached: {} {what} per minute for this {owner}; retry after {}",
            d.limit,
            duration_text(d.retry_after_ms)
        ),
        retry_after_secs: d.retry_after_ms.div_ceil(1000).max(1),
    }
}

/// The limits of `kind` that apply to a caller: the tenant's, then the key's.
fn limits(principal: &Principal, q: &Quota, kind: &str) -> Vec<(String, u64, &'static str)> {
    let (tenant, key) = match kind {
        "requests" => (q.rpm, principal.limits.rpm),
        _ => (q.tpm, principal.limits.tpm),
    };
    let mut out = Vec::new();
    if let Some(l) = tenant {
        out.push((
            tenant_bucket(principal.tenant_id, kind),
            u64::try_from(l).unwrap_or(0),
            "tenant",
        ));
    }
    if let Some(l) = key {
        out.push((
            key_bucket(principal.key_id, kind),
            u64::try_from(l).unwrap_or(0),
            "key",
        ));
    }
    out
}

/// Takes `cost` from every limit of `kind` or from none. `Ok(None)`: no
/// limit applies, or Redis is down.
async fn take(
    state: &AppState,
    principal: &Principal,
    q: &Quota,
    kind: &str,
    cost: i64,
) -> Result<Option<i64>, ApiError> {
    let limits = limits(principal, q, kind);
    if limits.is_empty() {
        return Ok(None);
    }
    for (_, limit, owner) in &limits {
        if kind == "tokens" && cost > *limit as i64 {
            crate::observe::refused("tpm", principal.tenant_id);
            return Err(ApiError::RateLimited {
                message: format!("this request needs about {cost} tokens, more than this {owner}'s limit of {limit} tokens per minute; send less or ask for a higher limit"),
                retry_after_secs: 60,
            });
        }
    }
    let buckets: Vec<(String, u64)> = limits.iter().map(|(b, l, _)| (b.clone(), *l)).collect();
    let decisions = match state
        .cache
        .rate_take(&buckets, cost, RATE_WINDOW_MS, false)
        .await
    {
        Ok(d) => d,
        Err(e) => {
            // Redis down: admit (the budget ledger, not this limiter, is what
            // must never be overspent) and say so in the log.
            tracing::warn!(error = %e, "rate limiter unavailable; admitting");
            return Ok(None);
        }
    };
    // The headers show the tightest limit.
    let tightest = decisions.iter().copied().min_by_key(|d| d.remaining);
    if let Ok(mut h) = principal.rate.lock() {
        if kind == "requests" {
            h.requests = tightest;
        } else {
            h.tokens = tightest;
        }
    }
    if decisions.iter().any(|d| !d.taken) {
        crate::observe::refused(
            if kind == "requests" { "rpm" } else { "tpm" },
            principal.tenant_id,
        );
        // Nothing was taken; the limit to name is the one that lacked room
        // (the longest wait).
        if let Some((d, (_, _, owner))) = decisions
            .iter()
            .zip(&limits)
            .max_by_key(|(d, _)| d.retry_after_ms)
        {
            return Err(refused(kind, owner, d));
        }
    }
    Ok(Some(cost))
}

/// One request against the RPM limits of the tenant and the key.
pub async fn admit_request(state: &AppState, principal: &Principal) -> Result<(), ApiError> {
    let q = state.quotas.get(state, principal.tenant_id).await?;
    take(state, principal, &q, "requests", 1).await.map(|_| ())
}

/// A job's estimated tokens (see `JobInput::estimate_tokens`) against the TPM limits
/// of the tenant and the key; returns the estimate charged (0 when no limit applies), to settle
/// when the job ends.
pub async fn admit_tokens(
    state: &AppState,
    principal: &Principal,
    input: &maas_core::models::JobInput,
) -> Result<i64, ApiError> {
    let q = state.quotas.get(state, principal.tenant_id).await?;
    if q.tpm.is_none() && principal.limits.tpm.is_none() {
        return Ok(0);
    }
    Ok(
        take(state, principal, &q, "tokens", input.estimate_tokens())
            .await?
            .unwrap_or(0),
    )
}

/// Gives back a charge whose job never ran (refused later in admission, or
/// a replayed idempotency key).
pub async fn refund_tokens(state: &AppState, principal: &Principal, charged: i64) {
    if charged == 0 {
        return;
    }
    let buckets = [
        tenant_bucket(principal.tenant_id, "tokens"),
        key_bucket(principal.key_id, "tokens"),
    ];
    if let Err(e) = state
        .cache
        .rate_settle(&buckets, -charged, RATE_WINDOW_MS)
        .await
    {
        tracing::warn!(error = %e, "could not give back a token charge");
    }
}

/// Writes the `x-ratelimit-*` headers of whatever limits the request met.
pub async fn headers_middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let shared: SharedRateHeaders = Arc::default();
    req.extensions_mut().insert(shared.clone());
    let mut res = next.call(req).await?;
    let h = shared.lock().map(|h| h.clone()).unwrap_or_default();
    let headers = res.headers_mut();
    if let Some((queue_ms, inference_ms)) = h.timing {
        for (name, ms) in [
            ("x-queue-time-ms", queue_ms),
            ("x-inference-time-ms", inference_ms),
        ] {
            if let Ok(v) = HeaderValue::try_from(ms.to_string()) {
                headers.insert(HeaderName::from_static(name), v);
            }
        }
    }
    for (kind, d) in [("requests", h.requests), ("tokens", h.tokens)] {
        let Some(d) = d else { continue };
        for (name, value) in [
            (format!("x-ratelimit-limit-{kind}"), d.limit.to_string()),
            (
                format!("x-ratelimit-remaining-{kind}"),
                d.remaining.to_string(),
            ),
            (
                format!("x-ratelimit-reset-{kind}"),
                duration_text(d.reset_ms),
            ),
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

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(duration_text(250), "250ms");
        assert_eq!(duration_text(6_000), "6s");
        assert_eq!(duration_text(90_000), "1m30s");
    }
}
