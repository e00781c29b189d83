use maas_testkit::{assert_error, Options, Platform};
use serde_json::{json, Value};
use std::time::Duration;

#[tokio::test]
async fn a_sync_echo_job_answers_200_with_its_output() {
    let p = Platform::start(Options::default()).await.unwrap();
    let t = p.create_tenant("acme", 1).await;
    let r = p
        .submit(
            &t.key,
            json!({"model": "echo", "mode": "sync", "input": {"text": "héllo ✓"}}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let job: Value = r.json().await.unwrap();
    assert_eq!(job["object"], "job");
    assert_eq!(job["status"], "succeeded");
    assert_eq!(job["output"], json!({"text": "héllo ✓"}));
    assert_eq!(job["attempts"], 1);
    assert!(uuid::Uuid::parse_str(job["id"].as_str().unwrap()).is_ok());
}

#[tokio::test]
async fn an_async_job_answers_202_then_polls_to_succeeded() {
    let p = Platform::start(Options::default()).await.unwrap();
    let t = p.create_tenant("acme", 1).await;
    let r = p
        .submit(
            &t.key,
            json!({"model": "echo", "mode": "async", "input": {"text": "later", "delay_ms": 200}}),
        )
        .await;
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let job: Value = r.json().await.unwrap();
    let id = job["id"].as_str().unwrap();
    assert_eq!(location, format!("/v1/jobs/{id}"));
    assert_eq!(job["status"], "queued");
    let done = p.wait_finished(&t.key, id, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "succeeded");
    assert_eq!(done["output"]["text"], "later");
    let usage: i64 =
        sqlx::query_scalar("SELECT count(*) FROM usage_records WHERE job_id = $1::uuid")
            .bind(id)
            .fetch_one(&p.db)
            .await
            .unwrap();
    assert_eq!(usage, 1);
}

#[tokio::test]
async fn a_sync_job_past_its_timeout_answers_202_with_a_location_to_poll() {
    let p = Platform::start(Options::default()).await.unwrap();
    let t = p.create_tenant("acme", 1).await;
    let r = p
        .submit(&t.key, json!({"model": "echo", "mode": "sync", "timeout_ms": 300, "input": {"text": "slow", "delay_ms": 1500}}))
        .await;
    assert_eq!(r.status(), 202);
    assert!(r.headers().contains_key("location"));
    let job: Value = r.json().await.unwrap();
    assert!(["queued", "dispatched", "running"].contains(&job["status"].as_str().unwrap()));
    let done = p
        .wait_finished(&t.key, job["id"].as_str().unwrap(), Duration::from_secs(30))
        .await;
    assert_eq!(done["status"], "succeeded");
}

#[tokio::test]
async fn cancelling_a_queued_job_means_it_never_runs_and_a_running_one_stops() {
    let p = Platform::start(Options {
        worker_slots: 1,
        ..Options::default()
    })
    .await
    .unwrap();
    let t = p.create_tenant("acme", 1).await;
    // The only slot is taken by a long job, so the second one stays queued.
    let running = p.submit_async_echo(&t.key, "long", 60_000).await;
    p.wait_count(
        &format!("SELECT count(*) FROM jobs WHERE id = '{running}' AND status = 'running'"),
        1,
        Duration::from_secs(20),
    )
    .await;
    let queued = p.submit_async_echo(&t.key, "never", 0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let r = p
        .http
        .post(p.url(&format!("/v1/jobs/{queued}/cancel")))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], "cancelled");

    let r = p
        .http
        .post(p.url(&format!("/v1/jobs/{running}/cancel")))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "cancelled");

    // The slot is free again: a sync job completes although the long job had
    // 60 s to go, so the worker really stopped it.
    let r = p
        .submit(
            &t.key,
            json!({"model": "echo", "mode": "sync", "timeout_ms": 5000, "input": {"text": "next"}}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "succeeded");

    let never: Value = p.get_job(&t.key, &queued).await.json().await.unwrap();
    assert_eq!(never["status"], "cancelled");
    assert_eq!(
        never["attempts"], 0,
        "the cancelled queued job was never dispatched"
    );
    assert!(never["started_at"].is_null());
    let long: Value = p.get_job(&t.key, &running).await.json().await.unwrap();
    assert_eq!(long["status"], "cancelled");
    assert!(long["output"].is_null(), "a cancelled job gets no result");

    // Cancelling again is harmless; cancelling a finished job is a conflict.
    let r = p
        .http
        .post(p.url(&format!("/v1/jobs/{queued}/cancel")))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let done = p
        .submit(
            &t.key,
            json!({"model": "echo", "mode": "sync", "input": {"text": "x"}}),
        )
        .await
        .json::<Value>()
        .await
        .unwrap();
    let r = p
        .http
        .post(p.url(&format!("/v1/jobs/{}/cancel", done["id"].as_str().unwrap())))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap();
    assert_error(r, 409, "job_not_cancellable").await;
}

#[tokio::test]
async fn the_same_idempotency_key_returns_the_same_job() {
    let p = Platform::start(Options::default()).await.unwrap();
    let t = p.create_tenant("acme", 1).await;
    let body = json!({"model": "echo", "mode": "sync", "input": {"text": "once"}});
    let send = || {
        p.http
            .post(p.url("/v1/jobs"))
            .bearer_auth(&t.key)
            .header("Idempotency-Key", "req-1")
            .json(&body)
            .send()
    };
    let first: Value = send().await.unwrap().json().await.unwrap();
    let r = send().await.unwrap();
    assert_eq!(r.status(), 200);
    let second: Value = r.json().await.unwrap();
    assert_eq!(first["id"], second["id"]);
    assert_eq!(second["output"]["text"], "once");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&p.db)
        .await
        .unwrap();
    assert_eq!(n, 1);
    // Another tenant may use the same key for its own job.
    let other = p.create_tenant("other", 1).await;
    let r = p
        .http
        .post(p.url("/v1/jobs"))
        .bearer_auth(&other.key)
        .header("Idempotency-Key", "req-1")
        .json(&body)
        .send()
        .await
        .unwrap();
    let third: Value = r.json().await.unwrap();
    assert_ne!(third["id"], first["id"]);
}

#[tokio::test]
async fn the_job_list_pages_through_every_job_once_newest_first() {
    let p = Platform::start(Options::default()).await.unwrap();
    let t = p.create_tenant("acme", 1).await;
    let mut ids = Vec::new();
    for i in 0..7 {
        ids.push(p.submit_async_echo(&t.key, &format!("j{i}"), 0).await);
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut url = p.url("/v1/jobs?limit=3");
        if let Some(a) = &after {
            url.push_str(&format!("&after={a}"));
        }
        let page: Value = p
            .http
            .get(url)
            .bearer_auth(&t.key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(page["object"], "list");
        for j in page["data"].as_array().unwrap() {
            seen.push(j["id"].as_str().unwrap().to_owned());
        }
        if !page["has_more"].as_bool().unwrap() {
            break;
        }
        after = Some(page["last_id"].as_str().unwrap().to_owned());
    }
    ids.reverse();
    assert_eq!(seen, ids);
}

#[tokio::test]
async fn a_tenant_gets_404_for_every_route_of_another_tenants_job() {
    let p = Platform::start(Options::default()).await.unwrap();
    let a = p.create_tenant("a", 1).await;
    let b = p.create_tenant("b", 1).await;
    let id = p.submit_async_echo(&a.key, "secret of a", 5_000).await;
    assert_error(p.get_job(&b.key, &id).await, 404, "not_found").await;
    let r = p
        .http
        .post(p.url(&format!("/v1/jobs/{id}/cancel")))
        .bearer_auth(&b.key)
        .send()
        .await
        .unwrap();
    assert_error(r, 404, "not_found").await;
    let list: Value = p
        .http
        .get(p.url("/v1/jobs"))
        .bearer_auth(&b.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 0);
    let r = p
        .http
        .get(p.url(&format!("/v1/jobs?after={id}")))
        .bearer_auth(&b.key)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.json::<Value>().await.unwrap()["data"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    // The owner still sees it, and B's attempt to cancel changed nothing.
    let own: Value = p.get_job(&a.key, &id).await.json().await.unwrap();
    assert_ne!(own["status"], "cancelled");
}
