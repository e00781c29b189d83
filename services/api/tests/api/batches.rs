//! The Batch API on the real services: the official client end to end, and
//! what only the platform adds: admin listing and cancel, scopes, the
//! enqueued-token limit and the token budget checked at create.

use crate::files::upload_ok;
use maas_testkit::{assert_error, run_openai_script, Options, Platform};
use serde_json::{json, Value};
use std::time::Duration;

#[tokio::test]
async fn the_official_openai_client_runs_batches_end_to_end() {
    let p = Platform::start(Options {
        with_models: true,
        ..Options::default()
    })
    .await
    .unwrap();
    let t = p.create_tenant("acme", 1).await;
    let other = p.create_tenant("globex", 1).await;
    let stdout =
        run_openai_script(&p, "batches.py", &t.key, &[("OTHER_API_KEY", &other.key)]).await;
    println!("{stdout}");

    // Every line that ran was metered once, under its own job.
    let (lines, usage_rows): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE j.status = 'succeeded'),
                (SELECT count(*) FROM usage_records u JOIN jobs j2 ON j2.id = u.job_id WHERE j2.batch_id IS NOT NULL)
         FROM jobs j WHERE j.batch_id IS NOT NULL",
    )
    .fetch_one(&p.db)
    .await
    .unwrap();
    assert!(lines > 0, "no batch line succeeded");
    assert_eq!(usage_rows, lines, "one usage row per finished line");
}

fn chat_lines(n: usize, max_tokens: u32) -> Vec<u8> {
    let mut s = String::new();
    for i in 0..n {
        s.push_str(
            &json!({
                "custom_id": format!("r{i}"), "method": "POST", "url": "/v1/chat/completions",
                "body": {"model": "smollm2-135m-instruct", "max_tokens": max_tokens,
                         "messages": [{"role": "user", "content": format!("Count to {i}.")}]}
            })
            .to_string(),
        );
        s.push('\n');
    }
    s.into_bytes()
}

async fn create(p: &Platform, key: &str, file: &str) -> reqwest::Response {
    p.http
        .post(p.url("/v1/batches"))
        .bearer_auth(key)
        .json(&json!({"input_file_id": file, "endpoint": "/v1/chat/completions", "completion_window": "24h"}))
        .send()
        .await
        .unwrap()
}

async fn admin_get(p: &Platform, path: &str) -> reqwest::Response {
    p.http
        .get(p.url(path))
        .bearer_auth(p.admin_token())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn limits_hold_at_create_and_admins_list_and_cancel_a_tenants_batches() {
    let p = Platform::start(Options {
        with_models: true,
        ..Options::default()
    })
    .await
    .unwrap();
    let t = p.create_tenant("acme", 1).await;
    let small = upload_ok(&p, &t.key, "small.jsonl", &chat_lines(10, 48)).await;
    let small_id = small["id"].as_str().unwrap();

    // A key without the batches scope cannot create one.
    let r = p
        .admin_post(
            &format!("/admin/v1/tenants/{}/keys", t.id),
            json!({"scopes": ["files"]}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let files_only: Value = r.json().await.unwrap();
    let r = create(&p, files_only["key"].as_str().unwrap(), small_id).await;
    assert_error(r, 403, "insufficient_scope").await;

    // The enqueued-token limit is checked for the whole batch at create.
    let r = p
        .http
        .put(p.url(&format!("/admin/v1/tenants/{}/file-limits", t.id)))
        .bearer_auth(p.admin_token())
        .json(&json!({"max_batch_enqueued_tokens": 100}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["in_force"]["max_batch_enqueued_tokens"], 100, "{v}");
    let r = create(&p, &t.key, small_id).await;
    let retry = r.headers().get("x-should-retry").cloned();
    let e = assert_error(r, 429, "insufficient_quota").await;
    assert_eq!(retry.unwrap(), "false", "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("100"),
        "{e}"
    );
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM batches")
        .fetch_one(&p.db)
        .await
        .unwrap();
    assert_eq!(n, 0, "a refused create leaves no batch");

    // So is the token budget: the batch's bound is reserved at create.
    let r = p
        .http
        .put(p.url(&format!("/admin/v1/tenants/{}/file-limits", t.id)))
        .bearer_auth(p.admin_token())
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    p.set_quota(
        &t.id,
        json!({"token_budget": 200, "budget_period": "month"}),
    )
    .await;
    let r = create(&p, &t.key, small_id).await;
    assert_error(r, 429, "insufficient_quota").await;
    p.set_quota(
        &t.id,
        json!({"token_budget": 10_000_000, "budget_period": "month"}),
    )
    .await;

    // A long batch, listed and cancelled by an admin.
    let big = upload_ok(&p, &t.key, "big.jsonl", &chat_lines(300, 64)).await;
    let r = create(&p, &t.key, big["id"].as_str().unwrap()).await;
    assert_eq!(r.status(), 200);
    let b: Value = r.json().await.unwrap();
    let id = b["id"].as_str().unwrap().to_owned();
    assert_eq!(b["status"], "in_progress", "{b}");
    assert_eq!(b["request_counts"]["total"], 300, "{b}");

    let r = admin_get(&p, &format!("/admin/v1/tenants/{}/batches", t.id)).await;
    assert_eq!(r.status(), 200);
    let list: Value = r.json().await.unwrap();
    assert_eq!(list["data"][0]["id"], id.as_str(), "{list}");
    assert_eq!(list["data"].as_array().unwrap().len(), 1, "{list}");

    let cancel = format!("/admin/v1/tenants/{}/batches/{id}/cancel", t.id);
    let r = p.admin_post(&cancel, json!({})).await;
    assert_eq!(r.status(), 200);
    let c: Value = r.json().await.unwrap();
    assert!(
        ["cancelling", "cancelled"].contains(&c["status"].as_str().unwrap()),
        "{c}"
    );
    let started = std::time::Instant::now();
    let ended = loop {
        let r = p
            .http
            .get(p.url(&format!("/v1/batches/{id}")))
            .bearer_auth(&t.key)
            .send()
            .await
            .unwrap();
        let v: Value = r.json().await.unwrap();
        if v["status"] == "cancelled" {
            break v;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "still not cancelled: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let rc = &ended["request_counts"];
    assert_eq!(rc["total"], 300);
    assert_eq!(
        rc["completed"].as_i64().unwrap() + rc["failed"].as_i64().unwrap(),
        300,
        "{ended}"
    );
    assert!(rc["failed"].as_i64().unwrap() > 0, "{ended}");
    assert!(ended["error_file_id"].is_string(), "{ended}");

    // Nothing of it stays reserved or queued.
    let (open,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM jobs WHERE batch_id = $1 AND status IN ('queued', 'dispatched', 'running')",
    )
    .bind(&id)
    .fetch_one(&p.db)
    .await
    .unwrap();
    assert_eq!(open, 0);
    let (reserved, spent): (i64, i64) =
        sqlx::query_as("SELECT reserved, spent FROM budget_ledger WHERE tenant_id = $1::uuid")
            .bind(&t.id)
            .fetch_one(&p.db)
            .await
            .unwrap();
    assert_eq!(
        reserved, 0,
        "the cancelled lines' reservations are released"
    );
    let (used,): (i64,) = sqlx::query_as(
        "SELECT coalesce(sum(prompt_tokens + completion_tokens), 0)::bigint FROM usage_records WHERE tenant_id = $1::uuid",
    )
    .bind(&t.id)
    .fetch_one(&p.db)
    .await
    .unwrap();
    assert_eq!(spent, used, "what the finished lines used is spent");

    // A second cancel answers with the cancelled batch (a completed one is a
    // 409: the client test covers it).
    let r = p.admin_post(&cancel, json!({})).await;
    assert_eq!(r.status(), 200);
    let again: Value = r.json().await.unwrap();
    assert_eq!(again["status"], "cancelled", "{again}");
    assert_eq!(again["request_counts"], ended["request_counts"]);
    let r = p
        .admin_post(
            &format!("/admin/v1/tenants/{}/batches/batch_nope/cancel", t.id),
            json!({}),
        )
        .await;
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn a_batch_survives_kill_9_of_a_worker_and_the_active_scheduler_with_every_line_once() {
    let mut p = Platform::start(Options {
        with_models: true,
        workers: 2,
        schedulers: 2,
        ..Options::default()
    })
    .await
    .unwrap();
    let t = p.create_tenant("acme", 1).await;
    let n = 2000;
    let mut s = String::new();
    for i in 0..n {
        s.push_str(
            &json!({
                "custom_id": format!("k{i}"), "method": "POST", "url": "/v1/embeddings",
                "body": {"model": "all-minilm-l6-v2",
                         "input": format!("line {i}: a sentence long enough to keep the workers busy for a little while, about the weather in the hills and the trains that run between the towns")}
            })
            .to_string(),
        );
        s.push('\n');
    }
    let f = upload_ok(&p, &t.key, "crash.jsonl", s.as_bytes()).await;
    let r = p
        .http
        .post(p.url("/v1/batches"))
        .bearer_auth(&t.key)
        .json(&json!({"input_file_id": f["id"], "endpoint": "/v1/embeddings", "completion_window": "24h"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let b: Value = r.json().await.unwrap();
    let id = b["id"].as_str().unwrap().to_owned();
    let get = |p: &Platform| {
        let req = p
            .http
            .get(p.url(&format!("/v1/batches/{id}")))
            .bearer_auth(&t.key);
        async move { req.send().await.unwrap().json::<Value>().await.unwrap() }
    };

    // Once lines are finishing, kill a worker holding lines and the active
    // scheduler.
    let started = std::time::Instant::now();
    loop {
        let v = get(&p).await;
        assert_eq!(v["status"], "in_progress", "ended before the kill: {v}");
        if v["request_counts"]["completed"].as_i64().unwrap() >= 50 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "{v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let holder: String = sqlx::query_scalar(
        "SELECT worker_id FROM jobs WHERE batch_id = $1 AND status IN ('dispatched', 'running') AND worker_id IS NOT NULL LIMIT 1",
    )
    .bind(&id)
    .fetch_one(&p.db)
    .await
    .unwrap();
    let mut killed = false;
    for w in p.workers.iter_mut() {
        let v: Value = p
            .http
            .get(format!("http://127.0.0.1:{}/readyz", w.port))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v["worker_id"] == holder.as_str() {
            w.kill9().await;
            killed = true;
            break;
        }
    }
    assert!(killed, "found a worker holding lines");
    let mut active = None;
    for (i, s) in p.schedulers.iter().enumerate() {
        let v: Value = p
            .http
            .get(p.url_of(s, "/readyz"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v["role"] == "active" {
            active = Some(i);
        }
    }
    p.schedulers[active.expect("an active scheduler")]
        .kill9()
        .await;

    let ended = loop {
        let v = get(&p).await;
        if v["status"] != "in_progress" && v["status"] != "finalizing" {
            break v;
        }
        assert!(
            started.elapsed() < Duration::from_secs(400),
            "not done: {v}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(ended["status"], "completed", "{ended}");
    assert_eq!(ended["request_counts"]["completed"], n, "{ended}");
    assert_eq!(ended["request_counts"]["failed"], 0, "{ended}");
    let out = p
        .http
        .get(p.url(&format!(
            "/v1/files/{}/content",
            ended["output_file_id"].as_str().unwrap()
        )))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut seen = std::collections::HashSet::new();
    for l in out.lines() {
        let v: Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["response"]["status_code"], 200, "{v}");
        assert!(
            seen.insert(v["custom_id"].as_str().unwrap().to_owned()),
            "custom_id twice: {v}"
        );
    }
    assert_eq!(seen.len(), n, "every custom_id exactly once");
    let (usage, retried): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM usage_records u JOIN jobs j ON j.id = u.job_id WHERE j.batch_id = $1),
                (SELECT count(*) FROM jobs WHERE batch_id = $1 AND attempts > 1)",
    )
    .bind(&id)
    .fetch_one(&p.db)
    .await
    .unwrap();
    assert_eq!(usage, n as i64, "one usage row per line");
    assert!(retried > 0, "the killed worker's lines ran again elsewhere");
}

fn embed_lines(prefix: &str, n: usize) -> Vec<u8> {
    let mut s = String::new();
    for i in 0..n {
        s.push_str(
            &json!({
                "custom_id": format!("{prefix}{i}"), "method": "POST", "url": "/v1/embeddings",
                "body": {"model": "all-minilm-l6-v2",
                         "input": format!("line {i}: a sentence long enough to keep the workers busy for a little while, about the weather in the hills and the trains that run between the towns")}
            })
            .to_string(),
        );
        s.push('\n');
    }
    s.into_bytes()
}

async fn create_embed_batch(
    p: &Platform,
    key: &str,
    name: &str,
    lines: &[u8],
    window: &str,
) -> String {
    let f = upload_ok(p, key, name, lines).await;
    let r = p
        .http
        .post(p.url("/v1/batches"))
        .bearer_auth(key)
        .json(&json!({"input_file_id": f["id"], "endpoint": "/v1/embeddings", "completion_window": window}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["completion_window"], window, "echoed as sent");
    b["id"].as_str().unwrap().to_owned()
}

/// The sum of a metric's samples whose labels include every given pair.
fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.split(['{', ' ']).next() == Some(name)
                && labels
                    .iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn a_1h_batch_goes_before_the_tenants_24h_lines_and_batch_metrics_are_per_tenant() {
    let p = Platform::start(Options {
        with_models: true,
        ..Options::default()
    })
    .await
    .unwrap();
    let t = p.create_tenant("acme", 1).await;
    let (n_slow, n_fast) = (1500, 20);
    let slow_lines = embed_lines("s", n_slow);
    let fast_lines = embed_lines("f", n_fast);
    let slow = create_embed_batch(&p, &t.key, "slow.jsonl", &slow_lines, "24h").await;
    let fast = create_embed_batch(&p, &t.key, "fast.jsonl", &fast_lines, "1h").await;
    let get = |id: &str| {
        let req = p
            .http
            .get(p.url(&format!("/v1/batches/{id}")))
            .bearer_auth(&t.key);
        async move { req.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let api_metrics = || {
        let req = p.http.get(p.url("/metrics"));
        async move { req.send().await.unwrap().text().await.unwrap() }
    };

    // The 1h batch's lines, queued behind 1,500 of the tenant's 24h lines,
    // all end while most of the 24h batch still waits; while the 24h batch
    // runs, the gauge shows the tenant's unfinished lines.
    let started = std::time::Instant::now();
    let mut max_queued = 0.0f64;
    loop {
        let f = get(&fast).await;
        let m = api_metrics().await;
        max_queued = max_queued.max(metric_sum(
            &m,
            "maas_batch_api_lines_queued",
            &[("tenant", &t.id), ("model", "all-minilm-l6-v2")],
        ));
        if f["request_counts"]["completed"] == n_fast {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{f}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = get(&slow).await;
    let slow_done = s["request_counts"]["completed"].as_i64().unwrap();
    assert!(
        slow_done < (n_slow as i64) / 2,
        "the 1h lines waited behind the 24h ones: {slow_done} of {n_slow} 24h lines were done first"
    );

    // Both end (the gauge is read meanwhile); each batch's time to first
    // line is observed once; the worker counts every line under the tenant.
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    for id in [&fast, &slow] {
        loop {
            let v = get(id).await;
            if v["status"] == "completed" {
                break;
            }
            max_queued = max_queued.max(metric_sum(
                &api_metrics().await,
                "maas_batch_api_lines_queued",
                &[("tenant", &t.id), ("model", "all-minilm-l6-v2")],
            ));
            assert!(std::time::Instant::now() < deadline, "{v}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert!(max_queued > 0.0, "the lines-queued gauge moved");
    let m = api_metrics().await;
    let tl = [("tenant", t.id.as_str()), ("model", "all-minilm-l6-v2")];
    assert_eq!(
        metric_sum(&m, "maas_batch_api_time_to_first_line_seconds_count", &tl),
        2.0,
        "{m}"
    );
    let w = p
        .http
        .get(p.url_of(&p.workers[0], "/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        metric_sum(
            &w,
            "maas_batch_api_lines_total",
            &[("tenant", &t.id), ("outcome", "succeeded")]
        ),
        (n_slow + n_fast) as f64
    );

    // A batch past its window is a deadline miss, its unfinished lines
    // counted as expired.
    let late = create_embed_batch(&p, &t.key, "late.jsonl", &slow_lines, "24h").await;
    sqlx::query("UPDATE batches SET expires_at = now() WHERE id = $1")
        .bind(&late)
        .execute(&p.db)
        .await
        .unwrap();
    loop {
        let v = get(&late).await;
        if v["status"] == "expired" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline + Duration::from_secs(60),
            "{v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let m = api_metrics().await;
    assert_eq!(
        metric_sum(&m, "maas_batch_api_deadline_misses_total", &tl),
        1.0
    );
    assert!(metric_sum(&m, "maas_batch_api_lines_expired_total", &tl) > 0.0);
    assert_eq!(
        metric_sum(&m, "maas_batch_api_lines_queued", &tl),
        0.0,
        "no open batch, no queued lines: {m}"
    );
}
