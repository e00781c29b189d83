//! Dependencies that go away and come back. Each test puts a fault proxy
//! between the services and one of the machine's shared dependencies and
//! cuts it (from the services' side, the dependency went down), then
//! restores it: every service must stay up, answer 503 with `Retry-After`
//! meanwhile, and finish every job it accepted.

use maas_testkit::{Options, Platform, TestTenant};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

async fn sync_echo(p: &Platform, key: &str, text: &str) -> reqwest::Response {
    p.submit(
        key,
        json!({"model": "echo", "mode": "sync", "input": {"text": text}}),
    )
    .await
}

async fn readyz(p: &Platform, api: usize) -> (u16, Value) {
    let r = p
        .http
        .get(p.url_of(&p.api[api], "/readyz"))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

/// A platform that has run a sync job, with five async jobs of `delay_ms`
/// accepted (their ids).
async fn started(opts: Options, delay_ms: u64) -> (Platform, TestTenant, Vec<String>) {
    let p = Platform::start(opts).await.unwrap();
    let t = p.create_tenant("acme", 1).await;
    assert_eq!(sync_echo(&p, &t.key, "before").await.status(), 200);
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            p.submit_async_echo(&t.key, &format!("early {i}"), delay_ms)
                .await,
        );
    }
    (p, t, ids)
}

/// Exactly one usage record per succeeded job, and every job succeeded.
async fn assert_each_succeeded_once(p: &Platform, ids: &[String]) {
    let uuids: Vec<uuid::Uuid> = ids.iter().map(|i| i.parse().unwrap()).collect();
    let (succeeded, usage): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM jobs WHERE id = ANY($1) AND status = 'succeeded'),
                (SELECT count(*) FROM usage_records WHERE job_id = ANY($1))",
    )
    .bind(&uuids)
    .fetch_one(&p.db)
    .await
    .unwrap();
    assert_eq!(succeeded, ids.len() as i64, "every accepted job succeeded");
    assert_eq!(usage, ids.len() as i64, "one usage record per job");
}

#[tokio::test]
async fn a_broker_outage_keeps_every_service_up_and_loses_no_accepted_job() {
    let (mut p, t, mut ids) = started(
        Options {
            proxy_amqp: true,
            ..Default::default()
        },
        300,
    )
    .await;

    let amqp = p.proxies.amqp.as_ref().unwrap();
    amqp.cut();
    tokio::time::sleep(Duration::from_millis(600)).await;

    // Async submissions are still accepted: the row is the promise.
    for i in 0..5 {
        ids.push(p.submit_async_echo(&t.key, &format!("during {i}"), 0).await);
    }
    // A sync caller gets a quick, clear 503.
    let t0 = Instant::now();
    let r = sync_echo(&p, &t.key, "during").await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    assert!(t0.elapsed() < Duration::from_secs(2), "503 within 2 s");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "service_unavailable");
    // What needs only Postgres keeps working.
    assert_eq!(p.get_job(&t.key, &ids[7]).await.status(), 200);
    let (status, ready) = readyz(&p, 0).await;
    assert_eq!(status, 503);
    assert_eq!(ready["missing"], json!(["rabbitmq"]));
    assert!(ready["outbox"].as_u64().unwrap() >= 5, "{ready}");

    tokio::time::sleep(Duration::from_secs(2)).await;
    amqp.restore();
    let back = Instant::now();
    for id in &ids {
        let j = p.wait_finished(&t.key, id, Duration::from_secs(15)).await;
        assert_eq!(j["status"], "succeeded", "{j}");
    }
    let recovered = back.elapsed();
    assert!(
        recovered < Duration::from_secs(15),
        "recovered in {recovered:?}"
    );
    assert_eq!(sync_echo(&p, &t.key, "after").await.status(), 200);
    assert_eq!(readyz(&p, 0).await.0, 200);
    assert!(p.all_running(), "no service exited");
    assert_each_succeeded_once(&p, &ids).await;
}

#[tokio::test]
async fn a_postgres_outage_is_answered_with_503s_and_the_scheduler_takes_over_again() {
    let (mut p, t, mut ids) = started(
        Options {
            proxy_postgres: true,
            ..Default::default()
        },
        500,
    )
    .await;

    let pg = p.proxies.postgres.as_ref().unwrap();
    pg.cut();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut unavailable = 0;
    for i in 0..3 {
        let t0 = Instant::now();
        let r = p
            .submit(
                &t.key,
                json!({"model": "echo", "mode": "async", "input": {"text": format!("during {i}")}}),
            )
            .await;
        let took = t0.elapsed();
        let status = r.status().as_u16();
        assert!(
            took < Duration::from_secs(3),
            "answered in {took:?} ({status})"
        );
        match status {
            // Accepted before the pool noticed: it must finish like the others.
            202 => ids.push(
                r.json::<Value>().await.unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            ),
            503 => {
                unavailable += 1;
                assert!(r.headers().contains_key("retry-after"));
            }
            other => panic!("answered {other} while Postgres was away"),
        }
    }
    assert!(unavailable >= 2, "{unavailable} of 3 were 503");
    let (status, ready) = readyz(&p, 0).await;
    assert_eq!(status, 503);
    assert_eq!(ready["missing"], json!(["postgres"]));

    tokio::time::sleep(Duration::from_secs(2)).await;
    pg.restore();
    let back = Instant::now();
    // New work is taken and run again: the scheduler competed for its lock
    // again and won it.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = sync_echo(&p, &t.key, "after").await;
        if r.status() == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no sync job succeeded within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for id in &ids {
        let j = p.wait_finished(&t.key, id, Duration::from_secs(15)).await;
        assert_eq!(j["status"], "succeeded", "{j}");
    }
    assert!(back.elapsed() < Duration::from_secs(15));
    assert!(p.all_running(), "no service exited");
    assert_each_succeeded_once(&p, &ids).await;
}

#[tokio::test]
async fn a_redis_outage_costs_callers_nothing() {
    let mut p = Platform::start(Options {
        proxy_redis: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let t = p.create_tenant("acme", 1).await;
    assert_eq!(sync_echo(&p, &t.key, "before").await.status(), 200);
    p.proxies.redis.as_ref().unwrap().cut();
    let mut ids = Vec::new();
    for i in 0..5 {
        let r = sync_echo(&p, &t.key, &format!("during {i}")).await;
        assert_eq!(r.status(), 200, "sync job while Redis is away");
        ids.push(
            r.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
        ids.push(p.submit_async_echo(&t.key, &format!("async {i}"), 0).await);
    }
    p.proxies.redis.as_ref().unwrap().restore();
    for id in &ids {
        let j = p.wait_finished(&t.key, id, Duration::from_secs(15)).await;
        assert_eq!(j["status"], "succeeded", "{j}");
    }
    assert!(p.all_running());
    assert_each_succeeded_once(&p, &ids).await;
}

#[tokio::test]
async fn a_service_started_while_a_dependency_is_down_waits_for_it() {
    let mut p = Platform::start(Options {
        proxy_amqp: true,
        proxy_postgres: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let t = p.create_tenant("acme", 1).await;
    p.proxies.amqp.as_ref().unwrap().cut();
    p.proxies.postgres.as_ref().unwrap().cut();
    // A second API instance and a second worker start into the outage.
    let api = p.spawn_api_unready().await.unwrap();
    p.spawn_worker(2).await.unwrap();
    let (status, ready) = readyz(&p, api).await;
    assert_eq!(status, 503);
    assert_eq!(ready["missing"], json!(["postgres", "rabbitmq"]));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(p.all_running(), "nothing exited while waiting");

    p.proxies.postgres.as_ref().unwrap().restore();
    p.proxies.amqp.as_ref().unwrap().restore();
    let deadline = Instant::now() + Duration::from_secs(15);
    while readyz(&p, api).await.0 != 200 {
        assert!(
            Instant::now() < deadline,
            "not ready 15 s after the dependencies came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    p.wait_for_live_workers(2).await.unwrap();
    let r = p
        .http
        .post(p.url_of(&p.api[api], "/v1/jobs"))
        .bearer_auth(&t.key)
        .json(&json!({"model": "echo", "mode": "sync", "input": {"text": "late"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(p.all_running());
}
