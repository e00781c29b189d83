//! The model registry on the real services: a second version registered,
//! loaded, given the `stable` label under load and the first one unloaded,
//! with no request failing; a corrupt version that fails to load and changes
//! nothing; loads on a number of workers; the int8 MiniLM served as
//! `canary` beside `stable`.

use maas_testkit::{assert_error, models_dir, Options, Platform};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MINILM: &str = "all-minilm-l6-v2";

async fn admin(
    p: &Platform,
    method: reqwest::Method,
    path: &str,
    body: Value,
) -> reqwest::Response {
    p.http
        .request(method, p.url(path))
        .bearer_auth(p.admin_token())
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn index(p: &Platform) -> Value {
    let r = p
        .http
        .get(p.url("/admin/v1/models"))
        .bearer_auth(p.admin_token())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

fn version<'a>(index: &'a Value, model: &str, version: &str) -> &'a Value {
    index["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == model)
        .and_then(|m| {
            m["versions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["version"] == version)
        })
        .unwrap_or_else(|| panic!("{model}@{version} not in the index: {index}"))
}

/// The states of `model@version` on every worker, sorted.
fn states(index: &Value, model: &str, v: &str) -> Vec<String> {
    let mut s: Vec<String> = version(index, model, v)["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["state"].as_str().unwrap().to_owned())
        .collect();
    s.sort();
    s
}

/// Polls the index until `done` holds for it.
async fn wait_index(
    p: &Platform,
    what: &str,
    limit: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let t0 = Instant::now();
    loop {
        let i = index(p).await;
        if done(&i) {
            return i;
        }
        assert!(t0.elapsed() < limit, "{what} not within {limit:?}: {i}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn embed(p: &Platform, key: &str, model: &str, text: &str) -> reqwest::Response {
    p.http
        .post(p.url("/v1/embeddings"))
        .bearer_auth(key)
        .json(&json!({"model": model, "input": [text]}))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn stable_moves_to_a_new_version_under_load_and_the_old_one_unloads_with_no_request_failing()
{
    let p = Arc::new(
        Platform::start(Options {
            workers: 2,
            with_models: true,
            ..Options::default()
        })
        .await
        .unwrap(),
    );
    p.wait_for_live_workers(2).await.unwrap();
    let t = p.create_tenant("acme", 1).await;

    // The seeded version is ready on both workers.
    let i = wait_index(&p, "f16 ready on 2 workers", Duration::from_secs(60), |i| {
        version(i, MINILM, "f16")["ready_workers"] == 2
    })
    .await;
    let m = i["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == MINILM)
        .unwrap();
    assert_eq!(m["labels"]["stable"], "f16", "{m}");

    // 8 clients send embeddings for as long as the swap takes.
    let stop = Arc::new(AtomicBool::new(false));
    let answers: Arc<Mutex<Vec<(u16, String)>>> = Arc::default();
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let (p, key, stop, answers) = (p.clone(), t.key.clone(), stop.clone(), answers.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let r = embed(&p, &key, MINILM, &format!("client {c} request {n}")).await;
                    let status = r.status().as_u16();
                    let body = r.text().await.unwrap();
                    answers.lock().unwrap().push((status, body));
                    n += 1;
                }
            })
        })
        .collect();

    // A second version from the same files.
    let r = admin(
        &p,
        reqwest::Method::POST,
        &format!("/admin/v1/models/{MINILM}/versions"),
        json!({"version": "v2", "path": MINILM}),
    )
    .await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    // Registered again: a conflict; not loaded yet: the label cannot move.
    let r = admin(
        &p,
        reqwest::Method::POST,
        &format!("/admin/v1/models/{MINILM}/versions"),
        json!({"version": "v2", "path": MINILM}),
    )
    .await;
    assert_error(r, 409, "conflict").await;
    let stable = format!("/admin/v1/models/{MINILM}/labels/stable");
    let r = admin(&p, reqwest::Method::PUT, &stable, json!({"version": "v2"})).await;
    assert_error(r, 409, "version_not_ready").await;

    let r = admin(
        &p,
        reqwest::Method::POST,
        &format!("/admin/v1/models/{MINILM}/versions/v2/load"),
        json!({}),
    )
    .await;
    assert_eq!(r.status(), 202);
    let i = wait_index(&p, "v2 ready on 2 workers", Duration::from_secs(60), |i| {
        version(i, MINILM, "v2")["ready_workers"] == 2
    })
    .await;
    // The first load pinned the files' checksum.
    assert_eq!(
        version(&i, MINILM, "v2")["checksum"].as_str().map(str::len),
        Some(64),
        "{i}"
    );

    // The old version cannot be unloaded while `stable` points at it.
    let unload_f16 = format!("/admin/v1/models/{MINILM}/versions/f16/unload");
    let r = admin(&p, reqwest::Method::POST, &unload_f16, json!({})).await;
    assert_error(r, 409, "version_in_use").await;

    // Move it; then unload the old version.
    let r = admin(&p, reqwest::Method::PUT, &stable, json!({"version": "v2"})).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let moved_at = chrono::Utc::now();
    let r = admin(&p, reqwest::Method::POST, &unload_f16, json!({})).await;
    assert_eq!(r.status(), 202);
    wait_index(
        &p,
        "f16 unloaded on both workers",
        Duration::from_secs(60),
        |i| states(i, MINILM, "f16") == ["unloaded", "unloaded"],
    )
    .await;
    let unloaded_at = chrono::Utc::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }

    // No request failed.
    let answers = answers.lock().unwrap().clone();
    let failed: Vec<&(u16, String)> = answers.iter().filter(|(s, _)| *s != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} failed: {:?}",
        failed.len(),
        answers.len(),
        &failed[..failed.len().min(3)]
    );
    assert!(answers.len() >= 40, "only {} requests", answers.len());

    // Each job records the version that ran it: the old one before the move,
    // the new one after; none of the old one after its unload.
    let rows: Vec<(Option<String>, chrono::DateTime<chrono::Utc>, String)> = sqlx::query_as(
        "SELECT model_version, created_at, status::text FROM jobs WHERE tenant_id = $1::uuid",
    )
    .bind(&t.id)
    .fetch_all(&p.db)
    .await
    .unwrap();
    assert_eq!(rows.len(), answers.len());
    assert!(rows.iter().all(|(_, _, s)| s == "succeeded"));
    let on = |v: &str| {
        rows.iter()
            .filter(|(mv, _, _)| mv.as_deref() == Some(v))
            .count()
    };
    assert_eq!(
        on("f16") + on("v2"),
        rows.len(),
        "a job without its version"
    );
    assert!(
        on("f16") > 0 && on("v2") > 0,
        "f16 {} v2 {}",
        on("f16"),
        on("v2")
    );
    assert!(rows
        .iter()
        .all(|(v, at, _)| v.as_deref() == Some("v2") || *at < unloaded_at));
    assert!(rows
        .iter()
        .all(|(v, at, _)| v.as_deref() == Some("f16")
            || *at > moved_at - chrono::Duration::seconds(1)));
    // And so does its usage.
    let usage: Vec<(Option<String>, i64)> = sqlx::query_as(
        "SELECT model_version, count(*) FROM usage_records WHERE tenant_id = $1::uuid GROUP BY 1 ORDER BY 1",
    )
    .bind(&t.id)
    .fetch_all(&p.db)
    .await
    .unwrap();
    assert_eq!(
        usage,
        vec![
            (Some("f16".to_owned()), on("f16") as i64),
            (Some("v2".to_owned()), on("v2") as i64)
        ]
    );
    // The tenant's own usage report splits the two versions the same way.
    let report: Value = p
        .http
        .get(p.url("/v1/usage?days=1"))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let per_version = |v: &str| -> i64 {
        report["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["model"] == MINILM && r["model_version"] == v)
            .map(|r| r["requests"].as_i64().unwrap())
            .sum()
    };
    assert_eq!(
        (per_version("f16"), per_version("v2")),
        (on("f16") as i64, on("v2") as i64),
        "{report}"
    );
    // The tenant sees the job's version.
    let job: Value = p
        .submit(
            &t.key,
            json!({"model": MINILM, "mode": "sync", "input": {"input": ["x"]}}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["model_version"], "v2", "{job}");

    // The model as the tenant sees it now; the old version by name is
    // unavailable (not loaded), an unknown label is not found.
    let r = p
        .http
        .get(p.url(&format!("/v1/models/{MINILM}")))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap();
    let m: Value = r.json().await.unwrap();
    assert_eq!(m["version"], "v2", "{m}");
    let r = embed(&p, &t.key, &format!("{MINILM}@f16"), "x").await;
    assert_error(r, 503, "model_unavailable").await;
    let r = embed(&p, &t.key, &format!("{MINILM}:canary"), "x").await;
    assert_error(r, 404, "model_not_found").await;
    let r = embed(&p, &t.key, &format!("{MINILM}@v2"), "x").await;
    assert_eq!(r.status(), 200);
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let n = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (n(a) * n(b))
}

fn vector(body: &Value) -> Vec<f64> {
    body["data"][0]["embedding"]
        .as_array()
        .unwrap_or_else(|| panic!("no embedding in {body}"))
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

#[tokio::test]
async fn the_int8_version_serves_as_canary_beside_stable_and_each_job_records_which_ran_it() {
    let p = Platform::start(Options {
        workers: 1,
        with_models: true,
        ..Options::default()
    })
    .await
    .unwrap();
    p.wait_for_live_workers(1).await.unwrap();
    let t = p.create_tenant("acme", 1).await;

    // A fresh install has the int8 version registered but not loaded.
    let i = wait_index(&p, "f16 ready", Duration::from_secs(60), |i| {
        version(i, MINILM, "f16")["ready_workers"] == 1
    })
    .await;
    let int8 = version(&i, MINILM, "int8");
    assert_eq!(int8["settings"]["precision"], "int8", "{int8}");
    assert_eq!(int8["ready_workers"], 0, "{int8}");
    let r = embed(&p, &t.key, &format!("{MINILM}@int8"), "x").await;
    assert_error(r, 503, "model_unavailable").await;

    // Loaded and labelled canary.
    let r = admin(
        &p,
        reqwest::Method::POST,
        &format!("/admin/v1/models/{MINILM}/versions/int8/load"),
        json!({}),
    )
    .await;
    assert_eq!(r.status(), 202);
    wait_index(&p, "int8 ready", Duration::from_secs(60), |i| {
        version(i, MINILM, "int8")["ready_workers"] == 1
    })
    .await;
    let canary = format!("/admin/v1/models/{MINILM}/labels/canary");
    let r = admin(
        &p,
        reqwest::Method::PUT,
        &canary,
        json!({"version": "int8"}),
    )
    .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    // The same texts through both labels: every request answered, and the
    // two versions agree (int8 stays within its measured accuracy).
    let texts = [
        "The weather is lovely today.",
        "How do I cancel my subscription?",
        "Rust has no garbage collector.",
        "a",
        "Quarterly results beat expectations by 4%.",
        "She sells sea shells by the sea shore.",
    ];
    let mut worst = 1.0f64;
    for text in texts {
        let stable = embed(&p, &t.key, MINILM, text).await;
        assert_eq!(stable.status(), 200);
        let stable: Value = stable.json().await.unwrap();
        let c = embed(&p, &t.key, &format!("{MINILM}:canary"), text).await;
        assert_eq!(c.status(), 200);
        let c: Value = c.json().await.unwrap();
        let cos = cosine(&vector(&stable), &vector(&c));
        assert!(cos < 1.0 - 1e-9, "canary gave the f16 vector for {text:?}");
        worst = worst.min(cos);
    }
    assert!(worst >= 0.998, "int8 vs f16: worst cosine {worst}");

    // Each job records the version that ran it, and the tenant sees it.
    let rows: Vec<(Option<String>, i64)> = sqlx::query_as(
        "SELECT model_version, count(*) FROM jobs WHERE tenant_id = $1::uuid AND status = 'succeeded' GROUP BY 1 ORDER BY 1",
    )
    .bind(&t.id)
    .fetch_all(&p.db)
    .await
    .unwrap();
    let n = texts.len() as i64;
    assert_eq!(
        rows,
        vec![(Some("f16".to_owned()), n), (Some("int8".to_owned()), n)]
    );
    let job: Value = p
        .submit(
            &t.key,
            json!({"model": format!("{MINILM}:canary"), "mode": "sync", "input": {"input": ["x"]}}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["model_version"], "int8", "{job}");

    // Labelled, it cannot be unloaded; stable is untouched.
    let r = admin(
        &p,
        reqwest::Method::POST,
        &format!("/admin/v1/models/{MINILM}/versions/int8/unload"),
        json!({}),
    )
    .await;
    assert_error(r, 409, "version_in_use").await;
    let m: Value = p
        .http
        .get(p.url(&format!("/v1/models/{MINILM}")))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(m["version"], "f16", "{m}");
}

#[tokio::test]
async fn a_corrupt_version_fails_to_load_with_its_reason_and_changes_nothing() {
    // The workers' models: the real ones, plus a copy of MiniLM whose
    // weights are cut short.
    let dir = std::env::temp_dir().join(format!("maas-models-{}", uuid::Uuid::new_v4().simple()));
    let real = models_dir();
    std::fs::create_dir_all(dir.join("minilm-corrupt")).unwrap();
    for m in [MINILM, "smollm2-135m-instruct"] {
        std::os::unix::fs::symlink(real.join(m), dir.join(m)).unwrap();
    }
    for e in std::fs::read_dir(real.join(MINILM)).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        if name != "model.safetensors" {
            std::os::unix::fs::symlink(e.path(), dir.join("minilm-corrupt").join(&name)).unwrap();
        }
    }
    let weights = std::fs::read(real.join(MINILM).join("model.safetensors")).unwrap();
    std::fs::write(
        dir.join("minilm-corrupt/model.safetensors"),
        &weights[..weights.len() / 3],
    )
    .unwrap();

    let p = Platform::start(Options {
        workers: 2,
        with_models: true,
        worker_env: vec![("MAAS_MODELS_DIR", dir.display().to_string())],
        ..Options::default()
    })
    .await
    .unwrap();
    p.wait_for_live_workers(2).await.unwrap();
    let t = p.create_tenant("acme", 1).await;
    let before = wait_index(&p, "f16 ready on 2 workers", Duration::from_secs(60), |i| {
        version(i, MINILM, "f16")["ready_workers"] == 2
    })
    .await;
    assert_eq!(embed(&p, &t.key, MINILM, "before").await.status(), 200);

    // Bad registrations are refused up front.
    let versions = format!("/admin/v1/models/{MINILM}/versions");
    for (body, field) in [
        (json!({"version": "x", "path": "../etc"}), "path"),
        (json!({"version": "x", "path": "/etc"}), "path"),
        (json!({"version": "Bad Name", "path": MINILM}), "version"),
        (
            json!({"version": "x", "path": MINILM, "checksum": "abc"}),
            "checksum",
        ),
    ] {
        let e = assert_error(
            admin(&p, reqwest::Method::POST, &versions, body).await,
            400,
            "invalid_request",
        )
        .await;
        assert_eq!(e["error"]["param"], field, "{e}");
    }
    let r = admin(
        &p,
        reqwest::Method::POST,
        "/admin/v1/models/nope/versions",
        json!({"version": "x", "path": "x"}),
    )
    .await;
    assert_error(r, 404, "model_not_found").await;

    // A corrupt file, and files that are not the registered ones.
    for (v, body) in [
        (
            "broken",
            json!({"version": "broken", "path": "minilm-corrupt"}),
        ),
        (
            "tampered",
            json!({"version": "tampered", "path": MINILM, "checksum": "0".repeat(64)}),
        ),
        (
            "missing",
            json!({"version": "missing", "path": "no-such-folder"}),
        ),
    ] {
        let r = admin(&p, reqwest::Method::POST, &versions, body).await;
        assert_eq!(r.status(), 201);
        let r = admin(
            &p,
            reqwest::Method::POST,
            &format!("{versions}/{v}/load"),
            json!({}),
        )
        .await;
        assert_eq!(r.status(), 202);
    }
    let after = wait_index(
        &p,
        "three failed loads on both workers",
        Duration::from_secs(60),
        |i| {
            ["broken", "tampered", "missing"]
                .iter()
                .all(|v| states(i, MINILM, v) == ["failed", "failed"])
        },
    )
    .await;
    for (v, says) in [
        ("broken", "safetensors"),
        ("tampered", "files changed"),
        ("missing", "no files"),
    ] {
        for w in version(&after, MINILM, v)["workers"].as_array().unwrap() {
            let reason = w["reason"].as_str().unwrap_or_default().to_lowercase();
            assert!(reason.contains(says), "{v}: {w}");
        }
        // Nothing points at a version that failed.
        let r = admin(
            &p,
            reqwest::Method::PUT,
            &format!("/admin/v1/models/{MINILM}/labels/canary"),
            json!({"version": v}),
        )
        .await;
        assert_error(r, 409, "version_not_ready").await;
    }
    // Everything else is as it was: the same labels, the same ready
    // versions, the workers ready, requests served.
    for (model, v) in [
        (MINILM, "f16"),
        ("smollm2-135m-instruct", "q4_1"),
        ("echo", "builtin"),
    ] {
        assert_eq!(
            states(&before, model, v),
            states(&after, model, v),
            "{model}@{v}"
        );
    }
    let labels = |i: &Value| -> Vec<Value> {
        i["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["labels"].clone())
            .collect()
    };
    assert_eq!(labels(&before), labels(&after));
    for w in &p.workers {
        let r = p.http.get(p.url_of(w, "/readyz")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(embed(&p, &t.key, MINILM, "after").await.status(), 200);
    // A version that did not load is unavailable, not a crash.
    assert_error(
        embed(&p, &t.key, &format!("{MINILM}@missing"), "x").await,
        503,
        "model_unavailable",
    )
    .await;

    // On one worker of two: exactly one replica.
    let r = admin(
        &p,
        reqwest::Method::POST,
        &versions,
        json!({"version": "one", "path": MINILM}),
    )
    .await;
    assert_eq!(r.status(), 201);
    let r = admin(
        &p,
        reqwest::Method::POST,
        &format!("{versions}/one/load"),
        json!({"replicas": 1}),
    )
    .await;
    assert_eq!(r.status(), 202);
    let i = wait_index(&p, "one replica ready", Duration::from_secs(60), |i| {
        version(i, MINILM, "one")["ready_workers"] == 1
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let i2 = index(&p).await;
    assert_eq!(states(&i, MINILM, "one"), ["ready"], "{i}");
    assert_eq!(states(&i2, MINILM, "one"), ["ready"], "{i2}");
    let r = admin(
        &p,
        reqwest::Method::PUT,
        &format!("/admin/v1/models/{MINILM}/labels/canary"),
        json!({"version": "one"}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        embed(&p, &t.key, &format!("{MINILM}:canary"), "x")
            .await
            .status(),
        200
    );
    let _ = std::fs::remove_dir_all(&dir);
}
