//! The admin CLI against a running platform: tenants, keys, quotas, usage,
//! with the token from the environment and API errors passed through.

use maas_testkit::{Options, Platform};
use serde_json::Value;
use std::path::PathBuf;

fn maasctl() -> PathBuf {
    let dir = std::env::var("MAAS_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            let exe = std::env::current_exe().unwrap();
            exe.parent().and_then(|p| p.parent()).unwrap().to_path_buf()
        });
    dir.join("maasctl")
}

async fn run(p: &Platform, token: Option<&str>, args: &[&str]) -> (bool, Value, String) {
    let mut cmd = tokio::process::Command::new(maasctl());
    cmd.args(args)
        .env("MAAS_API_URL", p.url(""))
        .env_remove("MAAS_ADMIN_TOKEN");
    if let Some(t) = token {
        cmd.env("MAAS_ADMIN_TOKEN", t);
    }
    let out = cmd
        .output()
        .await
        .expect("maasctl runs (cargo build --release --bins)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (
        out.status.success(),
        serde_json::from_str(&stdout).unwrap_or(Value::Null),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn maasctl_manages_tenants_keys_quotas_and_usage() {
    let p = Platform::start(Options::default()).await.unwrap();
    let token = p.admin_token();
    let t = Some(token.as_str());
    let (ok, tenant, err) = run(&p, t, &["tenants", "create", "cli-co", "--weight", "3"]).await;
    assert!(ok, "{err}");
    let id = tenant["id"].as_str().unwrap().to_owned();
    assert_eq!(tenant["weight"], 3);
    let (ok, list, _) = run(&p, t, &["tenants", "list"]).await;
    assert!(ok && list.to_string().contains(&id));
    let (ok, key, err) = run(
        &p,
        t,
        &["keys", "create", &id, "--name", "ci", "--scope", "jobs"],
    )
    .await;
    assert!(ok, "{err}");
    let secret = key["key"].as_str().unwrap().to_owned();
    // The key works for jobs.
    let r = p
        .submit(
            &secret,
            serde_json::json!({"model": "echo", "mode": "sync", "input": {"text": "hi"}}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let (ok, q, err) = run(
        &p,
        t,
        &["quota", "set", &id, "--rpm", "100", "--max-queued", "5"],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(
        (
            q["rpm"].as_i64(),
            q["max_queued"].as_i64(),
            q["tpm"].is_null()
        ),
        (Some(100), Some(5), true)
    );
    let (ok, limited, err) = run(
        &p,
        t,
        &["keys", "limits", key["id"].as_str().unwrap(), "--rpm", "50"],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(
        (limited["rpm"].as_i64(), limited["tpm"].is_null()),
        (Some(50), true)
    );
    let (ok, _, err) = run(
        &p,
        t,
        &[
            "quota",
            "set",
            &id,
            "--token-budget",
            "1000",
            "--budget-period",
            "day",
        ],
    )
    .await;
    assert!(ok, "{err}");
    let (ok, usage, _) = run(&p, t, &["usage", &id, "--days", "1"]).await;
    assert!(ok);
    assert_eq!(usage["data"][0]["requests"], 1);
    // "hi" in and out: 2 tokens of the day's budget spent.
    assert_eq!(
        (
            usage["budget"]["limit"].as_i64(),
            usage["budget"]["spent"].as_i64(),
            usage["budget"]["remaining"].as_i64()
        ),
        (Some(1000), Some(2), Some(998))
    );
    let (ok, _, err) = run(&p, t, &["keys", "revoke", key["id"].as_str().unwrap()]).await;
    assert!(ok, "{err}");
    let r = p
        .submit(
            &secret,
            serde_json::json!({"model": "echo", "mode": "sync", "input": {"text": "hi"}}),
        )
        .await;
    assert_eq!(r.status(), 401, "a revoked key stops working");
    // Errors: the API's message, exit status 1; no token, a clear message.
    let (ok, _, err) = run(&p, t, &["tenants", "create", "cli-co"]).await;
    assert!(!ok && err.contains("409"), "{err}");
    let (ok, _, err) = run(&p, None, &["tenants", "list"]).await;
    assert!(!ok && err.contains("MAAS_ADMIN_TOKEN"), "{err}");
    let (ok, _, err) = run(&p, Some("not-a-token"), &["tenants", "list"]).await;
    assert!(!ok && err.contains("401"), "{err}");
}

#[tokio::test]
async fn maasctl_registers_loads_labels_and_unloads_a_model_version() {
    let p = Platform::start(Options {
        with_models: true,
        ..Options::default()
    })
    .await
    .unwrap();
    p.wait_for_live_workers(1).await.unwrap();
    let token = p.admin_token();
    let t = Some(token.as_str());
    let m = "all-minilm-l6-v2";
    let (ok, list, err) = run(&p, t, &["models", "list"]).await;
    assert!(ok, "{err}");
    let minilm = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == m)
        .unwrap();
    assert_eq!(minilm["labels"]["stable"], "f16", "{list}");
    // Settings are typed: an unknown or out-of-range one is refused by name.
    let (ok, _, err) = run(
        &p,
        t,
        &[
            "models",
            "register",
            m,
            "small",
            "--path",
            m,
            "--settings",
            r#"{"slots": 0}"#,
        ],
    )
    .await;
    assert!(!ok && err.contains("400") && err.contains("slots"), "{err}");
    let (ok, v, err) = run(
        &p,
        t,
        &[
            "models",
            "register",
            m,
            "small",
            "--path",
            m,
            "--settings",
            r#"{"slots": 3, "max_batch_tokens": 2048}"#,
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(
        v["settings"],
        serde_json::json!({"slots": 3, "max_batch_tokens": 2048})
    );
    let (ok, v, err) = run(&p, t, &["models", "load", m, "small", "--wait", "120"]).await;
    assert!(ok, "{err}");
    assert_eq!(v["ready_workers"], 1, "{v}");
    // The version's slots are what the worker offers for it.
    let slots: i64 = sqlx::query_scalar(
        "SELECT (m->>'slots')::bigint FROM workers, jsonb_array_elements(models) m
         WHERE m->>'model' = 'all-minilm-l6-v2@small'",
    )
    .fetch_one(&p.db)
    .await
    .unwrap();
    assert_eq!(slots, 3);
    let (ok, l, err) = run(&p, t, &["models", "label", m, "canary", "small"]).await;
    assert!(ok, "{err}");
    assert_eq!(
        (l["label"].as_str(), l["version"].as_str()),
        (Some("canary"), Some("small"))
    );
    let (ok, _, err) = run(&p, t, &["models", "unload", m, "small"]).await;
    assert!(
        !ok && err.contains("409") && err.contains("version_in_use") && err.contains("canary"),
        "{err}"
    );
    let (ok, _, err) = run(&p, t, &["models", "label", m, "canary", "f16"]).await;
    assert!(ok, "{err}");
    let (ok, _, err) = run(&p, t, &["models", "unload", m, "small"]).await;
    assert!(ok, "{err}");
    // A label cannot point at a version that is not loaded.
    let (ok, _, err) = run(&p, t, &["models", "label", m, "stable", "nope"]).await;
    assert!(!ok && err.contains("404"), "{err}");
}

#[tokio::test]
async fn maasctl_manages_a_tenants_webhook_endpoints() {
    let p = Platform::start(Options::default()).await.unwrap();
    let token = p.admin_token();
    let t = Some(token.as_str());
    let tenant = p.create_tenant("hooks-co", 1).await;
    let (ok, ep, err) = run(
        &p,
        t,
        &[
            "webhooks",
            "add",
            &tenant.id,
            "--url",
            "https://8.8.8.8/hook",
            "--name",
            "ops",
        ],
    )
    .await;
    assert!(ok, "{err}");
    let id = ep["id"].as_str().unwrap().to_owned();
    let secret = ep["signing_secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"), "{ep}");
    assert_eq!(ep["event_types"].as_array().unwrap().len(), 4, "{ep}");
    let (ok, list, _) = run(&p, t, &["webhooks", "list", &tenant.id]).await;
    assert!(ok && list["data"][0]["id"] == id.as_str(), "{list}");
    assert!(
        !list.to_string().contains(&secret),
        "the secret is shown once"
    );
    let (ok, up, err) = run(
        &p,
        t,
        &[
            "webhooks",
            "update",
            &tenant.id,
            &id,
            "--event",
            "batch.failed",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(up["event_types"], serde_json::json!(["batch.failed"]));
    assert_eq!(up["name"], "ops");
    let (ok, rot, err) = run(
        &p,
        t,
        &["webhooks", "rotate", &tenant.id, &id, "--keep-old"],
    )
    .await;
    assert!(ok, "{err}");
    assert_ne!(rot["signing_secret"].as_str().unwrap(), secret);
    assert!(rot["previous_secret_active_until"].is_i64(), "{rot}");
    let (ok, log, err) = run(&p, t, &["webhooks", "deliveries", &tenant.id, &id]).await;
    assert!(
        ok && log["data"].as_array().is_some_and(|d| d.is_empty()),
        "{log} {err}"
    );
    // API errors come through: a private address is refused.
    let (ok, _, err) = run(
        &p,
        t,
        &[
            "webhooks",
            "add",
            &tenant.id,
            "--url",
            "https://192.168.1.1/hook",
            "--name",
            "lan",
        ],
    )
    .await;
    assert!(!ok && err.contains("private"), "{err}");
    let (ok, gone, err) = run(&p, t, &["webhooks", "delete", &tenant.id, &id]).await;
    assert!(ok && gone["deleted"] == true, "{gone} {err}");
    let (ok, _, err) = run(&p, t, &["webhooks", "show", &tenant.id, &id]).await;
    assert!(!ok && err.contains("404"), "{err}");
}
