use base64::Engine;
use maas_testkit::{assert_error, run_openai_script, Options, Platform};
use serde_json::{json, Value};

fn reference() -> Vec<(String, Vec<f64>)> {
    let v: Value = serde_json::from_str(include_str!(
        "../../../../crates/maas-models/tests/data/minilm_reference.json"
    ))
    .unwrap();
    v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["input"].as_str().unwrap().to_owned(),
                c["embedding"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap())
                    .collect(),
            )
        })
        .collect()
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    dot / (a.iter().map(|x| x * x).sum::<f64>().sqrt()
        * b.iter().map(|x| x * x).sum::<f64>().sqrt())
}

async fn embeddings(p: &Platform, key: &str, body: Value) -> reqwest::Response {
    p.http
        .post(p.url("/v1/embeddings"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn embeddings_through_the_platform_match_the_reference_in_both_encodings() {
    let p = Platform::start(Options {
        with_models: true,
        ..Options::default()
    })
    .await
    .unwrap();
    let t = p.create_tenant("acme", 1).await;
    let cases: Vec<_> = reference().into_iter().step_by(4).collect();
    let inputs: Vec<&str> = cases.iter().map(|c| c.0.as_str()).collect();
    let r = embeddings(
        &p,
        &t.key,
        json!({"model": "all-minilm-l6-v2", "input": inputs}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], "all-minilm-l6-v2");
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), cases.len());
    for (i, (d, (text, want))) in data.iter().zip(&cases).enumerate() {
        assert_eq!(d["index"], i);
        let got: Vec<f64> = d["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(got.len(), 384);
        let cos = cosine(&got, want);
        assert!(cos >= 0.9999, "cosine {cos} for {text:?}");
    }
    let r = embeddings(
        &p,
        &t.key,
        json!({"model": "all-minilm-l6-v2", "input": inputs[1], "encoding_format": "base64"}),
    )
    .await;
    let v: Value = r.json().await.unwrap();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(v["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let got: Vec<f64> = bytes
        .chunks_exact(4)
        .map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
        .collect();
    assert!(cosine(&got, &cases[1].1) >= 0.9999);
}

#[tokio::test]
async fn long_inputs_are_truncated_and_bad_requests_get_a_400() {
    let p = Platform::start(Options {
        with_models: true,
        ..Options::default()
    })
    .await
    .unwrap();
    let t = p.create_tenant("acme", 1).await;
    let long = "word ".repeat(5000);
    let r = embeddings(
        &p,
        &t.key,
        json!({"model": "all-minilm-l6-v2", "input": long}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap()["usage"]["prompt_tokens"],
        256,
        "truncated to 256 word pieces"
    );
    let r = embeddings(
        &p,
        &t.key,
        json!({"model": "all-minilm-l6-v2", "input": [[101, 7592], [2088]]}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap()["data"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    let m = "all-minilm-l6-v2";
    for body in [
        json!({"model": m, "input": []}),
        json!({"model": m, "input": [1, "a"]}),
        json!({"model": m, "input": {"text": "x"}}),
        json!({"model": m, "input": vec!["x"; 2049]}),
        json!({"model": m, "input": "x", "encoding_format": "hex"}),
        json!({"model": m, "input": "x", "dimensions": 128}),
        json!({"model": m}),
        json!({"model": m, "input": [999_999_999]}),
    ] {
        let r = embeddings(&p, &t.key, body.clone()).await;
        assert_eq!(r.status(), 400, "{body}");
        assert_error(r, 400, "invalid_request").await;
    }
    assert_error(
        embeddings(&p, &t.key, json!({"model": "echo", "input": "x"})).await,
        400,
        "model_not_supported",
    )
    .await;
    assert_error(
        embeddings(&p, &t.key, json!({"model": "nope", "input": "x"})).await,
        404,
        "model_not_found",
    )
    .await;
}

#[tokio::test]
async fn the_embedder_serves_the_jobs_api_and_respects_key_scopes() {
    let p = Platform::start(Options {
        with_models: true,
        ..Options::default()
    })
    .await
    .unwrap();
    let t = p.create_tenant("acme", 1).await;
    let r = p.submit(&t.key, json!({"model": "all-minilm-l6-v2", "mode": "async", "input": {"input": ["hello", "world"]}})).await;
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let done = p
        .wait_finished(&t.key, &id, std::time::Duration::from_secs(30))
        .await;
    assert_eq!(done["status"], "succeeded");
    assert_eq!(done["output"]["embeddings"].as_array().unwrap().len(), 2);
    assert_eq!(done["usage"]["prompt_tokens"], 6);

    let r = p
        .admin_post(
            &format!("/admin/v1/tenants/{}/keys", t.id),
            json!({"scopes": ["chat"]}),
        )
        .await;
    let chat_key = r.json::<Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = embeddings(
        &p,
        &chat_key,
        json!({"model": "all-minilm-l6-v2", "input": "x"}),
    )
    .await;
    assert_error(r, 403, "insufficient_scope").await;
}

#[tokio::test]
async fn the_official_openai_client_gets_correct_embeddings() {
    let p = Platform::start(Options {
        with_models: true,
        ..Options::default()
    })
    .await
    .unwrap();
    let t = p.create_tenant("acme", 1).await;
    let refs = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../crates/maas-models/tests/data/minilm_reference.json"
    );
    run_openai_script(&p, "embeddings.py", &t.key, &[("REFERENCE", refs)]).await;
}

/// Forward passes the worker's embedder has run so far (its batch histogram).
async fn embedder_passes(p: &Platform) -> u64 {
    let text = p
        .http
        .get(p.url_of(&p.workers[0], "/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with("maas_batch_tokens_count{") && l.contains("all-minilm-l6-v2"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_large_request_runs_in_chunks_so_another_tenant_is_served_meanwhile_and_a_cancel_stops_it(
) {
    let p = Platform::start(Options {
        with_models: true,
        max_body_bytes: 1024 * 1024,
        ..Options::default()
    })
    .await
    .unwrap();
    let (big, small) = (
        p.create_tenant("big", 1).await,
        p.create_tenant("small", 1).await,
    );
    // The largest request the API admits: 2,048 inputs of 256 word pieces
    // (every character is one), minutes of compute on a small CPU.
    let inputs: Vec<String> = (0..2048)
        .map(|i| {
            (0..127)
                .map(|j| format!("{}.", (b'a' + ((i + j) % 26) as u8) as char))
                .collect()
        })
        .collect();
    let r = p
        .submit(
            &big.key,
            json!({"model": "all-minilm-l6-v2", "mode": "async", "input": {"input": inputs}}),
        )
        .await;
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while embedder_passes(&p).await < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the large job never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    let t0 = std::time::Instant::now();
    let r = embeddings(
        &p,
        &small.key,
        json!({"model": "all-minilm-l6-v2", "input": "hello"}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(10),
        "a one-input call waited {:?} behind the large request",
        t0.elapsed()
    );
    assert_eq!(
        p.get_job(&big.key, &id)
            .await
            .json::<Value>()
            .await
            .unwrap()["status"],
        "running"
    );

    let r = p
        .http
        .post(p.url(&format!("/v1/jobs/{id}/cancel")))
        .bearer_auth(&big.key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The pass under way finishes; no other starts.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let after_cancel = embedder_passes(&p).await;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(
        embedder_passes(&p).await,
        after_cancel,
        "the embedder went on after the cancel"
    );
}

#[tokio::test]
async fn an_output_past_the_workers_cap_fails_the_job_with_output_too_large() {
    let p = Platform::start(Options {
        with_models: true,
        // One vector is ~7.7 KB of JSON.
        worker_env: vec![("MAAS_WORKER_MAX_OUTPUT_BYTES", "20000".into())],
        ..Options::default()
    })
    .await
    .unwrap();
    let t = p.create_tenant("acme", 1).await;
    let run = |n: usize| {
        p.submit(
            &t.key,
            json!({"model": "all-minilm-l6-v2", "mode": "async", "input": {"input": vec!["hello"; n]}}),
        )
    };
    let mut jobs = Vec::new();
    for n in [1, 10] {
        let r = run(n).await;
        assert_eq!(r.status(), 202);
        jobs.push(
            r.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let limit = std::time::Duration::from_secs(30);
    let fits = p.wait_finished(&t.key, &jobs[0], limit).await;
    assert_eq!(fits["status"], "succeeded");
    let too_large = p.wait_finished(&t.key, &jobs[1], limit).await;
    assert_eq!(too_large["status"], "failed");
    assert_eq!(
        too_large["error"]["code"], "output_too_large",
        "{too_large}"
    );
    assert!(too_large["output"].is_null());
    let stored: Option<Value> = sqlx::query_scalar("SELECT output FROM jobs WHERE id = $1::uuid")
        .bind(&jobs[1])
        .fetch_one(&p.db)
        .await
        .unwrap();
    assert!(stored.is_none(), "nothing is stored");
}

#[tokio::test]
async fn a_request_split_over_many_passes_keeps_its_rows_in_input_order() {
    let p = Platform::start(Options {
        with_models: true,
        // The smallest pass: the 44 reference inputs take many.
        worker_env: vec![("MAAS_EMBED_MAX_BATCH_TOKENS", "256".into())],
        ..Options::default()
    })
    .await
    .unwrap();
    let t = p.create_tenant("acme", 1).await;
    let cases = reference();
    let inputs: Vec<&str> = cases.iter().map(|c| c.0.as_str()).collect();
    let r = embeddings(
        &p,
        &t.key,
        json!({"model": "all-minilm-l6-v2", "input": inputs}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), cases.len());
    for (d, (text, want)) in data.iter().zip(&cases) {
        let got: Vec<f64> = d["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        let cos = cosine(&got, want);
        assert!(cos >= 0.9999, "cosine {cos} for {text:?}");
    }
    let tokens = v["usage"]["prompt_tokens"].as_u64().unwrap();
    let passes = embedder_passes(&p).await;
    assert!(
        passes > 1 && passes >= tokens / 256,
        "{tokens} word pieces in {passes} passes"
    );
}
