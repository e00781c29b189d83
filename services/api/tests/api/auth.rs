use maas_testkit::{assert_error, Options, Platform};
use serde_json::json;

#[tokio::test]
async fn a_revoked_key_is_refused_on_its_next_request() {
    let p = Platform::start(Options {
        workers: 0,
        ..Options::default()
    })
    .await
    .unwrap();
    let t = p.create_tenant("acme", 1).await;
    let ok = p
        .http
        .get(p.url("/v1/jobs"))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200, "the key works (and is now cached)");
    let r = p
        .http
        .delete(p.url(&format!("/admin/v1/keys/{}", t.key_id)))
        .bearer_auth(p.admin_token())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = p
        .http
        .get(p.url("/v1/jobs"))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap();
    assert_error(r, 401, "invalid_api_key").await;
}

#[tokio::test]
async fn a_revocation_reaches_every_api_replica() {
    let mut p = Platform::start(Options {
        workers: 0,
        ..Options::default()
    })
    .await
    .unwrap();
    p.spawn_api().await.unwrap();
    let t = p.create_tenant("acme", 1).await;
    let second = p.url_of(&p.api[1], "/v1/jobs");
    assert_eq!(
        p.http
            .get(&second)
            .bearer_auth(&t.key)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let r = p
        .http
        .delete(p.url(&format!("/admin/v1/keys/{}", t.key_id)))
        .bearer_auth(p.admin_token())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_error(
        p.http
            .get(&second)
            .bearer_auth(&t.key)
            .send()
            .await
            .unwrap(),
        401,
        "invalid_api_key",
    )
    .await;
}

#[tokio::test]
async fn requests_without_a_valid_key_are_refused() {
    let p = Platform::start(Options {
        workers: 0,
        ..Options::default()
    })
    .await
    .unwrap();
    let t = p.create_tenant("acme", 1).await;
    assert_error(
        p.http.get(p.url("/v1/jobs")).send().await.unwrap(),
        401,
        "missing_api_key",
    )
    .await;
    assert_error(
        p.http
            .get(p.url("/v1/jobs"))
            .bearer_auth("nonsense")
            .send()
            .await
            .unwrap(),
        401,
        "invalid_api_key",
    )
    .await;
    // Right prefix, wrong secret.
    let forged = format!("{}{}", &t.key[..16], "x".repeat(t.key.len() - 16));
    assert_error(
        p.http
            .get(p.url("/v1/jobs"))
            .bearer_auth(forged)
            .send()
            .await
            .unwrap(),
        401,
        "invalid_api_key",
    )
    .await;
}

#[tokio::test]
async fn bad_admin_tokens_are_refused() {
    let p = Platform::start(Options {
        workers: 0,
        ..Options::default()
    })
    .await
    .unwrap();
    let now = chrono::Utc::now().timestamp();
    let good = json!({"role": "admin", "aud": "maas-admin", "iss": "maas", "exp": now + 600});
    let with = |k: &str, v: serde_json::Value| {
        let mut c = good.clone();
        c[k] = v;
        c
    };
    let cases = [
        (
            "expired",
            p.token_with(&p.jwt_secret, with("exp", json!(now - 60))),
        ),
        (
            "wrong audience",
            p.token_with(&p.jwt_secret, with("aud", json!("someone-else"))),
        ),
        (
            "wrong issuer",
            p.token_with(&p.jwt_secret, with("iss", json!("evil"))),
        ),
        (
            "bad signature",
            p.token_with("not-the-secret", good.clone()),
        ),
        ("no exp", {
            let mut c = good.clone();
            c.as_object_mut().unwrap().remove("exp");
            p.token_with(&p.jwt_secret, c)
        }),
        ("alg none", {
            use base64_like::encode;
            format!(
                "{}.{}.",
                encode(br#"{"alg":"none","typ":"JWT"}"#),
                encode(good.to_string().as_bytes())
            )
        }),
        ("garbage", "abc.def.ghi".to_owned()),
    ];
    for (name, token) in cases {
        let r = p
            .http
            .get(p.url("/admin/v1/tenants"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{name}");
        assert_error(r, 401, "invalid_token").await;
    }
    let t = p.create_tenant("acme", 1).await;
    let r = p
        .http
        .get(p.url("/admin/v1/tenants"))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap();
    assert_error(r, 401, "invalid_token").await;
    let r = p.http.get(p.url("/admin/v1/tenants")).send().await.unwrap();
    assert_error(r, 401, "missing_token").await;
    let not_admin = p.token_with(&p.jwt_secret, with("role", json!("viewer")));
    let r = p
        .http
        .get(p.url("/admin/v1/tenants"))
        .bearer_auth(not_admin)
        .send()
        .await
        .unwrap();
    assert_error(r, 403, "not_admin").await;
    // The valid token works.
    let r = p
        .http
        .get(p.url("/admin/v1/tenants"))
        .bearer_auth(p.admin_token())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// Unpadded base64url, enough to forge an `alg: none` token.
mod base64_like {
    pub fn encode(input: &[u8]) -> String {
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in input.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            let chars = chunk.len() + 1;
            for i in 0..chars {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }
}

#[tokio::test]
async fn a_keys_use_is_recorded_once_a_minute() {
    let p = Platform::start(Options {
        workers: 0,
        ..Options::default()
    })
    .await
    .unwrap();
    let t = p.create_tenant("acme", 1).await;
    let used_at = || async {
        sqlx::query_scalar::<_, Option<chrono::DateTime<chrono::Utc>>>(
            "SELECT last_used_at FROM api_keys WHERE id = $1::uuid",
        )
        .bind(&t.key_id)
        .fetch_one(&p.db)
        .await
        .unwrap()
    };
    assert!(used_at().await.is_none(), "a new key was never used");
    for _ in 0..5 {
        let r = p
            .http
            .get(p.url("/v1/models"))
            .bearer_auth(&t.key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let found = p
        .wait_count(
            &format!(
                "SELECT count(*) FROM api_keys WHERE id = '{}' AND last_used_at IS NOT NULL",
                t.key_id
            ),
            1,
            std::time::Duration::from_secs(5),
        )
        .await;
    assert_eq!(found, 1, "last_used_at is recorded");
    let first = used_at().await;
    let r = p
        .http
        .get(p.url("/v1/models"))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(used_at().await, first, "not rewritten within the minute");
}
