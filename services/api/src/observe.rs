//! Per-request observability: a span for every request (continuing the
//! caller's `traceparent`), a request id (`x-request-id`, the caller's own
//! when it sends a sane one), the HTTP duration histogram, one access log
//! line, and the API's metrics.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, HttpRequest, HttpResponse};
use maas_core::metrics::{
    self, register_histogram_vec, register_int_counter_vec, register_int_gauge_vec, HistogramVec,
    IntCounterVec, IntGaugeVec,
};
use maas_core::trace::TraceParent;
use std::sync::LazyLock;
use std::time::Instant;
use tracing::field::Empty;
use tracing::Instrument;
use uuid::Uuid;

pub static HTTP_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "maas_http_request_duration_seconds",
        "Time to answer an HTTP request (to the first byte of a stream), by route template, method and status",
        &["route", "method", "status"],
        metrics::LATENCY_BUCKETS.to_vec()
    )
    .expect("metric registers once")
});

pub static JOBS_SUBMITTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "maas_jobs_submitted_total",
        "Jobs accepted (stored and queued), by model, mode and tenant",
        &["model", "mode", "tenant"]
    )
    .expect("metric registers once")
});

pub static BATCH_LINES_QUEUED: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "maas_batch_api_lines_queued",
        "Unfinished lines of open Batch API batches, by tenant and model",
        &["tenant", "model"]
    )
    .expect("metric registers once")
});

pub static BATCH_FIRST_LINE: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "maas_batch_api_time_to_first_line_seconds",
        "From a batch's create to its first line ending, by tenant and model",
        &["tenant", "model"],
        maas_core::metrics::LATENCY_BUCKETS.to_vec()
    )
    .expect("metric registers once")
});

pub static BATCH_DEADLINE_MISSES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "maas_batch_api_deadline_misses_total",
        "Batches that reached the end of their completion window unfinished (ended expired), by tenant and model",
        &["tenant", "model"]
    )
    .expect("metric registers once")
});

pub static BATCH_LINES_EXPIRED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "maas_batch_api_lines_expired_total",
        "Lines left unfinished by batches that ended expired, by tenant and model",
        &["tenant", "model"]
    )
    .expect("metric registers once")
});

pub static REFUSALS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "maas_admission_refusals_total",
        "Requests refused by a limit, by reason (rpm, tpm, max_queued, max_concurrent, token_budget, platform_queue) and tenant",
        &["reason", "tenant"]
    )
    .expect("metric registers once")
});

/// Counts one refusal.
pub fn refused(reason: &str, tenant: Uuid) {
    REFUSALS
        .with_label_values(&[reason, &metrics::tenant_label(tenant)])
        .inc();
}

/// What the rest of the request needs to know of its context.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub request_id: String,
    /// This request's own context: what jobs it submits continue from.
    pub trace: TraceParent,
}

/// The request's context (a fresh one if the middleware did not run).
pub fn context(req: &HttpRequest) -> RequestContext {
    req.extensions()
        .get::<RequestContext>()
        .cloned()
        .unwrap_or_else(|| RequestContext {
            request_id: Uuid::new_v4().to_string(),
            trace: TraceParent::new_root(),
        })
}

fn incoming_request_id(req: &ServiceRequest) -> Option<String> {
    let v = req.headers().get("x-request-id")?.to_str().ok()?;
    (!v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .then(|| v.to_owned())
}

pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let request_id = incoming_request_id(&req).unwrap_or_else(|| Uuid::new_v4().to_string());
    let route = req.match_pattern().unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let incoming = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(TraceParent::parse);
    let span = tracing::info_span!(
        "request",
        otel.name = %format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = Empty,
        request_id = %request_id,
        trace_id = Empty,
        tenant_id = Empty,
        job_id = Empty,
    );
    if let Some(parent) = &incoming {
        maas_core::telemetry::set_parent(&span, parent);
    }
    let trace = maas_core::telemetry::context_of(&span).unwrap_or_else(|| {
        incoming
            .as_ref()
            .map_or_else(TraceParent::new_root, TraceParent::child)
    });
    span.record("trace_id", trace.trace_id_hex());
    req.extensions_mut().insert(RequestContext {
        request_id: request_id.clone(),
        trace,
    });
    let mut res = next.call(req).instrument(span.clone()).await?;
    let status = res.status().as_u16();
    let elapsed = started.elapsed();
    HTTP_DURATION
        .with_label_values(&[&route, &method, &status.to_string()])
        .observe(elapsed.as_secs_f64());
    span.record("http.response.status_code", status);
    span.in_scope(|| {
        tracing::info!(
            status,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            "request"
        )
    });
    if let (Ok(n), Ok(v)) = (
        HeaderName::try_from("x-request-id"),
        HeaderValue::try_from(request_id),
    ) {
        res.headers_mut().insert(n, v);
    }
    Ok(res)
}

/// `GET /metrics`: the Prometheus text format.
pub async fn serve_metrics() -> HttpResponse {
    HttpResponse::Ok()
        .content_type(metrics::CONTENT_TYPE)
        .body(metrics::render())
}
