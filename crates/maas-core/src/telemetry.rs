//! Logging setup shared by the three binaries: JSON lines (the default, for
//! machines) or text (for people), filtered by `RUST_LOG`, written to stderr so
//! stdout stays free for the one "listening on" line tests and scripts read.

use std::io::IsTerminal;
use tracing_subscriber::{fmt, EnvFilter};

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
            other => Err(format!("unknown log format '{other}' (expected json or text)")),
        }
    }
}

/// Installs the global subscriber. Safe to call once per process.
pub fn init(service: &'static str, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,lapin=warn"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).try_init(),
    };
    if result.is_ok() {
        tracing::debug!(service, "logging initialised");
    }
}
