//! Every error code the platform answers with, in one table: the `code` of
//! OpenAI's error object on HTTP errors, of a failed job's `error`, and of a
//! stream's error event. Codes are stable (programs match on them); each is
//! documented in `docs/errors.md`, which a test checks.

use serde::{Serialize, Serializer};

macro_rules! codes {
    ($($(#[$doc:meta])* $variant:ident => $s:literal,)+) => {
        /// A stable error code.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Code {
            $($(#[$doc])* $variant,)+
        }

        impl Code {
            /// Every code, in table order.
            pub const ALL: &'static [Code] = &[$(Code::$variant,)+];

            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Code::$variant => $s,)+
                }
            }
        }
    };
}

codes! {
    // 400
    /// A malformed request or an invalid field.
    InvalidRequest => "invalid_request",
    /// The endpoint's capability is not the model's (embeddings of a chat model).
    ModelNotSupported => "model_not_supported",
    /// A feature the platform does not offer yet.
    UnsupportedParameter => "unsupported_parameter",
    // 401
    MissingApiKey => "missing_api_key",
    InvalidApiKey => "invalid_api_key",
    ExpiredApiKey => "expired_api_key",
    MissingToken => "missing_token",
    InvalidToken => "invalid_token",
    // 403
    NotAdmin => "not_admin",
    InsufficientScope => "insufficient_scope",
    TenantDisabled => "tenant_disabled",
    // 404
    NotFound => "not_found",
    ModelNotFound => "model_not_found",
    UnknownRoute => "unknown_route",
    // 405
    MethodNotAllowed => "method_not_allowed",
    // 409
    Conflict => "conflict",
    JobNotCompleted => "job_not_completed",
    JobNotCancellable => "job_not_cancellable",
    /// A batch that has already ended cannot be cancelled.
    BatchNotCancellable => "batch_not_cancellable",
    /// A label may only point at a version ready on some worker.
    VersionNotReady => "version_not_ready",
    /// A version a label points at cannot be unloaded.
    VersionInUse => "version_in_use",
    // 413, 415
    PayloadTooLarge => "payload_too_large",
    UnsupportedMediaType => "unsupported_media_type",
    // 429
    RateLimitExceeded => "rate_limit_exceeded",
    ConcurrencyLimitExceeded => "concurrency_limit_exceeded",
    InsufficientQuota => "insufficient_quota",
    // 500, 503, 504
    InternalError => "internal_error",
    ServiceUnavailable => "service_unavailable",
    ModelUnavailable => "model_unavailable",
    Timeout => "timeout",
    // Job errors
    Cancelled => "cancelled",
    Expired => "expired",
    WorkerLost => "worker_lost",
    EnqueueFailed => "enqueue_failed",
    ResultRejected => "result_rejected",
    InvalidInput => "invalid_input",
    ModelError => "model_error",
    OutputTooLarge => "output_too_large",
    // Stream errors
    GenerationFailed => "generation_failed",
}

impl Code {
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| c.as_str() == s)
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Code {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_parse_back() {
        let mut seen = std::collections::HashSet::new();
        for c in Code::ALL {
            assert!(seen.insert(c.as_str()), "{c} twice");
            assert_eq!(Code::parse(c.as_str()), Some(*c));
        }
    }

    #[test]
    fn every_code_is_documented() {
        let doc = include_str!("../../../docs/errors.md");
        let missing: Vec<_> = Code::ALL
            .iter()
            .filter(|c| !doc.contains(&format!("`{}`", c.as_str())))
            .collect();
        assert!(
            missing.is_empty(),
            "codes missing from docs/errors.md: {missing:?}"
        );
    }
}
