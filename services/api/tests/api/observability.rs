//! Traces across the three services, Prometheus metrics, JSON logs without
//! content, and the request id and timing headers.

use maas_testkit::otlp::{OtlpReceiver, Protocol};
use maas_testkit::{assert_error, Options, Platform};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// A caller's `traceparent` with a known trace id.
fn caller_context(n: u8) -> (String, String) {
    let trace_id = format!("{:02x}{}", n, "ab".repeat(15));
    (format!("00-{trace_id}-00f067aa0ba902b7-01"), trace_id)
}

#[tokio::test]
async fn each_job_is_one_trace_across_api_scheduler_and_worker_over_protobuf() {
    one_trace_per_job(Protocol::Protobuf).await;
}

#[tokio::test]
async fn each_job_is_one_trace_across_api_scheduler_and_worker_over_json() {
    one_trace_per_job(Protocol::Json).await;
}

async fn one_trace_per_job(protocol: Protocol) {
    let otlp = OtlpReceiver::start().await.unwrap();
    let p = Platform::start(Options {
        with_models: true,
        env: otlp.env(protocol),
        ..Options::default()
    })
    .await
    .unwrap();
    let t = p.create_tenant("acme", 1).await;
    let (sync_tp, sync_trace) = caller_context(1);
    let r = p
        .http
        .post(p.url("/v1/jobs"))
        .bearer_auth(&t.key)
        .header("traceparent", &sync_tp)
        .json(&json!({"model": "echo", "mode": "sync", "input": {"text": "hello"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (async_tp, async_trace) = caller_context(2);
    let r = p
        .http
        .post(p.url("/v1/jobs"))
        .bearer_auth(&t.key)
        .header("traceparent", &async_tp)
        .json(&json!({"model": "echo", "mode": "async", "input": {"text": "later"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        p.wait_finished(&t.key, &id, Duration::from_secs(30)).await["status"],
        "succeeded"
    );
    let (embed_tp, embed_trace) = caller_context(3);
    let r = p
        .http
        .post(p.url("/v1/embeddings"))
        .bearer_auth(&t.key)
        .header("traceparent", &embed_tp)
        .json(&json!({"model": "all-minilm-l6-v2", "input": "a sentence"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let complete = |spans: &[maas_testkit::otlp::ReceivedSpan], trace: &str| {
        let services: Vec<&str> = spans
            .iter()
            .filter(|s| s.trace_id == trace)
            .map(|s| s.service.as_str())
            .collect();
        ["maas-api", "maas-scheduler", "maas-worker"]
            .iter()
            .all(|s| services.contains(s))
            && spans
                .iter()
                .any(|s| s.trace_id == trace && s.name == "queue wait")
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let spans = loop {
        let spans = otlp.spans();
        let batch_linked = spans
            .iter()
            .any(|s| s.name == "embed batch" && s.link_trace_ids.contains(&embed_trace));
        if (complete(&spans, &sync_trace)
            && complete(&spans, &async_trace)
            && complete(&spans, &embed_trace)
            && batch_linked)
            || tokio::time::Instant::now() > deadline
        {
            break spans;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for (trace, what) in [
        (&sync_trace, "sync"),
        (&async_trace, "async"),
        (&embed_trace, "embeddings"),
    ] {
        let mine: Vec<_> = spans.iter().filter(|s| &s.trace_id == trace).collect();
        let names: Vec<String> = mine
            .iter()
            .map(|s| format!("{}:{}", s.service, s.name))
            .collect();
        assert!(
            complete(&spans, trace),
            "{what} job: spans of its trace {names:?}"
        );
        // The API's request span continues the caller's span.
        assert!(
            mine.iter()
                .any(|s| s.service == "maas-api" && s.parent_span_id == "00f067aa0ba902b7"),
            "{what}: {names:?}"
        );
        // The worker's span is a child of the scheduler's dispatch span.
        let dispatch = mine
            .iter()
            .find(|s| s.name == "dispatch")
            .unwrap_or_else(|| panic!("{what}: no dispatch span in {names:?}"));
        assert!(
            mine.iter().any(|s| s.service == "maas-worker"
                && s.name == "run job"
                && s.parent_span_id == dispatch.span_id),
            "{what}: {names:?}"
        );
    }
    // Every body came in the protocol asked for.
    let other = if protocol == Protocol::Json {
        Protocol::Protobuf
    } else {
        Protocol::Json
    };
    assert!(
        otlp.bodies(protocol) > 0 && otlp.bodies(other) == 0,
        "{protocol:?}"
    );
    // The embedding batch ran in a span of its own, linked to the request it served.
    assert!(spans.iter().any(|s| s.name == "embed batch"
        && s.service == "maas-worker"
        && s.link_trace_ids.contains(&embed_trace)));
}

/// Prometheus text: `name{labels} value` samples, every line checked.
fn parse_metrics(text: &str) -> HashMap<(String, BTreeMap<String, String>), f64> {
    let mut out = HashMap::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not a sample: {line}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line}"));
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels: {line}"));
                let mut labels = BTreeMap::new();
                for pair in body.split("\",").filter(|p| !p.is_empty()) {
                    let (k, v) = pair
                        .split_once("=\"")
                        .unwrap_or_else(|| panic!("bad label in {line}"));
                    labels.insert(k.to_owned(), v.trim_end_matches('"').to_owned());
                }
                (n.to_owned(), labels)
            }
            None => (series.to_owned(), BTreeMap::new()),
        };
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line}"
        );
        out.insert((name, labels), value);
    }
    out
}

async fn scrape(
    p: &Platform,
    service: &maas_testkit::Service,
) -> HashMap<(String, BTreeMap<String, String>), f64> {
    let r = p
        .http
        .get(p.url_of(service, "/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    parse_metrics(&r.text().await.unwrap())
}

fn value(
    m: &HashMap<(String, BTreeMap<String, String>), f64>,
    name: &str,
    labels: &[(&str, &str)],
) -> f64 {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    m.get(&(name.to_owned(), want)).copied().unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_move_by_exactly_what_was_done() {
    let opts = Options {
        env: vec![("MAAS_METRICS_MAX_TENANTS", "1".into())],
        ..Options::default()
    };
    let p = Platform::start(opts).await.unwrap();
    let (a, b) = (
        p.create_tenant("first", 1).await,
        p.create_tenant("second", 1).await,
    );
    p.set_quota(&a.id, json!({"rpm": 5})).await;
    let (api0, sched0, worker0) = (
        scrape(&p, &p.api[0]).await,
        scrape(&p, &p.schedulers[0]).await,
        scrape(&p, &p.workers[0]).await,
    );
    // 8 sync jobs of 3 words from tenant A against an RPM of 5: 5 run, 3 are refused.
    let (mut ok, mut refused) = (0, 0);
    for _ in 0..8 {
        let r = p
            .submit(
                &a.key,
                json!({"model": "echo", "mode": "sync", "input": {"text": "one two three"}}),
            )
            .await;
        match r.status().as_u16() {
            200 => ok += 1,
            429 => refused += 1,
            s => panic!("unexpected {s}"),
        }
    }
    assert_eq!((ok, refused), (5, 3));
    // Tenant B is past the tenant-label cap of 1: its series say `other`.
    let r = p
        .submit(
            &b.key,
            json!({"model": "echo", "mode": "sync", "input": {"text": "x"}}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let (api1, sched1, worker1) = (
        scrape(&p, &p.api[0]).await,
        scrape(&p, &p.schedulers[0]).await,
        scrape(&p, &p.workers[0]).await,
    );
    let delta =
        |before: &HashMap<_, _>, after: &HashMap<_, _>, name: &str, labels: &[(&str, &str)]| {
            value(after, name, labels) - value(before, name, labels)
        };
    let route = [("route", "/v1/jobs"), ("method", "POST")];
    let with = |extra: (&'static str, &'static str)| {
        let mut l = route.to_vec();
        l.push(extra);
        l
    };
    assert_eq!(
        delta(
            &api0,
            &api1,
            "maas_http_request_duration_seconds_count",
            &with(("status", "200"))
        ),
        6.0
    );
    assert_eq!(
        delta(
            &api0,
            &api1,
            "maas_http_request_duration_seconds_count",
            &with(("status", "429"))
        ),
        3.0
    );
    assert_eq!(
        delta(
            &api0,
            &api1,
            "maas_admission_refusals_total",
            &[("reason", "rpm"), ("tenant", &a.id)]
        ),
        3.0
    );
    assert_eq!(
        delta(
            &api0,
            &api1,
            "maas_jobs_submitted_total",
            &[("model", "echo"), ("mode", "sync"), ("tenant", &a.id)]
        ),
        5.0
    );
    assert_eq!(
        delta(
            &api0,
            &api1,
            "maas_jobs_submitted_total",
            &[("model", "echo"), ("mode", "sync"), ("tenant", "other")]
        ),
        1.0
    );
    assert_eq!(
        delta(
            &sched0,
            &sched1,
            "maas_queue_wait_seconds_count",
            &[
                ("model", "echo"),
                ("version", "builtin"),
                ("lane", "interactive")
            ]
        ),
        6.0
    );
    assert_eq!(
        delta(
            &sched0,
            &sched1,
            "maas_dispatches_total",
            &[("model", "echo"), ("version", "builtin"), ("tenant", &a.id)]
        ),
        5.0
    );
    assert_eq!(
        value(
            &sched1,
            "maas_queue_depth",
            &[
                ("model", "echo"),
                ("version", "builtin"),
                ("lane", "interactive")
            ]
        ),
        0.0
    );
    assert_eq!(
        value(
            &sched1,
            "maas_scheduler_slots",
            &[
                ("model", "echo"),
                ("version", "builtin"),
                ("state", "total")
            ]
        ),
        4.0
    );
    assert_eq!(
        delta(
            &worker0,
            &worker1,
            "maas_worker_jobs_total",
            &[
                ("model", "echo"),
                ("version", "builtin"),
                ("outcome", "succeeded")
            ]
        ),
        6.0
    );
    assert_eq!(
        delta(
            &worker0,
            &worker1,
            "maas_job_end_to_end_seconds_count",
            &[("model", "echo"), ("status", "succeeded")]
        ),
        6.0
    );
    assert_eq!(
        delta(
            &worker0,
            &worker1,
            "maas_tokens_total",
            &[("model", "echo"), ("kind", "prompt"), ("tenant", &a.id)]
        ),
        15.0
    );
    assert_eq!(
        delta(
            &worker0,
            &worker1,
            "maas_tokens_total",
            &[
                ("model", "echo"),
                ("kind", "completion"),
                ("tenant", "other")
            ]
        ),
        1.0
    );
    assert_eq!(
        value(
            &worker1,
            "maas_worker_slots_busy",
            &[("model", "echo"), ("version", "builtin")]
        ),
        0.0
    );
    // No raw key appears in any series.
    for m in [&api1, &sched1, &worker1] {
        assert!(m.keys().all(|(_, labels)| labels
            .values()
            .all(|v| !v.contains(&a.key) && !v.starts_with("sk-"))));
    }
}

#[tokio::test]
async fn logs_are_json_with_ids_and_never_carry_content() {
    let dir = std::env::temp_dir().join(format!("maas-logs-{}", uuid::Uuid::new_v4().simple()));
    let env = vec![(
        "RUST_LOG",
        "debug,sqlx=warn,lapin=warn,amq_protocol=warn,h2=warn,hyper=warn,hyper_util=warn,reqwest=warn,rustls=warn,tokenizers=warn,actix_server=info".to_owned(),
    )];
    let mut p = Platform::start(Options {
        with_models: true,
        env,
        log_dir: Some(dir.clone()),
        ..Options::default()
    })
    .await
    .unwrap();
    let t = p.create_tenant("acme", 1).await;
    let marker = "zebra-quartz-7781";
    // The marker as echo text, an embeddings input and a chat prompt.
    let r = p
        .http
        .post(p.url("/v1/jobs"))
        .bearer_auth(&t.key)
        .header("x-request-id", "req-abc-123")
        .json(&json!({"model": "echo", "mode": "sync", "input": {"text": marker}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["x-request-id"],
        "req-abc-123",
        "the caller's request id comes back"
    );
    let queue_ms: i64 = r.headers()["x-queue-time-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let inference_ms: i64 = r.headers()["x-inference-time-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(queue_ms >= 0 && inference_ms >= 0);
    let r = p
        .http
        .post(p.url("/v1/embeddings"))
        .bearer_auth(&t.key)
        .json(&json!({"model": "all-minilm-l6-v2", "input": [marker]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers().contains_key("x-request-id") && r.headers().contains_key("x-inference-time-ms")
    );
    let r = p.http.post(p.url("/v1/chat/completions")).bearer_auth(&t.key)
        .json(&json!({"model": "smollm2-135m-instruct", "max_tokens": 4, "messages": [{"role": "user", "content": marker}]})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // An error is logged with its ids too, and its body is not.
    let r = p
        .http
        .post(p.url("/v1/jobs"))
        .bearer_auth(&t.key)
        .json(&json!({"model": "echo", "mode": "sync", "input": {"text": marker, "bogus": 1}}))
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "invalid_request").await;
    for s in p
        .api
        .iter_mut()
        .chain(p.schedulers.iter_mut())
        .chain(p.workers.iter_mut())
    {
        s.terminate(Duration::from_secs(15)).await;
    }
    let mut lines = 0;
    let mut request_lines = 0;
    let mut job_lines = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for line in text.lines() {
            lines += 1;
            assert!(
                !line.contains(marker),
                "content in a log line of {}: {line}",
                path.display()
            );
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not JSON ({e}) in {}: {line}", path.display()));
            assert!(
                v["timestamp"].is_string() && v["level"].is_string(),
                "{line}"
            );
            let spans = v["spans"].as_array().cloned().unwrap_or_default();
            let field = |k: &str| {
                v.get(k)
                    .or_else(|| spans.iter().find_map(|s| s.get(k)))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            };
            if v["message"] == "request" {
                request_lines += 1;
                assert!(
                    field("request_id").is_some()
                        && field("trace_id").is_some_and(|t| t.len() == 32),
                    "{line}"
                );
            }
            if ["job accepted", "job running", "job finished"]
                .contains(&v["message"].as_str().unwrap_or_default())
            {
                job_lines += 1;
                assert!(
                    field("job_id").is_some() && field("trace_id").is_some_and(|t| t.len() == 32),
                    "{line}"
                );
                assert!(field("tenant_id").is_some_and(|id| id == t.id), "{line}");
            }
        }
    }
    assert!(
        lines > 50 && request_lines >= 4 && job_lines >= 9,
        "{lines} lines, {request_lines} request lines, {job_lines} job lines"
    );
    let access: Vec<Value> = std::fs::read_dir(&dir)
        .unwrap()
        .flat_map(|e| {
            std::fs::read_to_string(e.unwrap().path())
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .collect::<Vec<_>>()
        })
        .filter(|v| {
            v["message"] == "request"
                && v["spans"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|s| s["request_id"] == "req-abc-123"))
        })
        .collect();
    assert_eq!(
        access.len(),
        1,
        "the caller's request id is in the access log line"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
