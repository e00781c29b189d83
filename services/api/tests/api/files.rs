//! The Files API on the real services: upload, list, get, content, delete,
//! limits, expiry, isolation, and both stores.

use maas_testkit::{assert_error, Options, Platform};
use serde_json::{json, Value};
use std::time::Duration;

const BOUNDARY: &str = "maas-test-boundary-7d1f";

/// A multipart body: text fields, then the file part (if any).
pub(crate) fn form(fields: &[(&str, &str)], file: Option<(&str, &[u8])>) -> Vec<u8> {
    let mut b = Vec::new();
    for (name, value) in fields {
        b.extend_from_slice(
            format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n").as_bytes(),
        );
    }
    if let Some((filename, data)) = file {
        b.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n\
                 Content-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        b.extend_from_slice(data);
        b.extend_from_slice(b"\r\n");
    }
    b.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    b
}

pub(crate) async fn upload(p: &Platform, key: &str, body: Vec<u8>) -> reqwest::Response {
    p.http
        .post(p.url("/v1/files"))
        .bearer_auth(key)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(body)
        .send()
        .await
        .unwrap()
}

pub(crate) async fn upload_ok(p: &Platform, key: &str, name: &str, data: &[u8]) -> Value {
    let r = upload(p, key, form(&[("purpose", "batch")], Some((name, data)))).await;
    assert_eq!(r.status(), 200, "upload {name}");
    r.json().await.unwrap()
}

async fn get(p: &Platform, key: &str, path: &str) -> reqwest::Response {
    p.http
        .get(p.url(path))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
}

/// `lines` JSONL lines of about 100 bytes each.
fn jsonl(lines: usize) -> Vec<u8> {
    (0..lines)
        .map(|i| {
            format!(
                "{{\"custom_id\": \"req-{i}\", \"method\": \"POST\", \"url\": \"/v1/embeddings\", \"body\": {{\"model\": \"all-minilm-l6-v2\", \"input\": \"line {i}\"}}}}\n"
            )
        })
        .collect::<String>()
        .into_bytes()
}

async fn files_round_trip(p: &Platform) {
    let a = p.create_tenant("files-a", 1).await;
    let b = p.create_tenant("files-b", 1).await;

    // 30,000 lines, ~4 MB: several chunks of the store.
    let big = jsonl(30_000);
    assert!(big.len() > 3 << 20);
    let f = upload_ok(p, &a.key, "input.jsonl", &big).await;
    let id = f["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("file-"), "{f}");
    assert_eq!(f["object"], "file");
    assert_eq!(f["bytes"], big.len());
    assert_eq!(f["filename"], "input.jsonl");
    assert_eq!(f["purpose"], "batch");
    assert_eq!(f["status"], "processed");
    let created = f["created_at"].as_i64().unwrap();
    // Default expiry of a batch file: 30 days.
    assert_eq!(f["expires_at"].as_i64().unwrap() - created, 30 * 24 * 3600);

    let r = get(p, &a.key, &format!("/v1/files/{id}")).await;
    assert_eq!(r.status(), 200);
    let again: Value = r.json().await.unwrap();
    assert_eq!(again, f);
    let r = get(p, &a.key, &format!("/v1/files/{id}/content")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-length"],
        big.len().to_string().as_str()
    );
    let body = r.bytes().await.unwrap();
    assert!(body == big, "the content comes back byte for byte");

    // Another tenant: 404 on every route, and its list is empty.
    for path in [format!("/v1/files/{id}"), format!("/v1/files/{id}/content")] {
        assert_error(get(p, &b.key, &path).await, 404, "not_found").await;
    }
    let r = p
        .http
        .delete(p.url(&format!("/v1/files/{id}")))
        .bearer_auth(&b.key)
        .send()
        .await
        .unwrap();
    assert_error(r, 404, "not_found").await;
    let list: Value = get(p, &b.key, "/v1/files").await.json().await.unwrap();
    assert_eq!(list["data"], json!([]));

    // Pagination: 4 more files; pages of 2, newest first, then oldest first.
    let mut ids = vec![id.clone()];
    for i in 0..4 {
        let f = upload_ok(
            p,
            &a.key,
            &format!("f{i}.jsonl"),
            format!("{{\"n\": {i}}}\n").as_bytes(),
        )
        .await;
        ids.push(f["id"].as_str().unwrap().to_owned());
    }
    for (order, want) in [
        ("desc", ids.iter().rev().cloned().collect::<Vec<_>>()),
        ("asc", ids.clone()),
    ] {
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut path = format!("/v1/files?limit=2&order={order}&purpose=batch");
            if let Some(a) = &after {
                path.push_str(&format!("&after={a}"));
            }
            let page: Value = get(p, &a.key, &path).await.json().await.unwrap();
            assert_eq!(page["object"], "list");
            let data = page["data"].as_array().unwrap();
            seen.extend(data.iter().map(|f| f["id"].as_str().unwrap().to_owned()));
            assert_eq!(page["last_id"], data.last().unwrap()["id"]);
            if !page["has_more"].as_bool().unwrap() {
                break;
            }
            after = page["last_id"].as_str().map(str::to_owned);
        }
        assert_eq!(seen, want, "order {order}");
    }
    let none: Value = get(p, &a.key, "/v1/files?purpose=batch_output")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(none["data"], json!([]));

    // Delete: gone from every route.
    let r = p
        .http
        .delete(p.url(&format!("/v1/files/{id}")))
        .bearer_auth(&a.key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let d: Value = r.json().await.unwrap();
    assert_eq!(d, json!({"id": id, "object": "file", "deleted": true}));
    assert_error(
        get(p, &a.key, &format!("/v1/files/{id}")).await,
        404,
        "not_found",
    )
    .await;
    assert_error(
        get(p, &a.key, &format!("/v1/files/{id}/content")).await,
        404,
        "not_found",
    )
    .await;
}

#[tokio::test]
async fn files_upload_list_download_and_delete_in_the_postgres_store_and_stay_per_tenant() {
    let p = Platform::start(Options::default()).await.unwrap();
    files_round_trip(&p).await;
    // The content lived in chunks of at most 1 MiB, and went with the file.
    let chunks: i64 = sqlx::query_scalar("SELECT count(*) FROM file_chunks")
        .fetch_one(&p.db)
        .await
        .unwrap();
    let files: i64 = sqlx::query_scalar("SELECT count(*) FROM files")
        .fetch_one(&p.db)
        .await
        .unwrap();
    assert_eq!(
        (files, chunks),
        (4, 4),
        "the deleted file's chunks are gone"
    );
}

#[tokio::test]
async fn files_work_the_same_in_an_object_store() {
    let dir = std::env::temp_dir().join(format!("maas-files-{}", uuid::Uuid::new_v4().simple()));
    let opts = Options {
        api_env: vec![("MAAS_FILE_STORE", format!("file://{}", dir.display()))],
        ..Options::default()
    };
    let p = Platform::start(opts).await.unwrap();
    files_round_trip(&p).await;
    let chunks: i64 = sqlx::query_scalar("SELECT count(*) FROM file_chunks")
        .fetch_one(&p.db)
        .await
        .unwrap();
    assert_eq!(chunks, 0, "nothing in Postgres but the rows");
    let stores: Vec<String> = sqlx::query_scalar("SELECT DISTINCT store FROM files")
        .fetch_all(&p.db)
        .await
        .unwrap();
    assert_eq!(stores, vec!["object"]);
    // One object per live file, under the tenant's folder.
    let count = walk(&dir);
    assert_eq!(count, 4, "objects in {}", dir.display());
    let _ = std::fs::remove_dir_all(&dir);
}

fn walk(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    if e.path().is_dir() {
                        walk(&e.path())
                    } else {
                        1
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn bad_uploads_get_clear_errors_and_limits_hold() {
    let opts = Options {
        api_env: vec![("MAAS_FILES_SWEEP_SECS", "1".into())],
        ..Options::default()
    };
    let p = Platform::start(opts).await.unwrap();
    let t = p.create_tenant("files-bad", 1).await;
    let data = b"{\"a\": 1}\n";

    let cases: Vec<(Vec<u8>, &str)> = vec![
        (form(&[], Some(("a.jsonl", data))), "purpose"),
        (
            form(&[("purpose", "fine-tune")], Some(("a.jsonl", data))),
            "purpose",
        ),
        (form(&[("purpose", "batch")], None), "file"),
        (form(&[("purpose", "batch")], Some(("a.csv", data))), "file"),
        (
            form(
                &[
                    ("purpose", "batch"),
                    ("expires_after[anchor]", "created_at"),
                    ("expires_after[seconds]", "60"),
                ],
                Some(("a.jsonl", data)),
            ),
            "expires_after[seconds]",
        ),
        (
            form(
                &[
                    ("purpose", "batch"),
                    ("expires_after[anchor]", "last_active_at"),
                    ("expires_after[seconds]", "7200"),
                ],
                Some(("a.jsonl", data)),
            ),
            "expires_after[anchor]",
        ),
    ];
    for (body, param) in cases {
        let e = assert_error(upload(&p, &t.key, body).await, 400, "invalid_request").await;
        assert_eq!(e["error"]["param"], param, "{e}");
    }
    // Not multipart at all.
    let r = p
        .http
        .post(p.url("/v1/files"))
        .bearer_auth(&t.key)
        .json(&json!({"purpose": "batch"}))
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "invalid_request").await;

    // A key without the files scope.
    let r = p
        .admin_post(
            &format!("/admin/v1/tenants/{}/keys", t.id),
            json!({"scopes": ["embeddings"]}),
        )
        .await;
    let scoped: Value = r.json().await.unwrap();
    let scoped = scoped["key"].as_str().unwrap();
    let r = upload(
        &p,
        scoped,
        form(&[("purpose", "batch")], Some(("a.jsonl", data))),
    )
    .await;
    assert_error(r, 403, "insufficient_scope").await;
    assert_error(
        get(&p, scoped, "/v1/files").await,
        403,
        "insufficient_scope",
    )
    .await;

    // Per-tenant limits: a file over max_file_bytes is a 413; past
    // max_stored_bytes, a 429 that tells the client not to retry.
    let r = p
        .http
        .put(p.url(&format!("/admin/v1/tenants/{}/file-limits", t.id)))
        .bearer_auth(p.admin_token())
        .json(&json!({"max_file_bytes": 3000, "max_stored_bytes": 5000}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let l: Value = r.json().await.unwrap();
    assert_eq!(l["in_force"]["max_file_bytes"], 3000);
    assert_eq!(l["in_force"]["max_batch_lines"], 50_000);
    let r = upload(
        &p,
        &t.key,
        form(
            &[("purpose", "batch")],
            Some(("big.jsonl", &vec![b'x'; 3001])),
        ),
    )
    .await;
    assert_eq!(r.headers()["x-should-retry"], "false");
    assert_error(r, 413, "payload_too_large").await;
    upload_ok(&p, &t.key, "one.jsonl", &[b'x'; 3000]).await;
    let r = upload(
        &p,
        &t.key,
        form(&[("purpose", "batch")], Some(("two.jsonl", &[b'x'; 2500]))),
    )
    .await;
    assert_eq!(r.headers()["x-should-retry"], "false");
    assert_error(r, 429, "insufficient_quota").await;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM files")
        .fetch_one(&p.db)
        .await
        .unwrap();
    assert_eq!(n, 1, "refused uploads leave nothing");

    // Expiry: an expired file is gone at once from the API, and the sweeper
    // deletes it and its content.
    let f = upload_ok(&p, &t.key, "short.jsonl", data).await;
    let id = f["id"].as_str().unwrap();
    sqlx::query("UPDATE files SET expires_at = now() - interval '1 second' WHERE id = $1")
        .bind(id)
        .execute(&p.db)
        .await
        .unwrap();
    assert_error(
        get(&p, &t.key, &format!("/v1/files/{id}")).await,
        404,
        "not_found",
    )
    .await;
    let left = p
        .wait_count(
            &format!("SELECT 1 - count(*) FROM file_chunks WHERE file_id = '{id}'"),
            1,
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(left, 1, "the sweeper deleted the expired file's content");
    let with_expiry = upload(
        &p,
        &t.key,
        form(
            &[
                ("purpose", "batch"),
                ("expires_after[anchor]", "created_at"),
                ("expires_after[seconds]", "3600"),
            ],
            Some(("h.jsonl", data)),
        ),
    )
    .await;
    let f: Value = with_expiry.json().await.unwrap();
    assert_eq!(
        f["expires_at"].as_i64().unwrap() - f["created_at"].as_i64().unwrap(),
        3600
    );
}

/// A local S3-compatible server (moto's, from tests/requirements.txt) on a
/// free port, stopped when dropped.
struct S3Server {
    child: tokio::process::Child,
    url: String,
}

impl S3Server {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = tokio::process::Command::new(maas_testkit::python())
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("moto's S3 server starts (pip install -r tests/requirements.txt)");
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        for _ in 0..200 {
            if http.get(&url).send().await.is_ok() {
                return Self { child, url };
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("the S3 server did not start on {url}");
    }

    /// The bucket's object keys.
    async fn keys(&self, bucket: &str) -> Vec<String> {
        let xml = reqwest::get(format!("{}/{bucket}?list-type=2", self.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        xml.split("<Key>")
            .skip(1)
            .filter_map(|s| s.split("</Key>").next())
            .map(str::to_owned)
            .collect()
    }
}

#[tokio::test]
async fn files_and_batch_output_live_in_an_s3_compatible_bucket_when_configured() {
    let mut s3 = S3Server::start().await;
    let http = reqwest::Client::new();
    let r = http
        .put(format!("{}/maas-files", s3.url))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "create bucket: {}", r.status());
    let p = Platform::start(Options {
        with_models: true,
        api_env: vec![
            ("MAAS_FILE_STORE", "s3://maas-files/tenants".into()),
            ("AWS_ENDPOINT", s3.url.clone()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ],
        ..Options::default()
    })
    .await
    .unwrap();
    let t = p.create_tenant("acme", 1).await;
    let data = jsonl(3);
    let f = upload_ok(&p, &t.key, "input.jsonl", &data).await;
    let id = f["id"].as_str().unwrap().to_owned();
    // The content is in the bucket, none of it in Postgres.
    let keys = s3.keys("maas-files").await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(keys[0].starts_with("tenants/"), "{keys:?}");
    let (chunks,): (i64,) = sqlx::query_as("SELECT count(*) FROM file_chunks")
        .fetch_one(&p.db)
        .await
        .unwrap();
    assert_eq!(chunks, 0);
    let body = get(&p, &t.key, &format!("/v1/files/{id}/content"))
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(&body[..], &data[..]);

    // A batch over it writes its output file to the bucket too.
    let r = p
        .http
        .post(p.url("/v1/batches"))
        .bearer_auth(&t.key)
        .json(&serde_json::json!({"input_file_id": id, "endpoint": "/v1/embeddings", "completion_window": "24h"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let b: Value = r.json().await.unwrap();
    let mut done = Value::Null;
    for _ in 0..600 {
        done = get(
            &p,
            &t.key,
            &format!("/v1/batches/{}", b["id"].as_str().unwrap()),
        )
        .await
        .json()
        .await
        .unwrap();
        if done["status"] == "completed" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(done["status"], "completed", "{done}");
    let out = get(
        &p,
        &t.key,
        &format!(
            "/v1/files/{}/content",
            done["output_file_id"].as_str().unwrap()
        ),
    )
    .await
    .text()
    .await
    .unwrap();
    assert_eq!(out.lines().count(), 3, "{out}");
    assert_eq!(s3.keys("maas-files").await.len(), 2);

    // Deleting a file deletes its object.
    let r = p
        .http
        .delete(p.url(&format!("/v1/files/{id}")))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(s3.keys("maas-files").await.len(), 1);
    let _ = s3.child.kill().await;
}
