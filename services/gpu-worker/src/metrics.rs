//! The worker's metrics (served at `/metrics` on its health endpoint).

use maas_core::metrics::{
    self, register_histogram_vec, register_int_counter_vec, register_int_gauge_vec, HistogramVec,
    IntCounterVec, IntGaugeVec,
};
use std::sync::LazyLock;

fn histogram(name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> HistogramVec {
    register_histogram_vec!(name, help, labels, buckets.to_vec()).expect("metric registers once")
}

pub static BATCH_SIZE: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram(
        "maas_batch_size",
        "Sequences per forward pass (an embedding batch, or a chat engine step), by model",
        &["model"],
        metrics::COUNT_BUCKETS,
    )
});

pub static BATCH_TOKENS: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram(
        "maas_batch_tokens",
        "Tokens per forward pass, by model",
        &["model"],
        metrics::COUNT_BUCKETS,
    )
});

pub static TIME_TO_FIRST_TOKEN: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram(
        "maas_time_to_first_token_seconds",
        "From a chat job's creation (its request's arrival) to its first generated token, by model",
        &["model"],
        metrics::LATENCY_BUCKETS,
    )
});

pub static INTER_TOKEN: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram(
        "maas_inter_token_latency_seconds",
        "Time between consecutive generated tokens of one chat job, by model",
        &["model"],
        metrics::LATENCY_BUCKETS,
    )
});

pub static END_TO_END: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram(
        "maas_job_end_to_end_seconds",
        "From a job's creation to its recorded result, by model and final status",
        &["model", "status"],
        metrics::LATENCY_BUCKETS,
    )
});

pub static INFERENCE: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram(
        "maas_job_inference_seconds",
        "Time a job spent running on its worker, by model and version",
        &["model", "version"],
        metrics::LATENCY_BUCKETS,
    )
});

pub static JOBS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "maas_worker_jobs_total",
        "Attempts that ended on this worker, by model, version and outcome (succeeded, failed, cancelled, dropped)",
        &["model", "version", "outcome"]
    )
    .expect("metric registers once")
});

pub static BATCH_LINES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "maas_batch_api_lines_total",
        "Batch API lines that ended on this worker, by tenant, model and outcome (succeeded, failed); its rate is lines per second",
        &["tenant", "model", "outcome"]
    )
    .expect("metric registers once")
});

pub static TOKENS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "maas_tokens_total",
        "Tokens of succeeded jobs, by model, kind (prompt, completion) and tenant",
        &["model", "kind", "tenant"]
    )
    .expect("metric registers once")
});

pub static SLOTS_BUSY: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "maas_worker_slots_busy",
        "Jobs this worker is running now, by model and version",
        &["model", "version"]
    )
    .expect("metric registers once")
});

pub static SLOTS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "maas_worker_slots",
        "Slots this worker offers, by model and version",
        &["model", "version"]
    )
    .expect("metric registers once")
});
