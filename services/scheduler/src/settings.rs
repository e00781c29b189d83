//! Typed settings of the scheduler.

use maas_core::settings::CommonSettings;
use std::net::SocketAddr;

#[derive(Debug, Clone, clap::Args)]
pub struct SchedulerSettings {
    #[command(flatten)]
    pub common: CommonSettings,

    /// Address of the health endpoints (port 0 picks a free port).
    #[arg(long, env = "MAAS_SCHEDULER_LISTEN", default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,

    /// A worker not heard from for this long is declared dead and its jobs
    /// are dispatched again.
    #[arg(
        long,
        env = "MAAS_SCHEDULER_HEARTBEAT_TIMEOUT_MS",
        default_value_t = 5_000
    )]
    pub heartbeat_timeout_ms: u64,

    /// Attempts of a job before it is failed and dead-lettered.
    #[arg(long, env = "MAAS_SCHEDULER_MAX_ATTEMPTS", default_value_t = 3)]
    pub max_attempts: i32,

    /// A batch job waiting this long is served before interactive work.
    #[arg(long, env = "MAAS_SCHEDULER_BATCH_AGING_MS", default_value_t = 10_000)]
    pub batch_aging_ms: u64,

    /// Jobs not started within this many seconds end `expired`.
    #[arg(long, env = "MAAS_JOB_EXPIRY_SECS", default_value_t = 24 * 3600)]
    pub job_expiry_secs: i64,

    /// Inputs and outputs of finished jobs are deleted after this many seconds.
    #[arg(long, env = "MAAS_JOB_RETENTION_SECS", default_value_t = 7 * 24 * 3600)]
    pub job_retention_secs: i64,

    /// How often expiry and retention are swept.
    #[arg(long, env = "MAAS_SCHEDULER_SWEEP_SECS", default_value_t = 30)]
    pub sweep_secs: u64,
}
