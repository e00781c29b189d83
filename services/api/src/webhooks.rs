//! Webhook delivery: Standard Webhooks signing, the address guard, and the
//! loop on every API replica that sends due deliveries with backoff.
//!
//! Each attempt is signed afresh: `webhook-id` (the delivery's id, the same
//! on every attempt, for receivers to dedupe), `webhook-timestamp` (unix
//! seconds of this attempt) and `webhook-signature`, `v1,<base64 HMAC-SHA256
//! of "id.timestamp.body">`, one per live secret (two while a rotated-out
//! secret still signs), space-separated.

use crate::state::AppState;
use base64::Engine;
use chrono::Utc;
use futures_util::StreamExt;
use hmac::{Hmac, Mac};
use maas_core::metrics::{register_int_counter_vec, tenant_label, IntCounterVec};
use maas_store::webhooks::{self, Due, Outcome};
use rand::RngCore;
use reqwest13 as reqwest;
use sha2::Sha256;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

/// The event types an endpoint may subscribe to.
pub const EVENT_TYPES: [&str; 4] = [
    "batch.completed",
    "batch.failed",
    "batch.expired",
    "batch.cancelled",
];

pub static DELIVERIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "maas_webhook_deliveries_total",
        "Webhook delivery attempts by tenant, event type and outcome (delivered, retrying, failed)",
        &["tenant", "event", "outcome"]
    )
    .expect("metric registers once")
});

/// A new signing secret: `whsec_` and 32 random bytes in base64.
pub fn new_secret() -> String {
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

/// What may be shown of a secret: its prefix and last four characters.
pub fn secret_hint(secret: &str) -> String {
    let tail: String = secret
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("whsec_...{tail}")
}

/// `v1,<base64>` of `id.timestamp.body` under `secret` (`whsec_` and base64
/// of the key, or raw bytes otherwise).
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    let key = match secret.strip_prefix("whsec_") {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap_or_else(|_| b64.as_bytes().to_vec()),
        None => secret.as_bytes().to_vec(),
    };
    // HMAC takes a key of any length.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&key) else {
        return String::new();
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

/// The `webhook-signature` header: a signature per live secret.
pub fn signature_header(secrets: &[&str], id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .map(|s| sign(s, id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether `ip` is somewhere a webhook must not reach by default: loopback,
/// private, link-local, carrier-grade NAT, unspecified, multicast, reserved or
/// documentation ranges (and IPv6 forms that embed such an IPv4 address).
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => private_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return private_v4(v4);
            }
            let s = v6.segments();
            // NAT64 (64:ff9b::/96) embeds an IPv4 address in its last 32 bits.
            if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
                return private_v4(Ipv4Addr::new(
                    (s[6] >> 8) as u8,
                    s[6] as u8,
                    (s[7] >> 8) as u8,
                    s[7] as u8,
                ));
            }
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || (s[0..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible (deprecated)
        }
    }
}

fn private_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || o[0] == 0 // "this network"
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // carrier-grade NAT 100.64/10
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking 198.18/15
        || o[0] >= 240 // reserved
}

/// Why a URL cannot be a webhook endpoint, if it cannot: it must be an
/// absolute `https` URL (or `http` when private addresses are allowed)
/// without credentials, and its host must not be, or resolve only to, a
/// private address unless `allow_private`.
pub async fn check_url(raw: &str, allow_private: bool) -> Result<url::Url, String> {
    let u = url::Url::parse(raw).map_err(|e| format!("url is not a valid URL: {e}"))?;
    match u.scheme() {
        "https" => {}
        "http" if allow_private => {}
        s => return Err(format!("url must use https, not {s}")),
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err("url must not carry credentials".into());
    }
    if raw.len() > 2048 {
        return Err("url must be at most 2048 characters".into());
    }
    if allow_private {
        return Ok(u);
    }
    let addrs = resolve(&u).await?;
    if addrs.iter().all(|a| is_private(a.ip())) {
        return Err("url must not point at a private, loopback or link-local address".into());
    }
    Ok(u)
}

async fn resolve(u: &url::Url) -> Result<Vec<SocketAddr>, String> {
    let port = u.port_or_known_default().unwrap_or(443);
    match u.host() {
        Some(url::Host::Ipv4(ip)) => Ok(vec![SocketAddr::new(IpAddr::V4(ip), port)]),
        Some(url::Host::Ipv6(ip)) => Ok(vec![SocketAddr::new(IpAddr::V6(ip), port)]),
        Some(url::Host::Domain(d)) => {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((d, port))
                .await
                .map_err(|e| format!("cannot resolve {d}: {e}"))?
                .collect();
            if addrs.is_empty() {
                return Err(format!("{d} resolves to no address"));
            }
            Ok(addrs)
        }
        None => Err("url has no host".into()),
    }
}

/// Resolves names for webhook requests keeping only public addresses, so a
/// name that resolves (or is rebound) to a private address is never reached.
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| !is_private(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(format!("{host} resolves to no public address").into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The HTTP client for deliveries: no redirects followed (a redirect could
/// lead anywhere), no proxy from the environment, a bounded time.
pub fn client(allow_private: bool, timeout: Duration) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .user_agent(concat!("maas-webhooks/", env!("CARGO_PKG_VERSION")));
    if !allow_private {
        b = b.dns_resolver(Arc::new(PublicOnly));
    }
    b.build().unwrap_or_else(|_| reqwest::Client::new())
}

/// What one attempt got: the status code, or why there is none.
pub struct Sent {
    pub status: Option<u16>,
    pub error: Option<String>,
    pub took: Duration,
}

/// Sends one signed attempt of `body` to `url`.
pub async fn send(
    http: &reqwest::Client,
    allow_private: bool,
    url: &str,
    id: &str,
    secrets: &[&str],
    body: &str,
) -> Sent {
    let start = Instant::now();
    // A literal address is never looked up, so it is checked here.
    if !allow_private {
        if let Ok(u) = url::Url::parse(url) {
            let literal = match u.host() {
                Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
                Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
                _ => None,
            };
            if literal.is_some_and(is_private) {
                return Sent {
                    status: None,
                    error: Some("the endpoint's address is private".into()),
                    took: start.elapsed(),
                };
            }
        }
    }
    let ts = Utc::now().timestamp();
    let r = http
        .post(url)
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", ts.to_string())
        .header(
            "webhook-signature",
            signature_header(secrets, id, ts, body.as_bytes()),
        )
        .body(body.to_owned())
        .send()
        .await;
    match r {
        Ok(resp) => {
            let status = resp.status().as_u16();
            // The body is not needed; reading a little lets the connection be reused.
            let _ = tokio::time::timeout(Duration::from_secs(1), resp.bytes()).await;
            Sent {
                status: Some(status),
                error: (!resp_ok(status)).then(|| format!("the endpoint answered {status}")),
                took: start.elapsed(),
            }
        }
        Err(e) => Sent {
            status: None,
            error: Some(error_text(&e)),
            took: start.elapsed(),
        },
    }
}

fn resp_ok(status: u16) -> bool {
    (200..300).contains(&status)
}

fn error_text(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    if e.is_timeout() {
        s = format!("timed out: {s}");
    }
    s.chars().take(500).collect()
}

/// Sends due deliveries forever, on every replica (each delivery claimed by
/// one), and prunes the delivery log.
pub async fn deliver_forever(state: AppState, every: Duration) {
    let s = state.settings.clone();
    let http = client(
        s.webhook_allow_private,
        Duration::from_secs(s.webhook_timeout_secs.max(1)),
    );
    // Longer than an attempt can take, so a live replica's claim holds.
    let lease = (s.webhook_timeout_secs.max(1) * 2 + 30) as f64;
    let mut tick = tokio::time::interval(every);
    let mut last_prune = Instant::now() - Duration::from_secs(3600);
    loop {
        tick.tick().await;
        if last_prune.elapsed() > Duration::from_secs(3600) {
            last_prune = Instant::now();
            let before = Utc::now() - chrono::Duration::days(s.webhook_log_days.max(1));
            if let Err(e) = webhooks::purge_ended(&state.db, before).await {
                tracing::debug!(error = %e, "webhooks: cannot prune the delivery log");
            }
        }
        loop {
            let due = match webhooks::claim_due(&state.db, 32, lease).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::debug!(error = %e, "webhooks: cannot claim deliveries");
                    break;
                }
            };
            let n = due.len();
            futures_util::stream::iter(due)
                .for_each_concurrent(16, |d| attempt(&state, &http, d))
                .await;
            if n < 32 {
                break;
            }
        }
    }
}

/// Sends one attempt of `d` and records what it decided.
pub async fn attempt(state: &AppState, http: &reqwest::Client, d: Due) {
    let s = &state.settings;
    let mut secrets = vec![d.secret.as_str()];
    if let Some(p) = &d.previous_secret {
        secrets.push(p);
    }
    let sent = send(
        http,
        s.webhook_allow_private,
        &d.url,
        &d.id,
        &secrets,
        &d.payload,
    )
    .await;
    let schedule = &s.webhook_retry_schedule.0;
    let outcome = if sent.status.is_some_and(resp_ok) {
        Outcome::Delivered
    } else if let Some(wait) = schedule.get((d.attempts as usize).saturating_sub(1)) {
        Outcome::RetryAt(Utc::now() + chrono::Duration::seconds(*wait as i64))
    } else {
        Outcome::Failed
    };
    let label = match outcome {
        Outcome::Delivered => "delivered",
        Outcome::RetryAt(_) => "retrying",
        Outcome::Failed => "failed",
    };
    DELIVERIES
        .with_label_values(&[&tenant_label(d.tenant_id), &d.event_type, label])
        .inc();
    match outcome {
        Outcome::Delivered => {
            tracing::info!(delivery = %d.id, endpoint = %d.endpoint_id, event = %d.event_type, attempt = d.attempts, "webhook delivered")
        }
        _ => {
            tracing::warn!(delivery = %d.id, endpoint = %d.endpoint_id, event = %d.event_type, attempt = d.attempts,
                status = ?sent.status, error = sent.error.as_deref().unwrap_or(""), outcome = label, "webhook attempt failed")
        }
    }
    let took = i32::try_from(sent.took.as_millis()).unwrap_or(i32::MAX);
    if let Err(e) = webhooks::record_attempt(
        &state.db,
        &d,
        sent.status,
        sent.error.as_deref(),
        took,
        outcome,
    )
    .await
    {
        // The claim's lease runs out and another attempt follows: at least once.
        tracing::warn!(delivery = %d.id, error = %e, "webhooks: cannot record an attempt");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_as_the_standard_webhooks_scheme() {
        // The scheme's published example: this secret, id, timestamp and
        // body give this signature.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        let two = signature_header(&[secret, "whsec_AAAA"], "m", 1, b"{}");
        assert_eq!(two.split(' ').count(), 2);
    }

    #[test]
    fn private_addresses_are_recognised() {
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "::",
            "fc00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "224.0.0.1",
        ] {
            assert!(is_private(a.parse().unwrap()), "{a}");
        }
        for a in ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8"] {
            assert!(!is_private(a.parse().unwrap()), "{a}");
        }
    }

    #[tokio::test]
    async fn urls_are_checked() {
        assert!(check_url("https://127.0.0.1/hook", false).await.is_err());
        assert!(check_url("https://10.0.0.8/hook", false).await.is_err());
        assert!(check_url("https://[::1]:8443/hook", false).await.is_err());
        assert!(check_url("https://localhost/hook", false).await.is_err());
        assert!(check_url("http://8.8.8.8/hook", false).await.is_err());
        assert!(check_url("https://u:p@8.8.8.8/hook", false).await.is_err());
        assert!(check_url("ftp://8.8.8.8/hook", true).await.is_err());
        assert!(check_url("not a url", true).await.is_err());
        assert!(check_url("https://8.8.8.8/hook", false).await.is_ok());
        assert!(check_url("http://127.0.0.1:9/hook", true).await.is_ok());
    }

    #[test]
    fn hints_show_only_the_tail() {
        let s = new_secret();
        assert!(s.starts_with("whsec_") && s.len() > 40);
        let h = secret_hint(&s);
        assert!(h.starts_with("whsec_...") && h.len() == 13 && s.ends_with(&h[9..]));
    }
}
