use base64::Engine;
use maas_testkit::{assert_error, python, Options, Platform};
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
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/openai/embeddings.py"
    );
    let refs = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../crates/maas-models/tests/data/minilm_reference.json"
    );
    let out = tokio::process::Command::new(python())
        .arg(script)
        .env("OPENAI_BASE_URL", p.url("/v1"))
        .env("OPENAI_API_KEY", &t.key)
        .env("REFERENCE", refs)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "openai client script failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("ok:"), "{stdout}");
}
