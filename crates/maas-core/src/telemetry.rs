//! Logging and tracing shared by the three binaries.
//!
//! Logs: JSON lines (the default, for machines) or text (for people),
//! filtered by `RUST_LOG`, on stderr so stdout stays free for the one
//! "listening on" line tests and scripts read. Each JSON line carries the
//! fields of the spans it was logged in (`spans`: request id, tenant id, job
//! id, trace id), never a prompt, input or output.
//!
//! Traces: with `OTEL_EXPORTER_OTLP_ENDPOINT` set, spans go to that OTLP
//! endpoint over HTTP (`OTEL_EXPORTER_OTLP_PROTOCOL`: `http/protobuf`, the
//! default, or `http/json`), named by `OTEL_SERVICE_NAME` (default: the
//! binary's name), batched on a thread of their own. Unset, no exporter and no
//! OpenTelemetry layer exist: tracing costs what logging costs. The W3C trace
//! context travels in HTTP and AMQP `traceparent` headers, so the spans of one
//! job in api, scheduler and worker share one trace.

use crate::trace::TraceParent;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer as _,
    TracerProvider as _,
};
use opentelemetry::Context;
pub use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::SystemTime;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

/// `MAAS_LOG_FORMAT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "json" => Ok(Self::Json),
            "text" => Ok(Self::Text),
            other => Err(format!(
                "unknown log format '{other}' (expected json or text)"
            )),
        }
    }
}

struct Otel {
    provider: SdkTracerProvider,
    tracer: opentelemetry_sdk::trace::SdkTracer,
}

static OTEL: OnceLock<Otel> = OnceLock::new();

/// Whether spans are exported.
pub fn enabled() -> bool {
    OTEL.get().is_some()
}

fn exporter_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var(v).is_ok_and(|s| !s.trim().is_empty()))
}

fn start_otel(service: &'static str) -> Result<&'static Otel, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| e.to_string())?;
    let name = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| service.to_owned());
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(name)
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer(service);
    opentelemetry::global::set_tracer_provider(provider.clone());
    Ok(OTEL.get_or_init(|| Otel { provider, tracer }))
}

/// Installs the global subscriber (and the OTLP exporter when configured).
/// Safe to call once per process.
pub fn init(service: &'static str, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,lapin=warn"));
    let logs = match format {
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Text => fmt::layer()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let mut otel_error = None;
    let otel = if exporter_configured() {
        match start_otel(service) {
            Ok(o) => Some(tracing_opentelemetry::layer().with_tracer(o.tracer.clone())),
            Err(e) => {
                otel_error = Some(e);
                None
            }
        }
    } else {
        None
    };
    let result = tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(otel)
        .try_init();
    if result.is_ok() && format == LogFormat::Json {
        // A panic is logged as one JSON line too, not as free text.
        std::panic::set_hook(Box::new(|info| {
            let message = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_default();
            let location = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_default();
            let thread = std::thread::current()
                .name()
                .unwrap_or("unnamed")
                .to_owned();
            tracing::error!(panic.message = %message, panic.location = %location, thread = %thread, "panic");
        }));
    }
    if result.is_ok() {
        tracing::debug!(service, traces = enabled(), "logging initialised");
    }
    if let Some(e) = otel_error {
        tracing::warn!(error = %e, "OTLP exporter not started; spans are not exported");
    }
}

/// Sends the spans still buffered; call before the process exits.
pub fn shutdown() {
    if let Some(o) = OTEL.get() {
        if let Err(e) = o.provider.shutdown() {
            eprintln!("flushing spans at exit failed: {e}");
        }
    }
}

fn span_context(tp: &TraceParent) -> SpanContext {
    let flags = if tp.sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    SpanContext::new(
        TraceId::from_bytes(tp.trace_id),
        SpanId::from_bytes(tp.span_id),
        flags,
        true,
        TraceState::default(),
    )
}

fn traceparent(sc: &SpanContext) -> Option<TraceParent> {
    sc.is_valid().then(|| TraceParent {
        trace_id: sc.trace_id().to_bytes(),
        span_id: sc.span_id().to_bytes(),
        sampled: sc.is_sampled(),
    })
}

/// Makes `span` a child of the remote context `parent` (a no-op while
/// traces are not exported).
pub fn set_parent(span: &tracing::Span, parent: &TraceParent) {
    if enabled() {
        let _ = span.set_parent(Context::new().with_remote_span_context(span_context(parent)));
    }
}

/// The context to hand to the next hop from inside `span`: its own ids when
/// traces are exported, `None` otherwise.
pub fn context_of(span: &tracing::Span) -> Option<TraceParent> {
    if !enabled() {
        return None;
    }
    traceparent(span.context().span().span_context())
}

/// Links `span` (a batch) to the span of one request it serves.
pub fn link(span: &tracing::Span, to: &TraceParent) {
    if enabled() {
        span.add_link(span_context(to));
    }
}

/// Records a finished span with explicit times, child of `parent` (for
/// intervals known only afterwards, such as a job's wait in the queue).
/// Returns its context, for spans that follow from it.
pub fn record_span(
    name: &'static str,
    parent: &TraceParent,
    start: SystemTime,
    end: SystemTime,
    attributes: Vec<KeyValue>,
) -> Option<TraceParent> {
    let o = OTEL.get()?;
    let cx = Context::new().with_remote_span_context(span_context(parent));
    let mut span = o
        .tracer
        .span_builder(name)
        .with_start_time(start)
        .with_attributes(attributes)
        .start_with_context(&o.tracer, &cx);
    let own = traceparent(span.span_context());
    span.end_with_timestamp(end);
    own
}
