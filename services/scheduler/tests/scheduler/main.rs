//! Black-box tests of the scheduler: restart, fail-over, fairness, dead-lettering.

#![allow(clippy::unwrap_used)]

use futures_util::StreamExt;
use maas_testkit::{Options, Platform};
use serde_json::Value;
use std::time::Duration;

async fn role(p: &Platform, i: usize) -> String {
    let v: Value = p
        .http
        .get(p.url_of(&p.schedulers[i], "/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["role"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn queued_jobs_complete_after_a_scheduler_restart() {
    let mut p = Platform::start(Options::default()).await.unwrap();
    let t = p.create_tenant("acme", 1).await;
    assert!(
        p.schedulers[0].terminate(Duration::from_secs(10)).await,
        "scheduler exits cleanly on SIGTERM"
    );
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(p.submit_async_echo(&t.key, &format!("r{i}"), 10).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status = 'queued'")
        .fetch_one(&p.db)
        .await
        .unwrap();
    assert_eq!(queued, 20, "nothing runs without a scheduler");
    p.spawn_scheduler().await.unwrap();
    for id in &ids {
        assert_eq!(
            p.wait_finished(&t.key, id, Duration::from_secs(60)).await["status"],
            "succeeded"
        );
    }
}

#[tokio::test]
async fn a_standby_scheduler_takes_over_when_the_active_one_is_killed() {
    let p = Platform::start(Options {
        schedulers: 2,
        ..Options::default()
    })
    .await
    .unwrap();
    let mut p = p;
    let t = p.create_tenant("acme", 1).await;
    let roles = [role(&p, 0).await, role(&p, 1).await];
    let active = roles
        .iter()
        .position(|r| r == "active")
        .expect("one scheduler is active");
    assert_eq!(roles[1 - active], "standby");
    let before = p.submit_async_echo(&t.key, "before", 0).await;
    assert_eq!(
        p.wait_finished(&t.key, &before, Duration::from_secs(30))
            .await["status"],
        "succeeded"
    );

    // Jobs in flight and queued while the active scheduler dies.
    let mut ids = Vec::new();
    for i in 0..30 {
        ids.push(p.submit_async_echo(&t.key, &format!("f{i}"), 100).await);
    }
    p.schedulers[active].kill9().await;
    for i in 0..10 {
        ids.push(p.submit_async_echo(&t.key, &format!("g{i}"), 0).await);
    }
    for id in &ids {
        assert_eq!(
            p.wait_finished(&t.key, id, Duration::from_secs(60)).await["status"],
            "succeeded"
        );
    }
    assert_eq!(role(&p, 1 - active).await, "active");
    let results: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_records")
        .fetch_one(&p.db)
        .await
        .unwrap();
    assert_eq!(results, 41, "one result per job");
}

#[tokio::test]
async fn a_late_tenant_finishes_before_a_large_backlog_is_half_done() {
    let p = Platform::start(Options {
        worker_slots: 8,
        ..Options::default()
    })
    .await
    .unwrap();
    let a = p.create_tenant("a", 1).await;
    let b = p.create_tenant("b", 1).await;
    let submit_many = |key: String, n: usize| {
        let p = &p;
        futures_util::stream::iter(0..n)
            .map(move |i| {
                let key = key.clone();
                async move { p.submit_async_echo(&key, &format!("{i}"), 50).await }
            })
            .buffer_unordered(16)
            .collect::<Vec<String>>()
    };
    let a_ids = submit_many(a.key.clone(), 2000).await;
    assert_eq!(a_ids.len(), 2000);
    let b_ids = submit_many(b.key.clone(), 50).await;
    let b_done = p
        .wait_count(
            &format!(
                "SELECT count(*) FROM jobs WHERE tenant_id = '{}' AND status = 'succeeded'",
                b.id
            ),
            50,
            Duration::from_secs(120),
        )
        .await;
    assert_eq!(b_done, 50, "all of B's jobs finished");
    let a_before_b: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE tenant_id = $1::uuid AND status = 'succeeded'
           AND finished_at < (SELECT max(finished_at) FROM jobs WHERE tenant_id = $2::uuid)",
    )
    .bind(&a.id)
    .bind(&b.id)
    .fetch_one(&p.db)
    .await
    .unwrap();
    eprintln!("fairness: {a_before_b} of A's 2000 jobs finished before B's last");
    assert!(
        a_before_b < 1000,
        "A had {a_before_b} of 2000 done when B's last job finished"
    );
    assert_eq!(b_ids.len(), 50);
}

#[tokio::test]
async fn a_job_that_loses_its_worker_on_every_attempt_fails_and_is_dead_lettered() {
    let mut p = Platform::start(Options {
        max_attempts: 1,
        worker_slots: 1,
        ..Options::default()
    })
    .await
    .unwrap();
    let t = p.create_tenant("acme", 1).await;
    let id = p.submit_async_echo(&t.key, "doomed", 60_000).await;
    p.wait_count(
        &format!("SELECT count(*) FROM jobs WHERE id = '{id}' AND status = 'running'"),
        1,
        Duration::from_secs(20),
    )
    .await;
    p.workers[0].kill9().await;
    let done = p.wait_finished(&t.key, &id, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "failed");
    assert_eq!(done["error"]["code"], "worker_lost");
    assert_eq!(done["attempts"], 1);
}

#[tokio::test]
async fn tenants_weighted_two_to_one_complete_jobs_two_to_one_while_both_saturate() {
    let p = Platform::start(Options {
        worker_slots: 4,
        ..Options::default()
    })
    .await
    .unwrap();
    let a = p.create_tenant("heavy", 2).await;
    let b = p.create_tenant("light", 1).await;
    let submit_many = |key: String, n: usize| {
        let p = &p;
        futures_util::stream::iter(0..n)
            .map(move |i| {
                let key = key.clone();
                async move { p.submit_async_echo(&key, &format!("{i}"), 40).await }
            })
            .buffer_unordered(8)
            .collect::<Vec<String>>()
    };
    // Both backlogs are queued together, so both tenants saturate the slots.
    let (ids_a, ids_b) = tokio::join!(
        submit_many(a.key.clone(), 300),
        submit_many(b.key.clone(), 300)
    );
    assert_eq!((ids_a.len(), ids_b.len()), (300, 300));
    let done = p
        .wait_count(
            "SELECT count(*) FROM jobs WHERE status = 'succeeded'",
            270,
            Duration::from_secs(120),
        )
        .await;
    assert!(done >= 270);
    // The window from the 60th to the 270th completion: both still had work.
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT tenant_id::text, count(*) FROM (
             SELECT tenant_id FROM jobs WHERE status = 'succeeded' ORDER BY finished_at, id OFFSET 60 LIMIT 210
         ) w GROUP BY tenant_id",
    )
    .fetch_all(&p.db)
    .await
    .unwrap();
    let count = |id: &str| rows.iter().find(|r| r.0 == id).map_or(0, |r| r.1);
    let (na, nb) = (count(&a.id), count(&b.id));
    let ratio = na as f64 / nb.max(1) as f64;
    eprintln!("weights 2:1 → completed {na}:{nb} = {ratio:.2}");
    assert!(
        (1.8..=2.2).contains(&ratio),
        "completed {na}:{nb} = {ratio:.2}, want 2.0 ± 0.2"
    );
}
