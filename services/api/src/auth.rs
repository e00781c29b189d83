//! Authentication: tenant API keys (`Authorization: Bearer maas_sk_...`) and
//! admin JWTs (HS256, `iss` = "maas", `aud` = "maas-admin", `role` = "admin").
//!
//! Both are decided before any admission step, so a refused request consumes
//! nothing. Keys are looked up by their public prefix in the Redis key cache,
//! then Postgres; the hash is compared in constant time. Revocation deletes the
//! cache entry, so every replica sees it on the next request.

use crate::error::ApiError;
use crate::state::AppState;
use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{web, FromRequest, HttpRequest};
use chrono::Utc;
use futures_util::future::LocalBoxFuture;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use maas_core::apikey::PresentedKey;
use maas_core::Code;
use maas_core::Secret;
use maas_store::keys::{self, KeyAuth};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Endpoint families a key can be scoped to.
pub const FAMILIES: [&str; 7] = [
    "jobs",
    "embeddings",
    "chat",
    "completions",
    "batches",
    "files",
    "webhooks",
];

/// Checks a requested scope list: families, or `model:<name>` of a known model.
/// `known` says whether a name is a registered model.
pub fn validate_scopes(scopes: &[String], known: &dyn Fn(&str) -> bool) -> Result<(), ApiError> {
    if scopes.is_empty() {
        return Err(ApiError::invalid(
            "scopes must not be empty; omit the field for a key with every scope",
            Some("scopes"),
        ));
    }
    for s in scopes {
        let ok = FAMILIES.contains(&s.as_str()) || s.strip_prefix("model:").is_some_and(known);
        if !ok {
            return Err(ApiError::invalid(
                format!("unknown scope '{s}'; expected one of {FAMILIES:?} or model:<name> of a known model"),
                Some("scopes"),
            ));
        }
    }
    Ok(())
}

/// The tenant behind a valid API key.
#[derive(Debug, Clone)]
pub struct Principal {
    pub tenant_id: Uuid,
    pub key_id: Uuid,
    pub scopes: Option<Vec<String>>,
    /// The request's rate-limit state, for the response headers.
    pub rate: crate::ratelimit::SharedRateHeaders,
    /// The key's own rate limits.
    pub limits: keys::KeyLimits,
    /// The models the tenant may use (`None`: every model); any other is
    /// answered as if it did not exist.
    pub allowed_models: Option<Vec<String>>,
}

impl Principal {
    /// Whether the tenant may see and use `model`.
    pub fn may_use(&self, model: &str) -> bool {
        self.allowed_models
            .as_ref()
            .is_none_or(|allow| allow.iter().any(|m| m == model))
    }

    /// Family scopes restrict families when present; `model:` scopes restrict
    /// models when present; a key without scopes may do everything.
    pub fn require(&self, family: &str, model: Option<&str>) -> Result<(), ApiError> {
        let Some(scopes) = &self.scopes else {
            return Ok(());
        };
        let families: Vec<&str> = scopes
            .iter()
            .map(String::as_str)
            .filter(|s| !s.starts_with("model:"))
            .collect();
        if !families.is_empty() && !families.contains(&family) {
            return Err(ApiError::Forbidden {
                message: format!("this API key is not allowed to use '{family}' endpoints"),
                code: Code::InsufficientScope,
            });
        }
        if let Some(model) = model {
            let models: Vec<&str> = scopes
                .iter()
                .filter_map(|s| s.strip_prefix("model:"))
                .collect();
            if !models.is_empty() && !models.contains(&model) {
                return Err(ApiError::Forbidden {
                    message: format!("this API key is not allowed to use model '{model}'"),
                    code: Code::InsufficientScope,
                });
            }
        }
        Ok(())
    }
}

fn bearer(req: &HttpRequest) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

fn invalid_key() -> ApiError {
    ApiError::Unauthenticated {
        message: "invalid API key".into(),
        code: Code::InvalidApiKey,
    }
}

async fn authenticate(state: &AppState, token: Option<&str>) -> Result<Principal, ApiError> {
    let token = token.ok_or_else(|| ApiError::Unauthenticated {
        message: "missing API key: send 'Authorization: Bearer <key>'".into(),
        code: Code::MissingApiKey,
    })?;
    let presented = PresentedKey::parse(token).ok_or_else(invalid_key)?;
    let prefix = presented.prefix();
    let cached = match state.cache.get_key(prefix).await {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "key cache unavailable; reading Postgres");
            None
        }
    };
    let auth: KeyAuth = match cached {
        Some(a) => a,
        None => {
            let a = keys::auth_by_prefix(&state.db, prefix)
                .await?
                .ok_or_else(invalid_key)?;
            if let Err(e) = state.cache.fill_key(prefix, &a).await {
                tracing::warn!(error = %e, "could not cache key");
            }
            a
        }
    };
    if !presented.matches(&auth.secret_hash) {
        return Err(invalid_key());
    }
    if auth.revoked {
        return Err(ApiError::Unauthenticated {
            message: "this API key has been revoked".into(),
            code: Code::InvalidApiKey,
        });
    }
    if auth.expires_at.is_some_and(|t| t <= Utc::now()) {
        return Err(ApiError::Unauthenticated {
            message: "this API key has expired".into(),
            code: Code::ExpiredApiKey,
        });
    }
    if auth.tenant_disabled {
        return Err(ApiError::Forbidden {
            message: "this tenant is disabled".into(),
            code: Code::TenantDisabled,
        });
    }
    if state.key_touches.due(auth.id) {
        let db = state.db.clone();
        let key_id = auth.id;
        actix_web::rt::spawn(async move {
            if let Err(e) = keys::touch(&db, key_id).await {
                tracing::debug!(error = %e, "could not record key use");
            }
        });
    }
    Ok(Principal {
        tenant_id: auth.tenant_id,
        key_id: auth.id,
        scopes: auth.scopes,
        rate: Default::default(),
        limits: keys::KeyLimits {
            rpm: auth.rpm,
            tpm: auth.tpm,
        },
        allowed_models: auth.allowed_models,
    })
}

impl FromRequest for Principal {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        use actix_web::HttpMessage;
        let state = req.app_data::<web::Data<AppState>>().cloned();
        let token = bearer(req).map(str::to_owned);
        let rate = req
            .extensions()
            .get::<crate::ratelimit::SharedRateHeaders>()
            .cloned()
            .unwrap_or_default();
        Box::pin(async move {
            let state = state.ok_or_else(|| ApiError::internal("application state missing"))?;
            let mut principal = authenticate(&state, token.as_deref()).await?;
            // Only an authenticated request counts against its tenant's limit.
            principal.rate = rate;
            tracing::Span::current().record("tenant_id", principal.tenant_id.to_string());
            crate::ratelimit::admit_request(&state, &principal).await?;
            Ok(principal)
        })
    }
}

/// Claims of an admin token.
#[derive(Debug, Serialize, Deserialize)]
pub struct AdminClaims {
    pub sub: String,
    pub role: String,
    pub exp: i64,
    pub iss: String,
    pub aud: String,
}

pub const ISSUER: &str = "maas";
pub const AUDIENCE: &str = "maas-admin";

pub struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
}

impl JwtVerifier {
    pub fn new(secret: &Secret) -> Result<Self, String> {
        let key =
            DecodingKey::from_secret(secret.expose().as_bytes()).map_err(|e| e.to_string())?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[AUDIENCE]);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 5;
        validation.validate_exp = true;
        Ok(Self { key, validation })
    }

    pub fn verify(&self, token: &str) -> Result<AdminClaims, ApiError> {
        let data = jsonwebtoken::decode::<AdminClaims>(token, &self.key, &self.validation)
            .map_err(|e| ApiError::Unauthenticated {
                message: format!("invalid admin token: {e}"),
                code: Code::InvalidToken,
            })?;
        if data.claims.role != "admin" {
            return Err(ApiError::Forbidden {
                message: "this token does not carry the admin role".into(),
                code: Code::NotAdmin,
            });
        }
        Ok(data.claims)
    }
}

/// Mints an admin token (used by `maas-api admin-token` and by tests).
pub fn mint_admin_token(secret: &Secret, sub: &str, ttl_secs: i64) -> Result<String, String> {
    let claims = AdminClaims {
        sub: sub.to_owned(),
        role: "admin".into(),
        exp: Utc::now().timestamp() + ttl_secs,
        iss: ISSUER.into(),
        aud: AUDIENCE.into(),
    };
    let key = EncodingKey::from_secret(secret.expose().as_bytes()).map_err(|e| e.to_string())?;
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).map_err(|e| e.to_string())
}

/// An authenticated admin; `sub` is recorded in the audit log.
#[derive(Debug, Clone)]
pub struct Admin {
    pub sub: String,
}

impl FromRequest for Admin {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let result = (|| {
            let state = req
                .app_data::<web::Data<AppState>>()
                .ok_or_else(|| ApiError::internal("application state missing"))?;
            let token = bearer(req).ok_or_else(|| ApiError::Unauthenticated {
                message: "missing admin token: send 'Authorization: Bearer <jwt>'".into(),
                code: Code::MissingToken,
            })?;
            let claims = state.jwt.verify(token)?;
            Ok(Admin { sub: claims.sub })
        })();
        std::future::ready(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(scopes: Option<&[&str]>) -> Principal {
        Principal {
            tenant_id: Uuid::nil(),
            key_id: Uuid::nil(),
            scopes: scopes.map(|s| s.iter().map(|x| x.to_string()).collect()),
            rate: Default::default(),
            allowed_models: None,
            limits: Default::default(),
        }
    }

    #[test]
    fn a_key_without_scopes_may_do_everything() {
        let echo = "echo";
        assert!(principal(None).require("jobs", Some(echo)).is_ok());
    }

    #[test]
    fn family_and_model_scopes_restrict_independently() {
        let (echo, minilm) = ("echo", "all-minilm-l6-v2");
        let p = principal(Some(&["embeddings"]));
        assert!(p.require("embeddings", Some(minilm)).is_ok());
        assert!(p.require("chat", None).is_err());
        let p = principal(Some(&["jobs", "model:echo"]));
        assert!(p.require("jobs", Some(echo)).is_ok());
        assert!(p.require("jobs", Some(minilm)).is_err());
        let p = principal(Some(&["model:echo"]));
        assert!(p.require("jobs", Some(echo)).is_ok());
    }

    #[test]
    fn unknown_scopes_are_refused() {
        let known = |m: &str| m == "echo";
        assert!(validate_scopes(&["jobs".into(), "model:echo".into()], &known).is_ok());
        assert!(validate_scopes(&["admin".into()], &known).is_err());
        assert!(validate_scopes(&["model:gpt-4".into()], &known).is_err());
        assert!(validate_scopes(&[], &known).is_err());
    }

    #[test]
    fn tokens_are_checked_for_role_audience_and_signature() {
        let secret = Secret::new("s3cret");
        let v = JwtVerifier::new(&secret).unwrap();
        let good = mint_admin_token(&secret, "alice", 60).unwrap();
        assert_eq!(v.verify(&good).unwrap().sub, "alice");
        let other = mint_admin_token(&Secret::new("other"), "alice", 60).unwrap();
        assert!(matches!(
            v.verify(&other),
            Err(ApiError::Unauthenticated { .. })
        ));
        let expired = mint_admin_token(&secret, "alice", -60).unwrap();
        assert!(matches!(
            v.verify(&expired),
            Err(ApiError::Unauthenticated { .. })
        ));
    }
}
