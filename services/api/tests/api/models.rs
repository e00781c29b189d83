//! Models as the tenant sees them: per-tenant access, and a model whose
//! thread dies on a worker.

use maas_testkit::{assert_error, Options, Platform};
use serde_json::{json, Value};
use std::time::Duration;

async fn put_models(p: &Platform, tenant: &str, allow: Value) -> reqwest::Response {
    p.http
        .put(p.url(&format!("/admin/v1/tenants/{tenant}/models")))
        .bearer_auth(p.admin_token())
        .json(&json!({ "allow": allow }))
        .send()
        .await
        .unwrap()
}

async fn model_ids(p: &Platform, key: &str) -> Vec<String> {
    let list: Value = p
        .http
        .get(p.url("/v1/models"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_tenant_without_access_to_a_model_gets_404_for_it_and_does_not_see_it() {
    let p = Platform::start(Options::default()).await.unwrap();
    let limited = p.create_tenant("limited", 1).await;
    let open = p.create_tenant("open", 1).await;
    let echo = json!({"model": "echo", "mode": "sync", "input": {"text": "hi"}});

    let r = put_models(&p, &limited.id, json!(["all-minilm-l6-v2"])).await;
    assert_eq!(r.status(), 200);
    let t: Value = r.json().await.unwrap();
    assert_eq!(t["allowed_models"], json!(["all-minilm-l6-v2"]));

    // The limited tenant: only its model is listed; the others do not exist.
    assert_eq!(model_ids(&p, &limited.key).await, vec!["all-minilm-l6-v2"]);
    let r = p
        .http
        .get(p.url("/v1/models/echo"))
        .bearer_auth(&limited.key)
        .send()
        .await
        .unwrap();
    let not_there = assert_error(r, 404, "model_not_found").await;
    assert_error(
        p.submit(&limited.key, echo.clone()).await,
        404,
        "model_not_found",
    )
    .await;
    let r = p
        .http
        .post(p.url("/v1/embeddings"))
        .bearer_auth(&limited.key)
        .json(&json!({"model": "echo", "input": "x"}))
        .send()
        .await
        .unwrap();
    assert_error(r, 404, "model_not_found").await;
    // The same answer as a model that does not exist at all.
    let r = p
        .http
        .get(p.url("/v1/models/gpt-17"))
        .bearer_auth(&limited.key)
        .send()
        .await
        .unwrap();
    let missing = assert_error(r, 404, "model_not_found").await;
    assert_eq!(
        not_there["error"]["message"]
            .as_str()
            .unwrap()
            .replace("echo", "X"),
        missing["error"]["message"]
            .as_str()
            .unwrap()
            .replace("gpt-17", "X")
    );
    let r = p
        .http
        .get(p.url("/v1/models/all-minilm-l6-v2"))
        .bearer_auth(&limited.key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let m: Value = r.json().await.unwrap();
    assert_eq!(m["capabilities"]["embeddings"], true);

    // Another tenant is not affected.
    assert_eq!(model_ids(&p, &open.key).await.len(), 3);
    assert_eq!(p.submit(&open.key, echo.clone()).await.status(), 200);

    // Every model again: the change holds on the next request.
    assert_eq!(put_models(&p, &limited.id, Value::Null).await.status(), 200);
    assert_eq!(model_ids(&p, &limited.key).await.len(), 3);
    assert_eq!(p.submit(&limited.key, echo).await.status(), 200);

    // Bad admin input.
    assert_error(
        put_models(&p, &limited.id, json!(["no-such-model"])).await,
        400,
        "invalid_request",
    )
    .await;
    assert_error(
        put_models(&p, "00000000-0000-0000-0000-000000000000", json!([])).await,
        404,
        "not_found",
    )
    .await;
    // An empty list: no model at all.
    assert_eq!(put_models(&p, &limited.id, json!([])).await.status(), 200);
    assert!(model_ids(&p, &limited.key).await.is_empty());
}

async fn readyz(p: &Platform, worker: usize) -> (u16, Value) {
    let r = p
        .http
        .get(p.url_of(&p.workers[worker], "/readyz"))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn a_model_thread_that_dies_is_reported_unhealthy_and_gets_no_more_work() {
    let mut p = Platform::start(Options {
        workers: 1,
        worker_env: vec![("MAAS_WORKER_FAULTS", "true".into())],
        ..Options::default()
    })
    .await
    .unwrap();
    p.wait_for_live_workers(1).await.unwrap();
    let t = p.create_tenant("acme", 1).await;
    let echo = |text: &str| json!({"model": "echo", "mode": "sync", "input": {"text": text}});
    let r = p.submit(&t.key, echo("before")).await;
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "succeeded");
    let (status, body) = readyz(&p, 0).await;
    assert_eq!(status, 200, "{body}");
    let sick = body["worker_id"].as_str().unwrap().to_owned();

    // The next echo job on worker 0 panics its model thread.
    let r = p
        .http
        .post(p.url_of(&p.workers[0], "/debug/panic/echo"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let failed: Value = p.submit(&t.key, echo("boom")).await.json().await.unwrap();
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["error"]["code"], "model_error", "{failed}");
    let ran_on: String = sqlx::query_scalar("SELECT worker_id FROM jobs WHERE id = $1::uuid")
        .bind(failed["id"].as_str().unwrap())
        .fetch_one(&p.db)
        .await
        .unwrap();
    assert_eq!(ran_on, sick);

    // Its readiness says why, and the registry no longer offers its echo slots.
    let (status, body) = readyz(&p, 0).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["models"]["echo@builtin"]["state"], "failed", "{body}");
    assert!(
        body["unhealthy"][0]
            .as_str()
            .unwrap()
            .contains("model thread died"),
        "{body}"
    );
    let offered = p
        .wait_count(
            &format!(
                "SELECT count(*) FROM workers WHERE id = '{sick}' AND NOT models::text LIKE '%echo%'"
            ),
            1,
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(offered, 1, "the faulty worker still offers echo");

    // A healthy worker joins; every job from now on runs there.
    p.spawn_worker(4).await.unwrap();
    p.wait_for_live_workers(2).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..12 {
        let r = p.submit(&t.key, echo(&format!("after {i}"))).await;
        let job: Value = r.json().await.unwrap();
        assert_eq!(job["status"], "succeeded", "{job}");
        ids.push(job["id"].as_str().unwrap().to_owned());
    }
    let on_sick: i64 =
        sqlx::query_scalar("SELECT count(*) FROM jobs WHERE id::text = ANY($1) AND worker_id = $2")
            .bind(&ids)
            .bind(&sick)
            .fetch_one(&p.db)
            .await
            .unwrap();
    assert_eq!(on_sick, 0);
    let (status, _) = readyz(&p, 1).await;
    assert_eq!(status, 200);
}
