//! Webhooks on the real services: the official client registers an endpoint
//! and verifies every delivery with `client.webhooks.unwrap()`; the address
//! guard keeps deliveries off private and loopback addresses by default,
//! also when a name is rebound after registration; admins manage a tenant's
//! endpoints.

use maas_testkit::{assert_error, run_openai_script, Options, Platform};
use serde_json::{json, Value};
use std::time::Duration;

#[tokio::test]
async fn the_official_client_verifies_signed_retried_and_rotated_webhooks() {
    let p = Platform::start(Options {
        with_models: true,
        api_env: vec![
            ("MAAS_WEBHOOK_ALLOW_PRIVATE", "true".into()),
            ("MAAS_WEBHOOK_RETRY_SCHEDULE", "1,1".into()),
        ],
        ..Options::default()
    })
    .await
    .unwrap();
    let t = p.create_tenant("acme", 1).await;
    let other = p.create_tenant("globex", 1).await;
    let stdout =
        run_openai_script(&p, "webhooks.py", &t.key, &[("OTHER_API_KEY", &other.key)]).await;
    println!("{stdout}");

    // Secrets stay out of the logs and the metrics count deliveries.
    let metrics = p
        .http
        .get(p.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let tenant_line = |outcome: &str| {
        metrics
            .lines()
            .filter(|l| {
                l.starts_with("maas_webhook_deliveries_total")
                    && l.contains(&t.id)
                    && l.contains(&format!("outcome=\"{outcome}\""))
            })
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum::<f64>()
    };
    assert!(tenant_line("delivered") >= 3.0, "{metrics}");
    assert!(tenant_line("retrying") >= 1.0, "{metrics}");
    assert!(tenant_line("failed") >= 2.0, "{metrics}");
}

async fn admin(
    p: &Platform,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let mut r = p
        .http
        .request(method, p.url(&format!("/admin/v1{path}")))
        .bearer_auth(p.admin_token());
    if let Some(b) = body {
        r = r.json(&b);
    }
    r.send().await.unwrap()
}

#[tokio::test]
async fn deliveries_never_reach_private_addresses_by_default_and_admins_manage_endpoints() {
    let p = Platform::start(Options::default()).await.unwrap();
    let t = p.create_tenant("acme", 1).await;
    let base = format!("/tenants/{}/webhook_endpoints", t.id);
    use reqwest::Method as M;

    // Refused at registration: loopback, private, link-local, a name that
    // resolves to loopback, plain http, and an unknown event type.
    for url in [
        "https://127.0.0.1/hook",
        "https://10.0.0.7/hook",
        "https://169.254.169.254/latest",
        "https://[::1]/hook",
        "https://localhost:8443/hook",
        "http://8.8.8.8/hook",
    ] {
        let r = admin(
            &p,
            M::POST,
            &base,
            Some(json!({"name": "x", "url": url, "event_types": ["batch.completed"]})),
        )
        .await;
        assert_error(r, 400, "invalid_request").await;
    }
    let r = admin(
        &p,
        M::POST,
        &base,
        Some(json!({"name": "x", "url": "https://8.8.8.8/hook", "event_types": ["fine_tuning.job.succeeded"]})),
    )
    .await;
    assert_error(r, 400, "invalid_request").await;

    // A public address is accepted; the secret is shown once.
    let r = admin(
        &p,
        M::POST,
        &base,
        Some(
            json!({"name": "ops", "url": "https://8.8.8.8/hook", "event_types": ["batch.failed"]}),
        ),
    )
    .await;
    assert_eq!(r.status(), 200);
    let ep: Value = r.json().await.unwrap();
    let id = ep["id"].as_str().unwrap().to_owned();
    assert!(ep["signing_secret"].as_str().unwrap().starts_with("whsec_"));
    let shown: Value = admin(&p, M::GET, &format!("{base}/{id}"), None)
        .await
        .json()
        .await
        .unwrap();
    assert!(shown.get("signing_secret").is_none(), "{shown}");
    assert_eq!(shown["url"], "https://8.8.8.8/hook");

    // Whatever the row says later (a name rebound to loopback, a literal
    // private address), a delivery does not connect: a listener there sees
    // nothing.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    for url in [
        format!("http://127.0.0.1:{port}/hook"),
        format!("http://localhost:{port}/hook"),
    ] {
        sqlx::query("UPDATE webhook_endpoints SET url = $1 WHERE id = $2")
            .bind(&url)
            .bind(&id)
            .execute(&p.db)
            .await
            .unwrap();
        let r = admin(
            &p,
            M::POST,
            &format!("{base}/{id}/test"),
            Some(json!({"event_type": "batch.failed"})),
        )
        .await;
        assert_eq!(r.status(), 200);
        let res: Value = r.json().await.unwrap();
        assert_eq!(res["status_code"], 0, "{res}");
        let err = res["error"].as_str().unwrap();
        assert!(err.contains("private") || err.contains("public"), "{err}");
    }
    let accepted = tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
    assert!(accepted.is_err(), "a delivery reached a loopback address");

    // A real event to that endpoint is logged as failing, never delivered.
    sqlx::query("UPDATE webhook_endpoints SET url = $1 WHERE id = $2")
        .bind(format!("http://127.0.0.1:{port}/hook"))
        .bind(&id)
        .execute(&p.db)
        .await
        .unwrap();
    let mut tx = p.db.begin().await.unwrap();
    let tid: uuid::Uuid = t.id.parse().unwrap();
    let n = maas_store::webhooks::enqueue(&mut tx, tid, "batch.failed", "batch_x")
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(n, 1);
    let mut log = Value::Null;
    for _ in 0..100 {
        log = admin(&p, M::GET, &format!("{base}/{id}/deliveries"), None)
            .await
            .json()
            .await
            .unwrap();
        if log["data"][0]["attempts"].as_i64() >= Some(1)
            && log["data"][0]["last_error"].is_string()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let d = &log["data"][0];
    assert_eq!(d["status"], "pending", "{log}");
    assert!(
        d["last_error"].as_str().unwrap().contains("private"),
        "{log}"
    );
    assert!(d["next_attempt_at"].is_string(), "retried later: {log}");
    let accepted = tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
    assert!(accepted.is_err(), "a delivery reached a loopback address");

    // Admin update, rotate, list, and the endpoint limit; another tenant's
    // path gives 404.
    let r = admin(
        &p,
        M::POST,
        &format!("{base}/{id}"),
        Some(json!({"name": "renamed"})),
    )
    .await;
    assert_eq!(r.status(), 200);
    let r = admin(&p, M::POST, &format!("{base}/{id}/rotate_secret"), None).await;
    let rotated: Value = r.json().await.unwrap();
    assert_ne!(rotated["signing_secret"], ep["signing_secret"]);
    let other = p.create_tenant("globex", 1).await;
    let r = admin(
        &p,
        M::GET,
        &format!("/tenants/{}/webhook_endpoints/{id}", other.id),
        None,
    )
    .await;
    assert_error(r, 404, "not_found").await;
    let list: Value = admin(&p, M::GET, &base, None).await.json().await.unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 1, "{list}");
    for i in 1..10 {
        let r = admin(
            &p,
            M::POST,
            &base,
            Some(json!({"name": format!("n{i}"), "url": "https://8.8.8.8/h", "event_types": ["batch.failed"]})),
        )
        .await;
        assert_eq!(r.status(), 200);
    }
    let r = admin(
        &p,
        M::POST,
        &base,
        Some(json!({"name": "one too many", "url": "https://8.8.8.8/h", "event_types": ["batch.failed"]})),
    )
    .await;
    assert_error(r, 400, "invalid_request").await;

    // A key without the webhooks scope may not manage endpoints.
    let r = admin(
        &p,
        M::POST,
        &format!("/tenants/{}/keys", t.id),
        Some(json!({"scopes": ["batches", "files"]})),
    )
    .await;
    let k: Value = r.json().await.unwrap();
    let r = p
        .http
        .get(p.url("/v1/webhook_endpoints"))
        .bearer_auth(k["key"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // Nothing of a secret is in the audit log.
    let (details,): (String,) = sqlx::query_as(
        "SELECT string_agg(details::text, ' ') FROM audit_log WHERE action LIKE 'webhook_endpoint.%'",
    )
    .fetch_one(&p.db)
    .await
    .unwrap();
    assert!(
        details.contains(&id) && !details.contains("whsec_"),
        "{details}"
    );
}
