//! Token budgets (a Postgres ledger), the concurrency cap, per-key rate
//! limits and the queue as a tenant sees it.

use maas_testkit::{assert_error, Options, Platform};
use serde_json::{json, Value};
use std::time::Duration;

async fn ledger(p: &Platform, tenant: &str) -> (i64, i64) {
    sqlx::query_as("SELECT spent, reserved FROM budget_ledger WHERE tenant_id = $1::uuid")
        .bind(tenant)
        .fetch_one(&p.db)
        .await
        .unwrap()
}

async fn usage(p: &Platform, key: &str) -> Value {
    let r = p
        .http
        .get(p.url("/v1/usage"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test]
async fn a_budget_for_fifty_admits_exactly_fifty_of_two_hundred_concurrent_requests() {
    let p = Platform::start(Options::default()).await.unwrap();
    let (a, b) = (
        p.create_tenant("budgeted", 1).await,
        p.create_tenant("other", 1).await,
    );
    // Spend some of the period first: 5 words in and out = 10 tokens.
    p.set_quota(
        &a.id,
        json!({"token_budget": 1_000_000, "budget_period": "month"}),
    )
    .await;
    let r = p
        .submit(
            &a.key,
            json!({"model": "echo", "mode": "sync", "input": {"text": "one two three four five"}}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(ledger(&p, &a.id).await, (10, 0));
    // Each request below may use 6 tokens (3 words in, 3 out): leave room for exactly 50.
    let budget = 10 + 50 * 6;
    p.set_quota(
        &a.id,
        json!({"token_budget": budget, "budget_period": "month"}),
    )
    .await;
    let body =
        json!({"model": "echo", "mode": "async", "input": {"text": "a b c", "delay_ms": 200}});
    let answers = futures_util::future::join_all((0..200).map(|_| {
        p.http
            .post(p.url("/v1/jobs"))
            .bearer_auth(&a.key)
            .json(&body)
            .send()
    }))
    .await;
    let mut accepted = Vec::new();
    let mut refused = 0;
    for r in answers {
        let r = r.unwrap();
        match r.status().as_u16() {
            202 => accepted.push(
                r.json::<Value>().await.unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            ),
            429 => {
                let v = assert_error(r, 429, "insufficient_quota").await;
                assert!(
                    v["error"]["type"] == "insufficient_quota"
                        && v["error"]["message"]
                            .as_str()
                            .unwrap()
                            .contains("0 tokens left"),
                    "{v}"
                );
                refused += 1;
            }
            s => panic!("unexpected status {s}"),
        }
    }
    assert_eq!(
        (accepted.len(), refused),
        (50, 150),
        "exactly what the budget covers"
    );
    let (spent, reserved) = ledger(&p, &a.id).await;
    assert_eq!(
        spent + reserved,
        budget,
        "reserved at admission: nothing more can be admitted while they run"
    );
    // Another tenant is admitted as usual meanwhile.
    let r = p
        .submit(
            &b.key,
            json!({"model": "echo", "mode": "sync", "input": {"text": "still fine"}}),
        )
        .await;
    assert_eq!(r.status(), 200);
    for id in &accepted {
        let v = p.wait_finished(&a.key, id, Duration::from_secs(120)).await;
        assert_eq!(v["status"], "succeeded");
    }
    // Settled: every reservation released, exactly the recorded usage spent,
    // never more than the budget.
    assert_eq!(ledger(&p, &a.id).await, (budget, 0));
    let recorded: i64 = sqlx::query_scalar("SELECT sum(prompt_tokens + completion_tokens)::bigint FROM usage_records WHERE tenant_id = $1::uuid")
        .bind(&a.id)
        .fetch_one(&p.db)
        .await
        .unwrap();
    assert_eq!(recorded, budget);
    let u = usage(&p, &a.key).await;
    assert_eq!(
        u["budget"],
        json!({"limit": budget, "period": "month", "period_start": u["budget"]["period_start"], "spent": budget, "reserved": 0, "remaining": 0})
    );
    let r = p
        .submit(
            &a.key,
            json!({"model": "echo", "mode": "sync", "input": {"text": "x"}}),
        )
        .await;
    assert_error(r, 429, "insufficient_quota").await;
    // A request that needs nothing more than what is left still goes: an empty text uses no tokens.
    let r = p
        .submit(
            &a.key,
            json!({"model": "echo", "mode": "sync", "input": {"text": ""}}),
        )
        .await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_reservation_is_released_when_a_job_ends_without_running() {
    let p = Platform::start(Options {
        worker_slots: 1,
        ..Options::default()
    })
    .await
    .unwrap();
    let a = p.create_tenant("budgeted", 1).await;
    p.set_quota(&a.id, json!({"token_budget": 100, "budget_period": "day"}))
        .await;
    // One slot: the first job runs for a while, the second waits in the queue.
    let running = p.submit_async_echo(&a.key, "one two", 30_000).await;
    let queued = p.submit_async_echo(&a.key, "three four five", 30_000).await;
    assert_eq!(ledger(&p, &a.id).await, (0, 4 + 6));
    for id in [&queued, &running] {
        let r = p
            .http
            .post(p.url(&format!("/v1/jobs/{id}/cancel")))
            .bearer_auth(&a.key)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
    // Cancelled jobs used nothing: both reservations go back, nothing is spent.
    assert_eq!(ledger(&p, &a.id).await, (0, 0));
    assert_eq!(usage(&p, &a.key).await["budget"]["remaining"], 100);
}

#[tokio::test]
async fn max_concurrent_caps_waiting_callers_and_running_jobs() {
    let p = Platform::start(Options {
        worker_slots: 8,
        ..Options::default()
    })
    .await
    .unwrap();
    let (a, b) = (
        p.create_tenant("capped", 1).await,
        p.create_tenant("free", 1).await,
    );
    p.set_quota(&a.id, json!({"max_concurrent": 2})).await;
    // Sync callers: two in progress, a third is refused at once.
    let slow = json!({"model": "echo", "mode": "sync", "input": {"text": "x", "delay_ms": 1500}});
    let (first, second) = (
        p.submit(&a.key, slow.clone()),
        p.submit(&a.key, slow.clone()),
    );
    let third = async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        p.submit(&a.key, slow.clone()).await
    };
    let (r1, r2, r3) = tokio::join!(first, second, third);
    assert_eq!((r1.status().as_u16(), r2.status().as_u16()), (200, 200));
    assert_eq!(r3.headers()["retry-after"], "1");
    let v = assert_error(r3, 429, "concurrency_limit_exceeded").await;
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_concurrent"),
        "{v}"
    );
    // Async jobs queue instead, and the scheduler runs at most two at a time
    // although the worker has 8 slots; the other tenant's jobs all run together.
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push((a.key.clone(), p.submit_async_echo(&a.key, "y", 400).await));
        ids.push((b.key.clone(), p.submit_async_echo(&b.key, "z", 400).await));
    }
    for (key, id) in &ids {
        assert_eq!(
            p.wait_finished(key, id, Duration::from_secs(60)).await["status"],
            "succeeded"
        );
    }
    // Most jobs of each tenant held by workers at one time, from the recorded
    // dispatch and finish times.
    let overlap = |tenant: String| {
        let db = p.db.clone();
        async move {
            let rows: Vec<(chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
                "SELECT dispatched_at, finished_at FROM jobs WHERE tenant_id = $1::uuid AND mode = 'async'",
            )
            .bind(tenant)
            .fetch_all(&db)
            .await
            .unwrap();
            rows.iter()
                .map(|(s, _)| rows.iter().filter(|(s2, f2)| s2 <= s && f2 > s).count())
                .max()
                .unwrap()
        }
    };
    assert_eq!(
        overlap(a.id.clone()).await,
        2,
        "the capped tenant never held more than 2"
    );
    assert!(
        overlap(b.id.clone()).await >= 3,
        "the other tenant is not capped"
    );
}

#[tokio::test]
async fn a_key_limit_applies_with_the_tenants_and_refusals_take_nothing() {
    let p = Platform::start(Options::default()).await.unwrap();
    let a = p.create_tenant("acme", 1).await;
    p.set_quota(&a.id, json!({"rpm": 100})).await;
    let r = p
        .admin_post(
            &format!("/admin/v1/tenants/{}/keys", a.id),
            json!({"name": "ci", "rpm": 3}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let limited: Value = r.json().await.unwrap();
    assert_eq!(limited["rpm"], 3);
    let key = limited["key"].as_str().unwrap().to_owned();
    let (mut ok, mut refused) = (0, 0);
    for _ in 0..6 {
        let r = p
            .http
            .get(p.url("/v1/models"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            200 => ok += 1,
            429 => {
                // The headers show the tighter limit: the key's.
                assert_eq!(r.headers()["x-ratelimit-limit-requests"], "3");
                let v = assert_error(r, 429, "rate_limit_exceeded").await;
                assert!(
                    v["error"]["message"]
                        .as_str()
                        .unwrap()
                        .contains("for this key"),
                    "{v}"
                );
                refused += 1;
            }
            s => panic!("unexpected {s}"),
        }
    }
    assert_eq!((ok, refused), (3, 3));
    // The tenant's bucket lost only the 3 admitted (plus this one): the 3
    // refused took nothing from it. It refills at 100/min, hence 96 or 97.
    let r = p
        .http
        .get(p.url("/v1/models"))
        .bearer_auth(&a.key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-ratelimit-limit-requests"], "100");
    let remaining: i64 = r.headers()["x-ratelimit-remaining-requests"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((96..=97).contains(&remaining), "remaining {remaining}");
    // Lifting the key's limit (audited) lets the key through again.
    let r = p
        .http
        .patch(p.url(&format!(
            "/admin/v1/keys/{}",
            limited["id"].as_str().unwrap()
        )))
        .bearer_auth(p.admin_token())
        .json(&json!({"rpm": null, "tpm": null}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = p
        .http
        .get(p.url("/v1/models"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let audited: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'key.limits'")
            .fetch_one(&p.db)
            .await
            .unwrap();
    assert_eq!(audited, 1);
    let r = p
        .http
        .patch(p.url(&format!(
            "/admin/v1/keys/{}",
            limited["id"].as_str().unwrap()
        )))
        .bearer_auth(p.admin_token())
        .json(&json!({"rpm": -1}))
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "invalid_request").await;
}

#[tokio::test]
async fn a_queued_job_shows_its_position_and_start_and_the_tenant_its_queue_times() {
    let p = Platform::start(Options {
        worker_slots: 1,
        ..Options::default()
    })
    .await
    .unwrap();
    let (a, b) = (
        p.create_tenant("acme", 1).await,
        p.create_tenant("other", 1).await,
    );
    // History for the estimate: two short jobs.
    for _ in 0..2 {
        let r = p
            .submit(
                &a.key,
                json!({"model": "echo", "mode": "sync", "input": {"text": "x", "delay_ms": 100}}),
            )
            .await;
        assert_eq!(r.status(), 200);
    }
    // One slot: the first job runs, the next three wait.
    let first = p.submit_async_echo(&a.key, "run", 1000).await;
    p.wait_count(
        &format!("SELECT count(*) FROM jobs WHERE id = '{first}' AND status = 'running'"),
        1,
        Duration::from_secs(10),
    )
    .await;
    let waiting: Vec<String> =
        futures_util::future::join_all((0..3).map(|_| p.submit_async_echo(&a.key, "wait", 100)))
            .await;
    let mut positions = Vec::new();
    for id in &waiting {
        let v: Value = p.get_job(&a.key, id).await.json().await.unwrap();
        assert_eq!(v["status"], "queued", "{v}");
        let wait = v["queue"]["estimated_wait_ms"]
            .as_i64()
            .expect("an estimate from the last hour's jobs");
        assert!(
            wait > 0 && v["queue"]["estimated_start_at"].is_string(),
            "{v}"
        );
        positions.push(v["queue"]["position"].as_i64().unwrap());
    }
    positions.sort();
    assert_eq!(positions, vec![1, 2, 3]);
    for id in &waiting {
        let v = p.wait_finished(&a.key, id, Duration::from_secs(30)).await;
        assert!(
            v.get("queue").is_none(),
            "a finished job has no queue place"
        );
    }
    let r = p
        .http
        .get(p.url("/v1/queue"))
        .bearer_auth(&a.key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let q: Value = r.json().await.unwrap();
    assert_eq!(q["queued_now"], 0);
    assert_eq!(q["queue_time"]["jobs"], 6, "{q}");
    let (p50, p95) = (
        q["queue_time"]["p50_ms"].as_f64().unwrap(),
        q["queue_time"]["p95_ms"].as_f64().unwrap(),
    );
    assert!(
        p50 <= p95 && p95 >= 500.0,
        "the last waiting job queued behind a 1 s job: {q}"
    );
    assert_eq!(q["queue_time_by_model"][0]["model"], "echo");
    // Another tenant sees only its own.
    let q: Value = p
        .http
        .get(p.url("/v1/queue"))
        .bearer_auth(&b.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(q["queue_time"]["jobs"], 0, "{q}");
}
