//! Every HTTP error of the API, mapped in one place to OpenAI's error object
//! `{"error": {"message", "type", "param", "code"}}` with a stable `code`
//! (the table is in `docs/errors.md`).

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use maas_core::Code;
use serde::Serialize;
use std::fmt;

#[derive(Debug)]
pub enum ApiError {
    /// 400: the request is malformed or a field is invalid.
    InvalidRequest {
        message: String,
        param: Option<String>,
        code: Code,
    },
    /// 401: no credentials, or credentials that do not authenticate.
    Unauthenticated { message: String, code: Code },
    /// 403: authenticated, but not allowed.
    Forbidden { message: String, code: Code },
    /// 404: no such object (or it belongs to another tenant).
    NotFound { message: String, code: Code },
    /// 405: the route exists with another method.
    MethodNotAllowed,
    /// 409: the object's state forbids the action.
    Conflict { message: String, code: Code },
    /// 413: the body is larger than allowed.
    PayloadTooLarge { limit: usize },
    /// 415: the body is not JSON.
    UnsupportedMediaType,
    /// 429: a rate limit of the tenant is reached.
    RateLimited {
        message: String,
        retry_after_secs: u64,
    },
    /// 429: the tenant already has its `max_concurrent` requests in progress.
    TooManyConcurrent { max: i64 },
    /// 429: the token budget cannot cover the request.
    InsufficientQuota { message: String },
    /// 503: no worker serves this model at present.
    ModelUnavailable { model: String },
    /// 503: a dependency is unavailable; retry later.
    Unavailable {
        message: String,
        retry_after_secs: u64,
    },
    /// 504: a sync call's result was not ready in time.
    Timeout { message: String },
    /// 500: a bug or an unexpected failure; details go to the log only.
    Internal(String),
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorObject,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorObject {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub param: Option<String>,
    #[schema(value_type = String)]
    pub code: Code,
}

impl ApiError {
    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> Self {
        Self::InvalidRequest {
            message: message.into(),
            param: param.map(str::to_owned),
            code: Code::InvalidRequest,
        }
    }

    pub fn not_found(what: &str) -> Self {
        Self::NotFound {
            message: format!("{what} not found"),
            code: Code::NotFound,
        }
    }

    pub fn internal(e: impl fmt::Display) -> Self {
        Self::Internal(e.to_string())
    }

    fn parts(&self) -> (StatusCode, &'static str, String, Option<String>, Code) {
        match self {
            Self::InvalidRequest { message, param, code } => {
                (StatusCode::BAD_REQUEST, "invalid_request_error", message.clone(), param.clone(), *code)
            }
            Self::Unauthenticated { message, code } => {
                (StatusCode::UNAUTHORIZED, "authentication_error", message.clone(), None, *code)
            }
            Self::Forbidden { message, code } => (StatusCode::FORBIDDEN, "permission_error", message.clone(), None, *code),
            Self::NotFound { message, code } => {
                (StatusCode::NOT_FOUND, "invalid_request_error", message.clone(), None, *code)
            }
            Self::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request_error",
                "method not allowed on this route".into(),
                None,
                Code::MethodNotAllowed,
            ),
            Self::Conflict { message, code } => (StatusCode::CONFLICT, "invalid_request_error", message.clone(), None, *code),
            Self::PayloadTooLarge { limit } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                format!("request body is larger than the limit of {limit} bytes"),
                None,
                Code::PayloadTooLarge,
            ),
            Self::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "invalid_request_error",
                "the request body must be JSON (Content-Type: application/json)".into(),
                None,
                Code::UnsupportedMediaType,
            ),
            Self::ModelUnavailable { model } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                format!("no worker serves the model '{model}' at present; retry later"),
                Some("model".into()),
                Code::ModelUnavailable,
            ),
            Self::Unavailable { message, .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "service_unavailable", message.clone(), None, Code::ServiceUnavailable)
            }
            Self::RateLimited { message, .. } => {
                (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", message.clone(), None, Code::RateLimitExceeded)
            }
            Self::TooManyConcurrent { max } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                format!("this tenant already has {max} requests in progress (its max_concurrent); retry when one has finished"),
                None,
                Code::ConcurrencyLimitExceeded,
            ),
            Self::InsufficientQuota { message } => {
                (StatusCode::TOO_MANY_REQUESTS, "insufficient_quota", message.clone(), None, Code::InsufficientQuota)
            }
            Self::Timeout { message } => (StatusCode::GATEWAY_TIMEOUT, "timeout_error", message.clone(), None, Code::Timeout),
            Self::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "internal error; the request may be retried".into(),
                None,
                Code::InternalError,
            ),
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (status, _, message, _, code) = self.parts();
        write!(f, "{status} {code}: {message}")
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.parts().0
    }

    fn error_response(&self) -> HttpResponse {
        let (status, kind, message, param, code) = self.parts();
        if let Self::Internal(detail) = self {
            tracing::error!(error = %detail, "internal error");
        }
        let mut resp = HttpResponse::build(status);
        match self {
            Self::Unavailable {
                retry_after_secs, ..
            }
            | Self::RateLimited {
                retry_after_secs, ..
            } => {
                resp.insert_header((header::RETRY_AFTER, retry_after_secs.to_string()));
            }
            Self::TooManyConcurrent { .. } => {
                resp.insert_header((header::RETRY_AFTER, "1"));
            }
            Self::ModelUnavailable { .. } => {
                resp.insert_header((header::RETRY_AFTER, "5"));
            }
            // Refusals that a retry cannot change: the official client
            // retries 409 and 429 unless told not to.
            Self::Conflict { .. }
            | Self::InsufficientQuota { .. }
            | Self::PayloadTooLarge { .. } => {
                resp.insert_header(("x-should-retry", "false"));
            }
            _ => {}
        }
        resp.json(ErrorBody {
            error: ErrorObject {
                message,
                kind,
                param,
                code,
            },
        })
    }
}

fn e_is_unavailable(m: &sqlx::migrate::MigrateError) -> bool {
    matches!(m, sqlx::migrate::MigrateError::Execute(e) if maas_store::is_unavailable(e))
}

impl From<maas_store::StoreError> for ApiError {
    fn from(e: maas_store::StoreError) -> Self {
        match e {
            maas_store::StoreError::Conflict(what) => {
                Self::Conflict { message: format!("an object with this {what} already exists"), code: Code::Conflict }
            }
            maas_store::StoreError::Db(ref db) if maas_store::is_unavailable(db) => {
                Self::Unavailable { message: "the database is busy or unreachable; retry".into(), retry_after_secs: 2 }
            }
            // Text Postgres cannot store (a NUL character, invalid encoding) is bad input.
            maas_store::StoreError::Db(sqlx::Error::Database(db))
                if matches!(db.code().as_deref(), Some("22P05") | Some("22021")) =>
            {
                Self::invalid("the request contains characters that cannot be stored (such as \\u0000)", None)
            }
            maas_store::StoreError::Db(other) => Self::Internal(other.to_string()),
            maas_store::StoreError::TenantQueueFull { max } => Self::RateLimited {
                message: format!("this tenant already has {max} unfinished jobs (its max_queued); retry when some have finished"),
                retry_after_secs: 1,
            },
            maas_store::StoreError::TenantBusy { max } => Self::TooManyConcurrent { max },
            maas_store::StoreError::BudgetExhausted { limit, period, remaining, needed } => Self::InsufficientQuota {
                message: format!(
                    "the token budget ({limit} tokens per {}) has {remaining} tokens left and this request may use up to {needed}; \
                     wait for the next period, lower max_tokens, or ask for a larger budget",
                    period.as_str()
                ),
            },
            maas_store::StoreError::QueueFull { max } => Self::Unavailable {
                message: format!("the platform's queue is full ({max} jobs waiting); retry later"),
                retry_after_secs: 5,
            },
            maas_store::StoreError::StorageFull { limit, used } => Self::InsufficientQuota {
                message: format!(
                    "this tenant's files take {used} of its {limit} bytes of storage and this file does not fit; \
                     delete files or ask for more storage"
                ),
            },
            maas_store::StoreError::EnqueuedTokensExceeded { limit, held, needed } => Self::InsufficientQuota {
                message: format!(
                    "this batch may use up to {needed} tokens and this tenant's unfinished batches already hold {held} \
                     of its {limit} enqueued tokens; wait for them to finish, or split the batch"
                ),
            },
            maas_store::StoreError::Object(e) => {
                tracing::warn!(error = %e, "object store unavailable");
                Self::Unavailable { message: "the file store is unreachable; retry".into(), retry_after_secs: 2 }
            }
            maas_store::StoreError::Migrate(ref m) if e_is_unavailable(m) => {
                Self::Unavailable { message: "the database is busy or unreachable; retry".into(), retry_after_secs: 2 }
            }
            maas_store::StoreError::Migrate(other) => Self::Internal(other.to_string()),
            // Redis errors reach a response only where Redis must be written
            // (an admin change that every replica must see): unavailable.
            maas_store::StoreError::Redis(_) => {
                Self::Unavailable { message: "the shared cache is unreachable; retry".into(), retry_after_secs: 2 }
            }
        }
    }
}
