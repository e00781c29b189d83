use maas_testkit::{assert_error, Options, Platform};
use serde_json::{json, Value};

#[tokio::test]
async fn bad_requests_get_a_4xx_with_an_openai_error_object() {
    let p = Platform::start(Options {
        workers: 0,
        max_body_bytes: 4096,
        ..Options::default()
    })
    .await
    .unwrap();
    let t = p.create_tenant("acme", 1).await;
    let post = |body: &'static str| {
        p.http
            .post(p.url("/v1/jobs"))
            .bearer_auth(&t.key)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    assert_error(post("{not json").await.unwrap(), 400, "invalid_request").await;
    assert_error(post("").await.unwrap(), 400, "invalid_request").await;
    assert_error(post("[]").await.unwrap(), 400, "invalid_request").await;
    assert_error(
        post(r#"{"model": "echo", "mode": "sync"}"#).await.unwrap(),
        400,
        "invalid_request",
    )
    .await;
    assert_error(
        post(r#"{"model": 7, "mode": "sync", "input": {"text": "x"}}"#)
            .await
            .unwrap(),
        400,
        "invalid_request",
    )
    .await;
    assert_error(
        post(r#"{"model": "echo", "mode": "later", "input": {"text": "x"}}"#)
            .await
            .unwrap(),
        400,
        "invalid_request",
    )
    .await;
    assert_error(
        post(r#"{"model": "echo", "mode": "sync", "input": {"text": 5}}"#)
            .await
            .unwrap(),
        400,
        "invalid_request",
    )
    .await;
    assert_error(
        post(r#"{"model": "echo", "mode": "sync", "input": {"text": "x", "delay_ms": -5}}"#)
            .await
            .unwrap(),
        400,
        "invalid_request",
    )
    .await;
    assert_error(
        post(r#"{"model": "echo", "mode": "sync", "input": {"text": "x"}, "colour": 1}"#)
            .await
            .unwrap(),
        400,
        "invalid_request",
    )
    .await;
    assert_error(
        post(r#"{"model": "echo", "mode": "async", "timeout_ms": 10, "input": {"text": "x"}}"#)
            .await
            .unwrap(),
        400,
        "invalid_request",
    )
    .await;
    assert_error(
        post(r#"{"model": "echo", "mode": "sync", "timeout_ms": 0, "input": {"text": "x"}}"#)
            .await
            .unwrap(),
        400,
        "invalid_request",
    )
    .await;
    assert_error(
        post(r#"{"model": "gpt-17", "mode": "sync", "input": {"text": "x"}}"#)
            .await
            .unwrap(),
        404,
        "model_not_found",
    )
    .await;

    let big = json!({"model": "echo", "mode": "sync", "input": {"text": "x".repeat(10_000)}});
    assert_error(p.submit(&t.key, big).await, 413, "payload_too_large").await;

    let r = p
        .http
        .post(p.url("/v1/jobs"))
        .bearer_auth(&t.key)
        .header("content-type", "text/plain")
        .body("hi")
        .send()
        .await
        .unwrap();
    assert_error(r, 415, "unsupported_media_type").await;

    assert_error(p.get_job(&t.key, "not-a-uuid").await, 404, "not_found").await;
    assert_error(
        p.get_job(&t.key, &uuid::Uuid::new_v4().to_string()).await,
        404,
        "not_found",
    )
    .await;
    let r = p
        .http
        .get(p.url("/v1/jobs?limit=1000"))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "invalid_request").await;
    let r = p
        .http
        .get(p.url("/v1/jobs?limit=abc"))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "invalid_request").await;
    let r = p
        .http
        .get(p.url("/v1/nothing-here"))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap();
    assert_error(r, 404, "unknown_route").await;
    let r = p
        .http
        .delete(p.url("/v1/jobs"))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap();
    assert_error(r, 405, "method_not_allowed").await;
    let r = p
        .http
        .delete(p.url(&format!("/v1/jobs/{}", uuid::Uuid::new_v4())))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap();
    assert_error(r, 405, "method_not_allowed").await;
    let r = p
        .http
        .patch(p.url("/admin/v1/tenants"))
        .bearer_auth(p.admin_token())
        .send()
        .await
        .unwrap();
    assert_error(r, 405, "method_not_allowed").await;

    // A valid job for a model no worker serves is turned away, not parked for 24 h.
    let r = p
        .submit(
            &t.key,
            json!({"model": "echo", "mode": "async", "input": {"text": "x"}}),
        )
        .await;
    assert_eq!(r.headers()["retry-after"], "5");
    assert_error(r, 503, "model_unavailable").await;

    // Nothing above created a job.
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&p.db)
        .await
        .unwrap();
    assert_eq!(n, 0);
    // The API is still healthy.
    assert_eq!(
        p.http.get(p.url("/healthz")).send().await.unwrap().status(),
        200
    );
}

#[tokio::test]
async fn health_readiness_models_and_openapi_are_served() {
    let p = Platform::start(Options {
        workers: 0,
        ..Options::default()
    })
    .await
    .unwrap();
    let t = p.create_tenant("acme", 1).await;
    assert_eq!(
        p.http.get(p.url("/healthz")).send().await.unwrap().status(),
        200
    );
    let ready: Value = p
        .http
        .get(p.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["status"], "ready");
    let models: Value = p
        .http
        .get(p.url("/v1/models"))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"echo"));
    let doc: Value = p
        .http
        .get(p.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/v1/jobs",
        "/v1/jobs/{id}",
        "/v1/jobs/{id}/cancel",
        "/admin/v1/tenants",
        "/admin/v1/keys/{key_id}",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} documented");
    }
}

#[tokio::test]
async fn text_that_postgres_cannot_store_is_a_400_not_a_500() {
    let p = Platform::start(Options::default()).await.unwrap();
    let t = p.create_tenant("acme", 1).await;
    let r = p
        .submit(
            &t.key,
            json!({"model": "echo", "mode": "sync", "input": {"text": "a\u{0}b"}}),
        )
        .await;
    assert_error(r, 400, "invalid_request").await;
    let r = p
        .admin_post("/admin/v1/tenants", json!({"name": "bad\u{0}name"}))
        .await;
    assert_error(r, 400, "invalid_request").await;
}
