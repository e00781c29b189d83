use maas_testkit::{assert_error, run_openai_script, Options, Platform};
use serde_json::{json, Value};

async fn post(p: &Platform, key: &str, path: &str, body: Value) -> reqwest::Response {
    p.http
        .post(p.url(path))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn chat_and_text_completions_answer_in_openai_form_and_seeds_repeat() {
    let p = Platform::start(Options {
        with_models: true,
        ..Options::default()
    })
    .await
    .unwrap();
    let t = p.create_tenant("acme", 1).await;
    let m = "smollm2-135m-instruct";
    let r = post(&p, &t.key, "/v1/chat/completions", json!({"model": m, "messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 6, "temperature": 0})).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert!(!v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .is_empty());
    assert!(["stop", "length"].contains(&v["choices"][0]["finish_reason"].as_str().unwrap()));
    assert!(
        v["usage"]["prompt_tokens"].as_u64().unwrap() > 20,
        "the template's system prompt counts"
    );
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() <= 6);

    let body = json!({"model": m, "messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": 10, "temperature": 0.9, "seed": 7});
    let a: Value = post(&p, &t.key, "/v1/chat/completions", body.clone())
        .await
        .json()
        .await
        .unwrap();
    let b: Value = post(&p, &t.key, "/v1/chat/completions", body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        a["choices"][0]["message"]["content"], b["choices"][0]["message"]["content"],
        "same seed, same text"
    );

    let r = post(&p, &t.key, "/v1/completions", json!({"model": m, "prompt": "The capital of France is", "max_tokens": 1, "temperature": 0})).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["usage"]["completion_tokens"], 1);
    assert_eq!(v["choices"][0]["finish_reason"], "length");
}

#[tokio::test]
async fn unsupported_or_invalid_generation_requests_get_a_400() {
    let p = Platform::start(Options {
        with_models: true,
        ..Options::default()
    })
    .await
    .unwrap();
    let t = p.create_tenant("acme", 1).await;
    let m = "smollm2-135m-instruct";
    let msgs = json!([{"role": "user", "content": "hi"}]);
    for (body, code) in [
        (
            json!({"model": m, "messages": msgs, "n": 2}),
            "unsupported_parameter",
        ),
        (
            json!({"model": m, "messages": msgs, "temperature": 5}),
            "invalid_request",
        ),
        (
            json!({"model": m, "messages": msgs, "max_tokens": 0}),
            "invalid_request",
        ),
        (
            json!({"model": m, "messages": [{"role": "robot", "content": "x"}]}),
            "invalid_request",
        ),
        (json!({"model": m}), "invalid_request"),
        (
            json!({"model": "all-minilm-l6-v2", "messages": msgs}),
            "model_not_supported",
        ),
    ] {
        let r = post(&p, &t.key, "/v1/chat/completions", body.clone()).await;
        assert_eq!(r.status(), 400, "{body}");
        assert_error(r, 400, code).await;
    }
    let r = p
        .admin_post(
            &format!("/admin/v1/tenants/{}/keys", t.id),
            json!({"scopes": ["embeddings"]}),
        )
        .await;
    let key = r.json::<Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_error(
        post(
            &p,
            &key,
            "/v1/chat/completions",
            json!({"model": m, "messages": msgs}),
        )
        .await,
        403,
        "insufficient_scope",
    )
    .await;
}

#[tokio::test]
async fn the_official_openai_client_gets_a_chat_completion() {
    let p = Platform::start(Options {
        with_models: true,
        ..Options::default()
    })
    .await
    .unwrap();
    let t = p.create_tenant("acme", 1).await;
    run_openai_script(&p, "chat.py", &t.key, &[]).await;
}

fn events(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn a_streamed_chat_completion_arrives_as_server_sent_events_with_the_same_text() {
    let p = Platform::start(Options {
        with_models: true,
        ..Options::default()
    })
    .await
    .unwrap();
    let t = p.create_tenant("acme", 1).await;
    let m = "smollm2-135m-instruct";
    let msgs = json!([{"role": "user", "content": "Write one sentence about the moon."}]);
    let plain: Value = post(
        &p,
        &t.key,
        "/v1/chat/completions",
        json!({"model": m, "messages": msgs, "max_tokens": 16, "temperature": 0}),
    )
    .await
    .json()
    .await
    .unwrap();
    let r = post(&p, &t.key, "/v1/chat/completions", json!({"model": m, "messages": msgs, "max_tokens": 16, "temperature": 0, "stream": true, "stream_options": {"include_usage": true}})).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let body = r.text().await.unwrap();
    let ev = events(&body);
    assert_eq!(ev.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = ev[..ev.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(
        text,
        plain["choices"][0]["message"]["content"].as_str().unwrap(),
        "streamed text equals the plain answer"
    );
    assert!(chunks.len() > 3, "the text came in pieces: {body}");
    let finish = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["finish_reason"].as_str())
        .collect::<Vec<_>>();
    assert_eq!(
        finish,
        vec![plain["choices"][0]["finish_reason"].as_str().unwrap()]
    );
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"], plain["usage"]);
}

/// A streamed completion that cannot end early (greedy counting goes on for
/// thousands of tokens), once its first pieces have arrived: the response
/// and what it sent so far.
async fn long_stream(p: &Platform, key: &str) -> (reqwest::Response, String) {
    let long = json!({"model": "smollm2-135m-instruct", "prompt": "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,", "max_tokens": 3000, "temperature": 0, "stream": true});
    let mut r = post(p, key, "/v1/completions", long).await;
    assert_eq!(r.status(), 200);
    let mut body = String::new();
    while body.matches("data: ").count() < 3 {
        let c = r.chunk().await.unwrap().expect("stream ended early");
        body.push_str(&String::from_utf8_lossy(&c));
    }
    (r, body)
}

#[tokio::test]
async fn a_stream_dropped_midway_stops_its_generation() {
    let p = Platform::start(Options {
        with_models: true,
        ..Options::default()
    })
    .await
    .unwrap();
    let t = p.create_tenant("acme", 1).await;
    let m = "smollm2-135m-instruct";
    let (r, _) = long_stream(&p, &t.key).await;
    drop(r);
    let cancelled = p
        .wait_count(
            "SELECT count(*) FROM jobs WHERE status = 'cancelled'",
            1,
            std::time::Duration::from_secs(20),
        )
        .await;
    assert_eq!(cancelled, 1, "the dropped stream's job was cancelled");
    // The model thread is free again: 3000 tokens would take minutes.
    let r = post(
        &p,
        &t.key,
        "/v1/chat/completions",
        json!({"model": m, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}),
    )
    .await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn logprobs_come_in_each_apis_form_and_token_id_prompts_equal_their_text() {
    let p = Platform::start(Options {
        with_models: true,
        ..Options::default()
    })
    .await
    .unwrap();
    let t = p.create_tenant("acme", 1).await;
    let m = "smollm2-135m-instruct";
    let msgs = json!([{"role": "user", "content": "Name three fruits."}]);

    // Chat: logprobs.content, one entry per token, greedy picks the top one.
    let v: Value = post(&p, &t.key, "/v1/chat/completions", json!({"model": m, "messages": msgs, "max_tokens": 8, "temperature": 0, "logprobs": true, "top_logprobs": 3}))
        .await
        .json()
        .await
        .unwrap();
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(
        content.len() as u64,
        v["usage"]["completion_tokens"].as_u64().unwrap()
    );
    let mut bytes = Vec::new();
    for e in content {
        let lp = e["logprob"].as_f64().unwrap();
        assert!(lp <= 0.0, "{e}");
        let top = e["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        assert!(
            top.windows(2)
                .all(|w| w[0]["logprob"].as_f64() >= w[1]["logprob"].as_f64()),
            "alternatives best first"
        );
        assert_eq!(
            top[0]["token"], e["token"],
            "greedy takes the most likely token"
        );
        assert!((top[0]["logprob"].as_f64().unwrap() - lp).abs() < 1e-6);
        bytes.extend(
            e["bytes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_u64().unwrap() as u8),
        );
    }
    if v["choices"][0]["finish_reason"] == "length" {
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            v["choices"][0]["message"]["content"].as_str().unwrap(),
            "token bytes add up to the text"
        );
    }
    // Without logprobs: null.
    let v: Value = post(
        &p,
        &t.key,
        "/v1/chat/completions",
        json!({"model": m, "messages": msgs, "max_tokens": 2}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert!(v["choices"][0]["logprobs"].is_null());

    // Streamed chat: each content chunk carries its tokens' logprobs.
    let r = post(&p, &t.key, "/v1/chat/completions", json!({"model": m, "messages": msgs, "max_tokens": 8, "temperature": 0, "logprobs": true, "stream": true})).await;
    let body = r.text().await.unwrap();
    let chunks: Vec<Value> = events(&body)
        .iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let streamed: usize = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["logprobs"]["content"].as_array())
        .map(Vec::len)
        .sum();
    assert_eq!(streamed, content.len(), "streamed logprob entries: {body}");

    // Completions: tokens, token_logprobs, top_logprobs, text_offset.
    let v: Value = post(&p, &t.key, "/v1/completions", json!({"model": m, "prompt": "The capital of France is", "max_tokens": 6, "temperature": 0, "logprobs": 2}))
        .await
        .json()
        .await
        .unwrap();
    let lp = &v["choices"][0]["logprobs"];
    let tokens: Vec<&str> = lp["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    assert_eq!(
        tokens.len() as u64,
        v["usage"]["completion_tokens"].as_u64().unwrap()
    );
    assert_eq!(lp["token_logprobs"].as_array().unwrap().len(), tokens.len());
    assert!(lp["top_logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .all(|o| o.as_object().unwrap().len() <= 2 && !o.as_object().unwrap().is_empty()));
    let offsets: Vec<u64> = lp["text_offset"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    assert_eq!(offsets[0], 0);
    assert!(offsets.windows(2).all(|w| w[0] <= w[1]));
    if v["choices"][0]["finish_reason"] == "length" {
        assert_eq!(tokens.concat(), v["choices"][0]["text"].as_str().unwrap());
    }

    // A prompt of token ids (llama.cpp's ids for a committed string) answers
    // as its text does.
    let data: Value = serde_json::from_str(include_str!(
        "../../../../crates/maas-models/tests/data/smollm2_tokens.json"
    ))
    .unwrap();
    let case = data["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["text"].as_str().unwrap().len() > 20 && c["text"].as_str().unwrap().is_ascii())
        .unwrap();
    let text_prompt =
        json!({"model": m, "prompt": case["text"], "max_tokens": 5, "temperature": 0});
    let mut id_prompt = text_prompt.clone();
    id_prompt["prompt"] = case["special"].clone();
    let a: Value = post(&p, &t.key, "/v1/completions", text_prompt)
        .await
        .json()
        .await
        .unwrap();
    let b: Value = post(&p, &t.key, "/v1/completions", id_prompt.clone())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(a["choices"][0]["text"], b["choices"][0]["text"]);
    assert_eq!(
        b["usage"]["prompt_tokens"].as_u64().unwrap() as usize,
        case["special"].as_array().unwrap().len()
    );
    id_prompt["prompt"] = json!([case["special"].clone()]);
    let c: Value = post(&p, &t.key, "/v1/completions", id_prompt)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        c["choices"][0]["text"], a["choices"][0]["text"],
        "a one-element array of ids"
    );

    // Bad values: a clear 400 each.
    for (path, body, code) in [
        (
            "/v1/chat/completions",
            json!({"model": m, "messages": msgs, "logprobs": "yes"}),
            "invalid_request",
        ),
        (
            "/v1/chat/completions",
            json!({"model": m, "messages": msgs, "top_logprobs": 2}),
            "invalid_request",
        ),
        (
            "/v1/chat/completions",
            json!({"model": m, "messages": msgs, "logprobs": true, "top_logprobs": 21}),
            "invalid_request",
        ),
        (
            "/v1/completions",
            json!({"model": m, "prompt": "x", "logprobs": 6}),
            "invalid_request",
        ),
        (
            "/v1/completions",
            json!({"model": m, "prompt": ["a", "b"]}),
            "unsupported_parameter",
        ),
        (
            "/v1/completions",
            json!({"model": m, "prompt": [-1, 2]}),
            "invalid_request",
        ),
        (
            "/v1/completions",
            json!({"model": m, "prompt": []}),
            "invalid_request",
        ),
        (
            "/v1/completions",
            json!({"model": m, "prompt": [999_999], "max_tokens": 2}),
            "invalid_request",
        ),
        (
            "/v1/completions",
            json!({"model": m, "prompt": "x", "n": 3}),
            "unsupported_parameter",
        ),
    ] {
        assert_error(post(&p, &t.key, path, body.clone()).await, 400, code).await;
    }
}

/// Streams a completion; returns (when its first text arrived, when it ended, text).
async fn timed_stream(
    p: &Platform,
    key: &str,
    body: Value,
) -> (std::time::Instant, std::time::Instant, String) {
    let mut r = post(p, key, "/v1/completions", body).await;
    assert_eq!(r.status(), 200);
    let (mut first, mut buf) = (None, String::new());
    while let Some(c) = r.chunk().await.unwrap() {
        buf.push_str(&String::from_utf8_lossy(&c));
        if first.is_none() && buf.contains("\"text\":\"") && !buf.contains("\"text\":\"\"") {
            first = Some(std::time::Instant::now());
        }
    }
    let text: String = events(&buf)
        .iter()
        .filter(|e| *e != "[DONE]")
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|v| v["choices"][0]["text"].as_str().map(str::to_owned))
        .collect();
    (
        first.expect("no text arrived"),
        std::time::Instant::now(),
        text,
    )
}

#[tokio::test]
async fn concurrent_streams_decode_together_and_each_equals_its_solo_run() {
    let p = Platform::start(Options {
        with_models: true,
        worker_slots: 4,
        ..Options::default()
    })
    .await
    .unwrap();
    let t = p.create_tenant("acme", 1).await;
    let m = "smollm2-135m-instruct";
    let body = |i: usize| json!({"model": m, "prompt": format!("Count from {} upwards: {}, {},", i * 10, i * 10, i * 10 + 1), "max_tokens": 48, "temperature": 0.7, "seed": i, "stream": true});
    // Solo runs first, one at a time.
    let mut solo = Vec::new();
    for i in 0..4 {
        solo.push(timed_stream(&p, &t.key, body(i)).await.2);
    }
    // Then all four at once.
    let runs =
        futures_util::future::join_all((0..4).map(|i| timed_stream(&p, &t.key, body(i)))).await;
    // Continuous batching: every stream had text before any had finished
    // (one at a time, the last would start only after the others ended).
    let last_first = runs.iter().map(|r| r.0).max().unwrap();
    let first_end = runs.iter().map(|r| r.1).min().unwrap();
    assert!(
        last_first < first_end,
        "streams were served one after another"
    );
    for (i, (run, alone)) in runs.iter().zip(&solo).enumerate() {
        assert_eq!(
            &run.2, alone,
            "stream {i}: same seed, same text, batched or alone"
        );
    }
}

#[tokio::test]
async fn requests_beyond_the_kv_budget_wait_and_one_that_never_fits_is_refused() {
    let opts = Options {
        with_models: true,
        worker_env: vec![("MAAS_CHAT_KV_BUDGET_TOKENS", "200".into())],
        ..Options::default()
    };
    let p = Platform::start(opts).await.unwrap();
    let t = p.create_tenant("acme", 1).await;
    let m = "smollm2-135m-instruct";
    // Each needs ~10 prompt + 90 positions: two fit at a time, the rest wait.
    let body = json!({"model": m, "prompt": "Once upon a time, in a land far away,", "max_tokens": 90, "temperature": 0});
    let answers = futures_util::future::join_all(
        (0..4).map(|_| post(&p, &t.key, "/v1/completions", body.clone())),
    )
    .await;
    for r in answers {
        assert_eq!(
            r.status(),
            200,
            "a request that fits later waits, it is not refused"
        );
    }
    let r = post(
        &p,
        &t.key,
        "/v1/completions",
        json!({"model": m, "prompt": "Hi", "max_tokens": 400}),
    )
    .await;
    let v = assert_error(r, 400, "invalid_request").await;
    assert!(
        v["error"]["message"].as_str().unwrap().contains("budget"),
        "{v}"
    );
}

#[tokio::test]
async fn a_stream_whose_worker_is_killed_ends_within_seconds_with_a_clear_error() {
    let mut p = Platform::start(Options {
        with_models: true,
        workers: 2,
        ..Options::default()
    })
    .await
    .unwrap();
    let t = p.create_tenant("acme", 1).await;
    let (mut r, mut body) = long_stream(&p, &t.key).await;
    // Kill the worker generating it.
    let holder: String =
        sqlx::query_scalar("SELECT worker_id FROM jobs WHERE status = 'running' LIMIT 1")
            .fetch_one(&p.db)
            .await
            .unwrap();
    let mut killed = false;
    for w in p.workers.iter_mut() {
        // Each worker's health endpoint names its id.
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
    assert!(killed, "found the worker running the stream");
    let t0 = std::time::Instant::now();
    let rest = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        while let Ok(Some(c)) = r.chunk().await {
            body.push_str(&String::from_utf8_lossy(&c));
        }
    })
    .await;
    assert!(rest.is_ok(), "the stream hung after its worker died");
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(15),
        "ended in {:?}",
        t0.elapsed()
    );
    assert!(body.contains("\"code\":\"worker_lost\""), "{body}");
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
}
