use maas_testkit::{assert_error, Options, Platform};
use serde_json::{json, Value};

#[tokio::test]
async fn tenants_can_be_created_listed_updated_and_deleted() {
    let p = Platform::start(Options {
        workers: 0,
        ..Options::default()
    })
    .await
    .unwrap();
    let r = p
        .admin_post("/admin/v1/tenants", json!({"name": "acme", "weight": 3}))
        .await;
    assert_eq!(r.status(), 201);
    let t: Value = r.json().await.unwrap();
    assert_eq!(t["name"], "acme");
    assert_eq!(t["weight"], 3);
    assert_eq!(t["disabled"], false);
    let id = t["id"].as_str().unwrap();

    assert_error(
        p.admin_post("/admin/v1/tenants", json!({"name": "acme"}))
            .await,
        409,
        "conflict",
    )
    .await;

    let list: Value = p
        .http
        .get(p.url("/admin/v1/tenants"))
        .bearer_auth(p.admin_token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 1);

    let r = p
        .http
        .patch(p.url(&format!("/admin/v1/tenants/{id}")))
        .bearer_auth(p.admin_token())
        .json(&json!({"weight": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["weight"], 5);

    let r = p
        .http
        .delete(p.url(&format!("/admin/v1/tenants/{id}")))
        .bearer_auth(p.admin_token())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = p
        .http
        .get(p.url(&format!("/admin/v1/tenants/{id}")))
        .bearer_auth(p.admin_token())
        .send()
        .await
        .unwrap();
    assert_error(r, 404, "not_found").await;

    let actions: Vec<String> =
        sqlx::query_scalar("SELECT action FROM audit_log WHERE actor = 'test-admin' ORDER BY id")
            .fetch_all(&p.db)
            .await
            .unwrap();
    assert_eq!(
        actions,
        vec!["tenant.create", "tenant.update", "tenant.delete"]
    );
}

#[tokio::test]
async fn a_key_secret_is_shown_once_and_only_its_hash_is_stored() {
    let p = Platform::start(Options {
        workers: 0,
        ..Options::default()
    })
    .await
    .unwrap();
    let t = p.create_tenant("acme", 1).await;
    assert!(t.key.starts_with("maas_sk_"));
    let list: Value = p
        .http
        .get(p.url(&format!("/admin/v1/tenants/{}/keys", t.id)))
        .bearer_auth(p.admin_token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let text = list.to_string();
    assert!(!text.contains(&t.key), "listing never shows the secret");
    assert_eq!(list["data"][0]["prefix"], t.key[..16]);
    let stored: String = sqlx::query_scalar("SELECT secret_hash FROM api_keys")
        .fetch_one(&p.db)
        .await
        .unwrap();
    assert_ne!(stored, t.key);
    assert_eq!(stored.len(), 64);
}

#[tokio::test]
async fn key_scopes_and_expiry_are_validated() {
    let p = Platform::start(Options {
        workers: 0,
        ..Options::default()
    })
    .await
    .unwrap();
    let t = p.create_tenant("acme", 1).await;
    let path = format!("/admin/v1/tenants/{}/keys", t.id);
    assert_error(
        p.admin_post(&path, json!({"scopes": ["root"]})).await,
        400,
        "invalid_request",
    )
    .await;
    assert_error(
        p.admin_post(&path, json!({"scopes": ["model:gpt-9"]}))
            .await,
        400,
        "invalid_request",
    )
    .await;
    assert_error(
        p.admin_post(&path, json!({"expires_at": "2001-01-01T00:00:00Z"}))
            .await,
        400,
        "invalid_request",
    )
    .await;
    let r = p
        .admin_post(
            &path,
            json!({"name": "emb", "scopes": ["embeddings", "model:all-minilm-l6-v2"]}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let k: Value = r.json().await.unwrap();
    // A key scoped to embeddings may not use the jobs API.
    let r = p
        .submit(
            k["key"].as_str().unwrap(),
            json!({"model": "echo", "mode": "async", "input": {"text": "x"}}),
        )
        .await;
    assert_error(r, 403, "insufficient_scope").await;
}

#[tokio::test]
async fn a_quota_put_replaces_the_whole_record() {
    let p = Platform::start(Options {
        workers: 0,
        ..Options::default()
    })
    .await
    .unwrap();
    let t = p.create_tenant("acme", 1).await;
    let path = p.url(&format!("/admin/v1/tenants/{}/quota", t.id));
    let empty: Value = p
        .http
        .get(&path)
        .bearer_auth(p.admin_token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(empty["rpm"].is_null(), "a new tenant has no limits");
    let r = p
        .http
        .put(&path)
        .bearer_auth(p.admin_token())
        .json(&json!({"rpm": 60, "max_queued": 10}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let q: Value = r.json().await.unwrap();
    assert_eq!(q["rpm"], 60);
    assert_eq!(q["max_queued"], 10);
    let r = p
        .http
        .put(&path)
        .bearer_auth(p.admin_token())
        .json(&json!({"tpm": 1000}))
        .send()
        .await
        .unwrap();
    let q: Value = r.json().await.unwrap();
    assert_eq!(q["tpm"], 1000);
    assert!(q["rpm"].is_null(), "an omitted field means unlimited");
    let r = p
        .http
        .put(&path)
        .bearer_auth(p.admin_token())
        .json(&json!({"rpm": -1}))
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "invalid_request").await;
    let r = p
        .http
        .put(&path)
        .bearer_auth(p.admin_token())
        .json(&json!({"rpm": "many"}))
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "invalid_request").await;
}

#[tokio::test]
async fn usage_counts_finished_jobs_per_model_and_day() {
    let p = Platform::start(Options::default()).await.unwrap();
    let t = p.create_tenant("acme", 1).await;
    for i in 0..3 {
        let r = p
            .submit(
                &t.key,
                json!({"model": "echo", "mode": "sync", "input": {"text": format!("{i}")}}),
            )
            .await;
        assert_eq!(r.status(), 200);
    }
    let u: Value = p
        .http
        .get(p.url(&format!("/admin/v1/tenants/{}/usage", t.id)))
        .bearer_auth(p.admin_token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(u["data"][0]["model"], "echo");
    assert_eq!(u["data"][0]["requests"], 3);
}
