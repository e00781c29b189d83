//! Black-box tests of the worker: crash recovery and graceful shutdown.

#![allow(clippy::unwrap_used)]

use maas_testkit::{Options, Platform};
use serde_json::{json, Value};
use std::time::Duration;

#[tokio::test]
async fn killing_a_worker_that_holds_jobs_loses_none_and_duplicates_none() {
    let mut p = Platform::start(Options {
        workers: 2,
        worker_slots: 4,
        ..Options::default()
    })
    .await
    .unwrap();
    let t = p.create_tenant("acme", 1).await;
    let mut ids = Vec::new();
    for i in 0..200 {
        ids.push(p.submit_async_echo(&t.key, &format!("job-{i}"), 40).await);
    }
    // Kill worker 0 while it is running jobs.
    p.wait_count(
        "SELECT count(*) FROM jobs WHERE status = 'succeeded'",
        20,
        Duration::from_secs(30),
    )
    .await;
    let holding = p
        .wait_count("SELECT count(*) FROM jobs WHERE status IN ('dispatched', 'running') AND worker_id IS NOT NULL", 1, Duration::from_secs(10))
        .await;
    assert!(holding > 0);
    p.workers[0].kill9().await;

    for (i, id) in ids.iter().enumerate() {
        let job = p.wait_finished(&t.key, id, Duration::from_secs(120)).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        assert_eq!(job["output"], json!({"text": format!("job-{i}")}));
    }
    let results: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_records")
        .fetch_one(&p.db)
        .await
        .unwrap();
    assert_eq!(results, 200, "exactly one result per job");
    let retried: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE attempts > 1")
        .fetch_one(&p.db)
        .await
        .unwrap();
    eprintln!("crash: {retried} jobs needed a second attempt");
    assert!(
        retried > 0,
        "the killed worker held jobs that were dispatched again"
    );
    // The killed worker is declared dead once its heartbeat times out (its
    // jobs may have been handed on before that, by their leases).
    let dead = p
        .wait_count(
            "SELECT count(*) FROM workers WHERE status = 'dead'",
            1,
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(dead, 1, "the killed worker was not declared dead");
}

#[tokio::test]
async fn a_worker_stopped_with_sigterm_finishes_its_running_job_and_hands_back_the_rest() {
    let mut p = Platform::start(Options {
        workers: 1,
        worker_slots: 1,
        ..Options::default()
    })
    .await
    .unwrap();
    let t = p.create_tenant("acme", 1).await;
    let running = p.submit_async_echo(&t.key, "finish me", 1_000).await;
    p.wait_count(
        &format!("SELECT count(*) FROM jobs WHERE id = '{running}' AND status = 'running'"),
        1,
        Duration::from_secs(20),
    )
    .await;
    let waiting = p.submit_async_echo(&t.key, "run me elsewhere", 0).await;
    assert!(
        p.workers[0].terminate(Duration::from_secs(20)).await,
        "worker exits cleanly"
    );
    let done: Value = p.get_job(&t.key, &running).await.json().await.unwrap();
    assert_eq!(
        done["status"], "succeeded",
        "the running job finished before exit"
    );
    // The queued job waits for a worker and runs on the next one.
    p.spawn_worker(1).await.unwrap();
    assert_eq!(
        p.wait_finished(&t.key, &waiting, Duration::from_secs(30))
            .await["status"],
        "succeeded"
    );
}
