//! Prometheus metrics: every service registers its own in the process-wide
//! registry and serves them at `/metrics` (text format). Per-tenant series
//! are bounded: the first `MAAS_METRICS_MAX_TENANTS` tenants seen by a
//! process get a label of their own (the tenant id, never a key), the rest
//! share `other`.

use prometheus::{Encoder, TextEncoder};
use std::collections::HashSet;
use std::sync::{LazyLock, Mutex};
use uuid::Uuid;

pub use prometheus::{
    register_histogram_vec, register_int_counter_vec, register_int_gauge_vec, HistogramVec,
    IntCounterVec, IntGaugeVec,
};

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Buckets for latencies from 1 ms to 2 min.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Buckets for counts (batch sizes, tokens).
pub const COUNT_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0,
    16384.0,
];

/// Every registered metric in the Prometheus text format.
pub fn render() -> String {
    let mut out = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&prometheus::gather(), &mut out) {
        tracing::warn!(error = %e, "could not encode metrics");
    }
    String::from_utf8(out).unwrap_or_default()
}

static TENANTS: LazyLock<Mutex<HashSet<Uuid>>> = LazyLock::new(Mutex::default);

fn max_tenants() -> usize {
    static MAX: LazyLock<usize> = LazyLock::new(|| {
        std::env::var("MAAS_METRICS_MAX_TENANTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(100)
    });
    *MAX
}

/// A route key (`name@version`) as the `model` and `version` labels.
pub fn model_labels(route: &str) -> (&str, &str) {
    route.split_once('@').unwrap_or((route, ""))
}

/// The `tenant` label of `id`: its id while fewer than the cap have been
/// seen, `other` past it.
pub fn tenant_label(id: Uuid) -> String {
    let Ok(mut seen) = TENANTS.lock() else {
        return "other".into();
    };
    if seen.contains(&id) || (seen.len() < max_tenants() && seen.insert(id)) {
        id.to_string()
    } else {
        "other".into()
    }
}
