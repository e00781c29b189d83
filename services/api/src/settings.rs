//! Typed settings of the API service.

use maas_core::settings::CommonSettings;
use maas_core::Secret;
use std::net::SocketAddr;

#[derive(Debug, Clone, clap::Args)]
pub struct ApiSettings {
    #[command(flatten)]
    pub common: CommonSettings,

    /// Address the HTTP server binds (port 0 picks a free port).
    #[arg(long, env = "MAAS_API_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// HS256 key of admin tokens. Required unless --dev is given.
    #[arg(long, env = "MAAS_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<Secret>,

    /// Development mode: allows starting without MAAS_JWT_SECRET (a fixed,
    /// public key is used, so admin tokens are forgeable). Never in production.
    #[arg(long, env = "MAAS_DEV")]
    pub dev: bool,

    /// Largest accepted request body, in bytes (larger: 413).
    #[arg(long, env = "MAAS_API_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Most queued jobs on the whole platform: past it, new work gets 503
    /// with Retry-After.
    #[arg(long, env = "MAAS_API_MAX_QUEUED_JOBS", default_value_t = 100_000)]
    pub max_queued_jobs: i64,

    /// How long a sync call waits by default before answering 202.
    #[arg(long, env = "MAAS_API_SYNC_TIMEOUT_MS", default_value_t = 30_000)]
    pub sync_timeout_ms: u64,

    /// Upper bound of a request's `timeout_ms`.
    #[arg(long, env = "MAAS_API_MAX_SYNC_TIMEOUT_MS", default_value_t = 600_000)]
    pub max_sync_timeout_ms: u64,

    /// Seconds the server gives in-flight requests to finish on SIGTERM.
    #[arg(long, env = "MAAS_API_SHUTDOWN_TIMEOUT_SECS", default_value_t = 30)]
    pub shutdown_timeout_secs: u64,

    /// Where file content lives: `postgres` (shared by every replica), or an
    /// object store URL such as `s3://bucket/prefix` (endpoint and
    /// credentials from the `AWS_*` variables) or `file:///dir` (one host).
    #[arg(long, env = "MAAS_FILE_STORE", default_value = "postgres")]
    pub file_store: String,

    /// Largest uploaded file, in bytes (a tenant's override may change it).
    #[arg(long, env = "MAAS_FILES_MAX_BYTES", default_value_t = 200 * 1024 * 1024)]
    pub files_max_bytes: i64,

    /// Most bytes all of a tenant's files may take together.
    #[arg(long, env = "MAAS_FILES_MAX_STORED_BYTES", default_value_t = 10 * 1024 * 1024 * 1024)]
    pub files_max_stored_bytes: i64,

    /// Most lines (requests) in one batch.
    #[arg(long, env = "MAAS_BATCH_MAX_LINES", default_value_t = 50_000)]
    pub batch_max_lines: i64,

    /// Most tokens (the sum of each line's bound) a tenant's unfinished batch
    /// lines may hold; a batch past it is refused at create (429).
    #[arg(
        long,
        env = "MAAS_BATCH_MAX_ENQUEUED_TOKENS",
        default_value_t = 50_000_000
    )]
    pub batch_max_enqueued_tokens: i64,

    /// Seconds a batch input file is kept when its upload names no expiry.
    #[arg(long, env = "MAAS_FILES_DEFAULT_EXPIRY_SECS", default_value_t = 30 * 24 * 3600)]
    pub files_default_expiry_secs: i64,

    /// How often each replica looks for batches to end, in milliseconds.
    #[arg(long, env = "MAAS_BATCH_FINALIZE_MS", default_value_t = 1000)]
    pub batch_finalize_ms: u64,

    /// How often expired files are deleted, in seconds.
    #[arg(long, env = "MAAS_FILES_SWEEP_SECS", default_value_t = 60)]
    pub files_sweep_secs: u64,

    /// Seconds between a webhook delivery's attempts after the first fails,
    /// comma-separated; one more than their number is the attempts in all.
    /// The default retries for about three and a half days.
    #[arg(
        long,
        env = "MAAS_WEBHOOK_RETRY_SCHEDULE",
        default_value = "5,300,1800,7200,18000,36000,36000,86400,86400,86400",
        value_parser = parse_schedule
    )]
    pub webhook_retry_schedule: Schedule,

    /// Allow webhook endpoints on private, loopback and link-local addresses,
    /// and over plain http (development and tests only).
    #[arg(long, env = "MAAS_WEBHOOK_ALLOW_PRIVATE", default_value_t = false)]
    pub webhook_allow_private: bool,

    /// Seconds a webhook attempt may take before it counts as failed.
    #[arg(long, env = "MAAS_WEBHOOK_TIMEOUT_SECS", default_value_t = 15)]
    pub webhook_timeout_secs: u64,

    /// Webhook endpoints a tenant may register.
    #[arg(long, env = "MAAS_WEBHOOK_MAX_ENDPOINTS", default_value_t = 10)]
    pub webhook_max_endpoints: i64,

    /// Days an ended webhook delivery stays in the delivery log.
    #[arg(long, env = "MAAS_WEBHOOK_LOG_DAYS", default_value_t = 30)]
    pub webhook_log_days: i64,

    /// HTTP worker threads (default: one per core).
    #[arg(long, env = "MAAS_API_WORKERS")]
    pub workers: Option<usize>,
}

/// Seconds between retries (see `MAAS_WEBHOOK_RETRY_SCHEDULE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule(pub Vec<u64>);

fn parse_schedule(s: &str) -> Result<Schedule, String> {
    let v = s
        .split(',')
        .map(|p| {
            p.trim()
                .parse::<u64>()
                .map_err(|_| format!("'{p}' is not a number of seconds"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if v.is_empty() || v.len() > 50 {
        return Err("give 1 to 50 retry delays".into());
    }
    Ok(Schedule(v))
}

/// The public development key used with `--dev` when no secret is set.
pub const DEV_JWT_SECRET: &str = "maas-dev-insecure-secret";

impl ApiSettings {
    /// The signing key, or an error when none is configured outside dev mode.
    pub fn jwt_key(&self) -> Result<Secret, String> {
        match (&self.jwt_secret, self.dev) {
            (Some(s), _) if !s.expose().is_empty() => Ok(s.clone()),
            (_, true) => Ok(Secret::new(DEV_JWT_SECRET)),
            _ => Err("MAAS_JWT_SECRET is not set (set it, or pass --dev / MAAS_DEV=true for a local sandbox)".into()),
        }
    }
}
