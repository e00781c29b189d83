//! Settings every service shares. Each service flattens [`CommonSettings`]
//! into its own typed settings; values come from flags or `MAAS_*` variables,
//! with the defaults of the project's contract.

use crate::telemetry::LogFormat;

#[derive(Debug, Clone, clap::Args)]
pub struct CommonSettings {
    /// Postgres, the source of truth.
    #[arg(
        long,
        env = "MAAS_DATABASE_URL",
        hide_env_values = true,
        default_value = "postgres://postgres@127.0.0.1:5432/maas"
    )]
    pub database_url: String,

    /// Redis (a `/N` database index is honoured).
    #[arg(
        long,
        env = "MAAS_REDIS_URL",
        hide_env_values = true,
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,

    /// RabbitMQ (the vhost is honoured).
    #[arg(
        long,
        env = "MAAS_AMQP_URL",
        hide_env_values = true,
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: String,

    /// Prefix of every queue, exchange and Redis key, so several platforms
    /// (or test runs) can share one broker and one Redis.
    #[arg(long, env = "MAAS_NAMESPACE", default_value = "maas", value_parser = parse_namespace)]
    pub namespace: String,

    /// `json` (default) or `text`.
    #[arg(long, env = "MAAS_LOG_FORMAT", default_value = "json")]
    pub log_format: LogFormat,

    /// When set, the shared durable queues are deleted by the broker after
    /// this long unused (throw-away environments such as tests).
    #[arg(long, env = "MAAS_AMQP_QUEUE_EXPIRES_MS")]
    pub amqp_queue_expires_ms: Option<u32>,

    /// Longest wait for a Postgres connection from a service's pool. While
    /// Postgres is away, a call fails after this long (the API answers 503).
    #[arg(long, env = "MAAS_DB_ACQUIRE_TIMEOUT_MS", default_value_t = 1_500)]
    pub db_acquire_timeout_ms: u64,

    /// `classic` (default) or `quorum`: the type of the shared durable
    /// queues (jobs, events, dead letters). Quorum queues replicate across
    /// the nodes of a clustered broker.
    #[arg(long, env = "MAAS_AMQP_QUEUE_TYPE", default_value = "classic", value_parser = ["classic", "quorum"])]
    pub amqp_queue_type: String,

    /// AMQP heartbeat: a broker that stops answering (a cut network, not
    /// only a closed socket) is noticed within about twice this.
    #[arg(long, env = "MAAS_AMQP_HEARTBEAT_SECS", default_value_t = 5)]
    pub amqp_heartbeat_secs: u16,

    /// Most messages the dead-letter queue keeps (the oldest go first).
    #[arg(long, env = "MAAS_AMQP_DEAD_LETTER_MAX", default_value_t = 10_000)]
    pub amqp_dead_letter_max: u32,

    /// How long a dead letter is kept, in milliseconds (default 7 days).
    #[arg(
        long,
        env = "MAAS_AMQP_DEAD_LETTER_TTL_MS",
        default_value_t = 604_800_000
    )]
    pub amqp_dead_letter_ttl_ms: u32,
}

impl CommonSettings {
    pub fn db_acquire_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.db_acquire_timeout_ms.max(100))
    }
}

fn parse_namespace(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(s.to_owned())
    } else {
        Err("namespace must be 1-64 characters of letters, digits, '-' or '_'".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_restricted_to_safe_characters() {
        assert!(parse_namespace("maas").is_ok());
        assert!(parse_namespace("t_1234-ab").is_ok());
        assert!(parse_namespace("").is_err());
        assert!(parse_namespace("a.b").is_err());
        assert!(parse_namespace("a:b").is_err());
    }
}
