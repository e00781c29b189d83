//! Rate limits across API replicas sharing Redis: requests per minute and
//! tokens per minute, OpenAI's headers, 429 with Retry-After, and one tenant
//! over its limit leaving another's admissions alone.

use maas_testkit::{assert_error, Options, Platform};
use serde_json::{json, Value};

#[tokio::test]
async fn an_rpm_limit_holds_across_two_api_instances() {
    let mut p = Platform::start(Options::default()).await.unwrap();
    p.spawn_api().await.unwrap();
    let (a, b) = (
        p.create_tenant("limited", 1).await,
        p.create_tenant("free", 1).await,
    );
    p.set_quota(&a.id, json!({"rpm": 10})).await;
    // 30 requests at once, alternating between the two instances.
    let urls: Vec<String> = (0..30)
        .map(|i| p.url_of(&p.api[i % 2], "/v1/models"))
        .collect();
    let answers = futures_util::future::join_all(
        urls.iter()
            .map(|u| p.http.get(u).bearer_auth(&a.key).send()),
    )
    .await;
    let (mut ok, mut limited) = (0, 0);
    for r in answers {
        let r = r.unwrap();
        assert_eq!(r.headers()["x-ratelimit-limit-requests"], "10");
        assert!(
            r.headers().contains_key("x-ratelimit-remaining-requests")
                && r.headers().contains_key("x-ratelimit-reset-requests")
        );
        match r.status().as_u16() {
            200 => ok += 1,
            429 => {
                let retry: u64 = r.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!((1..=60).contains(&retry), "retry-after {retry}");
                assert_eq!(r.headers()["x-ratelimit-remaining-requests"], "0");
                assert_error(r, 429, "rate_limit_exceeded").await;
                limited += 1;
            }
            s => panic!("unexpected status {s}"),
        }
    }
    assert_eq!(
        (ok, limited),
        (10, 20),
        "exactly the limit was admitted across both instances"
    );
    // Another tenant is untouched, and carries no limit headers.
    for i in 0..12 {
        let r = p
            .http
            .get(p.url_of(&p.api[i % 2], "/v1/models"))
            .bearer_auth(&b.key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(!r.headers().contains_key("x-ratelimit-limit-requests"));
    }
}

#[tokio::test]
async fn a_tpm_limit_admits_by_estimate_and_settles_with_usage() {
    let p = Platform::start(Options {
        with_models: true,
        ..Options::default()
    })
    .await
    .unwrap();
    let t = p.create_tenant("acme", 1).await;
    p.set_quota(&t.id, json!({"tpm": 300})).await;
    // 400 bytes: estimated at 100 tokens; "word " is one word piece, so the
    // recorded usage is 82 (80 words + [CLS] + [SEP]).
    let input = "word ".repeat(80);
    let call = || {
        p.http
            .post(p.url("/v1/embeddings"))
            .bearer_auth(&t.key)
            .json(&json!({"model": "all-minilm-l6-v2", "input": input}))
            .send()
    };
    for _ in 0..2 {
        let r = call().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-ratelimit-limit-tokens"], "300");
    }
    // The same through the jobs API, async: settled by the worker when it ends.
    let r = p
        .submit(
            &t.key,
            json!({"model": "all-minilm-l6-v2", "mode": "async", "input": {"input": input}}),
        )
        .await;
    assert_eq!(r.status(), 202);
    assert_eq!(r.headers()["x-ratelimit-limit-tokens"], "300");
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        p.wait_finished(&t.key, &id, std::time::Duration::from_secs(60))
            .await["usage"]["prompt_tokens"],
        82
    );
    // Settled at 82 each: 246 used, 54 left (plus refill) — not enough for
    // another estimate of 100. Unsettled, the bucket would be near 0.
    let r = call().await.unwrap();
    let remaining: u64 = r.headers()["x-ratelimit-remaining-tokens"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((54..100).contains(&remaining), "remaining {remaining}");
    assert_error(r, 429, "rate_limit_exceeded").await;
    // Larger than the whole limit: refused, with a message saying so.
    let huge = "word ".repeat(2000);
    let r = p
        .http
        .post(p.url("/v1/embeddings"))
        .bearer_auth(&t.key)
        .json(&json!({"model": "all-minilm-l6-v2", "input": huge}))
        .send()
        .await
        .unwrap();
    let v = assert_error(r, 429, "rate_limit_exceeded").await;
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("more than this tenant's limit of 300"),
        "{v}"
    );
}

#[tokio::test]
async fn a_tenant_reads_its_own_usage_per_key_and_model() {
    let p = Platform::start(Options::default()).await.unwrap();
    let (a, b) = (
        p.create_tenant("acme", 1).await,
        p.create_tenant("other", 1).await,
    );
    let r = p
        .admin_post(&format!("/admin/v1/tenants/{}/keys", a.id), json!({}))
        .await;
    let second: Value = r.json().await.unwrap();
    let second_key = second["key"].as_str().unwrap().to_owned();
    for (key, n) in [(&a.key, 3), (&second_key, 2)] {
        for i in 0..n {
            let r = p
                .submit(
                    key,
                    json!({"model": "echo", "mode": "sync", "input": {"text": format!("{i}")}}),
                )
                .await;
            assert_eq!(r.status(), 200);
        }
    }
    p.submit(
        &b.key,
        json!({"model": "echo", "mode": "sync", "input": {"text": "x"}}),
    )
    .await;
    let u: Value = p
        .http
        .get(p.url("/v1/usage"))
        .bearer_auth(&a.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rows = u["data"].as_array().unwrap();
    let per_key = |id: &str| {
        rows.iter()
            .filter(|r| r["key_id"] == id)
            .map(|r| r["requests"].as_i64().unwrap())
            .sum::<i64>()
    };
    assert_eq!(per_key(&a.key_id), 3, "{u}");
    assert_eq!(per_key(second["id"].as_str().unwrap()), 2, "{u}");
    assert_eq!(
        rows.iter()
            .map(|r| r["requests"].as_i64().unwrap())
            .sum::<i64>(),
        5,
        "only this tenant's jobs"
    );
    assert!(rows
        .iter()
        .all(|r| r["model"] == "echo" && r["prompt_tokens"].is_i64() && r["compute_ms"].is_i64()));
    // The admin view of the same tenant agrees; a bad range is a 400.
    let admin: Value = p
        .http
        .get(p.url(&format!("/admin/v1/tenants/{}/usage", a.id)))
        .bearer_auth(p.admin_token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(admin["data"], u["data"]);
    assert_error(
        p.http
            .get(p.url("/v1/usage?days=0"))
            .bearer_auth(&a.key)
            .send()
            .await
            .unwrap(),
        400,
        "invalid_request",
    )
    .await;
}

#[tokio::test]
async fn scoped_and_expired_keys_are_refused_with_their_own_codes() {
    let p = Platform::start(Options::default()).await.unwrap();
    let t = p.create_tenant("acme", 1).await;
    // A key scoped to embeddings may not run chat.
    let r = p
        .admin_post(
            &format!("/admin/v1/tenants/{}/keys", t.id),
            json!({"scopes": ["embeddings"]}),
        )
        .await;
    let scoped = r.json::<Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let chat =
        json!({"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "hi"}]});
    let r = p
        .http
        .post(p.url("/v1/chat/completions"))
        .bearer_auth(&scoped)
        .json(&chat)
        .send()
        .await
        .unwrap();
    assert_error(r, 403, "insufficient_scope").await;
    // A key that expires in two seconds works, then is refused.
    let at = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
    let r = p
        .admin_post(
            &format!("/admin/v1/tenants/{}/keys", t.id),
            json!({"expires_at": at}),
        )
        .await;
    let short = r.json::<Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        p.http
            .get(p.url("/v1/models"))
            .bearer_auth(&short)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_error(
        p.http
            .get(p.url("/v1/models"))
            .bearer_auth(&short)
            .send()
            .await
            .unwrap(),
        401,
        "expired_api_key",
    )
    .await;
    // Rotation: a second key works while the first stays valid until revoked.
    assert_eq!(
        p.http
            .get(p.url("/v1/models"))
            .bearer_auth(&t.key)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn max_queued_holds_exactly_under_concurrency_and_the_platform_queue_is_bounded() {
    let opts = Options {
        worker_slots: 1,
        api_env: vec![("MAAS_API_MAX_QUEUED_JOBS", "12".into())],
        ..Options::default()
    };
    let p = Platform::start(opts).await.unwrap();
    let (a, b) = (
        p.create_tenant("capped", 1).await,
        p.create_tenant("other", 1).await,
    );
    p.set_quota(&a.id, json!({"max_queued": 5})).await;
    let slow =
        json!({"model": "echo", "mode": "async", "input": {"text": "x", "delay_ms": 30_000}});
    let answers = futures_util::future::join_all((0..20).map(|_| {
        p.http
            .post(p.url("/v1/jobs"))
            .bearer_auth(&a.key)
            .json(&slow)
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
                assert!(r.headers().contains_key("retry-after"));
                let v = assert_error(r, 429, "rate_limit_exceeded").await;
                assert!(
                    v["error"]["message"]
                        .as_str()
                        .unwrap()
                        .contains("max_queued"),
                    "{v}"
                );
                refused += 1;
            }
            s => panic!("unexpected {s}"),
        }
    }
    assert_eq!(
        (accepted.len(), refused),
        (5, 15),
        "exactly max_queued unfinished jobs"
    );
    // The other tenant is not affected by this tenant's cap...
    let r = p
        .http
        .post(p.url("/v1/jobs"))
        .bearer_auth(&b.key)
        .json(&slow)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    // ...and a cancelled job frees a place.
    let r = p
        .http
        .post(p.url(&format!("/v1/jobs/{}/cancel", accepted[4])))
        .bearer_auth(&a.key)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let r = p
        .http
        .post(p.url("/v1/jobs"))
        .bearer_auth(&a.key)
        .json(&slow)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    // The platform-wide bound: past 12 queued jobs, new work gets 503 with Retry-After.
    let mut last = None;
    for _ in 0..20 {
        let r = p
            .http
            .post(p.url("/v1/jobs"))
            .bearer_auth(&b.key)
            .json(&slow)
            .send()
            .await
            .unwrap();
        if r.status() == 503 {
            last = Some(r);
            break;
        }
        assert_eq!(r.status(), 202);
    }
    let r = last.expect("the platform queue never filled");
    assert_eq!(r.headers()["retry-after"], "5");
    assert_error(r, 503, "service_unavailable").await;
}
