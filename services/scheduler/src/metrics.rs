//! The scheduler's metrics (served at `/metrics` on its health endpoint).

use maas_core::metrics::{
    self, register_histogram_vec, register_int_counter_vec, register_int_gauge_vec, HistogramVec,
    IntCounterVec, IntGaugeVec,
};
use std::sync::LazyLock;

pub static QUEUE_DEPTH: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "maas_queue_depth",
        "Jobs waiting in the scheduler's queues, by model and lane",
        &["model", "version", "lane"]
    )
    .expect("metric registers once")
});

pub static QUEUE_WAIT: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "maas_queue_wait_seconds",
        "From a job's creation to its dispatch to a worker, by model and lane",
        &["model", "version", "lane"],
        metrics::LATENCY_BUCKETS.to_vec()
    )
    .expect("metric registers once")
});

pub static DISPATCHES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "maas_dispatches_total",
        "Jobs dispatched to workers, by model and tenant",
        &["model", "version", "tenant"]
    )
    .expect("metric registers once")
});

pub static SLOTS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "maas_scheduler_slots",
        "Worker slots the scheduler knows of, by model and state (total, used)",
        &["model", "version", "state"]
    )
    .expect("metric registers once")
});

pub static RECOVERIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "maas_job_recoveries_total",
        "Jobs taken back from a lost worker or a lost dispatch, by outcome (requeued, failed)",
        &["outcome"]
    )
    .expect("metric registers once")
});

pub static EXPIRED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "maas_jobs_expired_total",
        "Jobs that expired in the queue, by model",
        &["model", "version"]
    )
    .expect("metric registers once")
});
