//! Test harness for black-box tests of the whole platform.
//!
//! [`Platform::start`] gives each test its own Postgres database, its own
//! namespace for RabbitMQ queues and Redis keys, and real `maas-api`,
//! `maas-scheduler` and `maas-worker` processes on free ports, so tests run
//! in parallel without seeing each other. Processes are killed when the
//! `Platform` is dropped; their logs are shown only when `TEST_LOG` is set.

#![allow(clippy::unwrap_used)]

pub mod otlp;
pub mod proxy;

use anyhow::{bail, Context};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use sqlx::PgPool;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use uuid::Uuid;

/// Knobs a test may turn; the defaults make failures show up fast.
#[derive(Debug, Clone)]
pub struct Options {
    pub workers: usize,
    pub worker_slots: u32,
    pub schedulers: usize,
    pub heartbeat_ms: u64,
    pub heartbeat_timeout_ms: u64,
    pub max_attempts: i32,
    pub batch_aging_ms: u64,
    pub max_body_bytes: usize,
    /// Serve the real models from the repository's `models/` (fetched by
    /// `scripts/fetch-models`); off, workers serve `echo` only.
    pub with_models: bool,
    /// Extra environment for the workers (for example the chat engine's limits).
    pub worker_env: Vec<(&'static str, String)>,
    /// Extra environment for the API instances.
    pub api_env: Vec<(&'static str, String)>,
    /// Extra environment for every service.
    pub env: Vec<(&'static str, String)>,
    /// Write each service's log (stderr) to a file in this folder,
    /// `<binary>-<n>.log`.
    pub log_dir: Option<PathBuf>,
    /// Route the services' connections to Postgres, Redis or RabbitMQ
    /// through a [`proxy::FaultProxy`] (in [`Platform::proxies`]), so a test
    /// can take that dependency away and bring it back.
    pub proxy_postgres: bool,
    pub proxy_redis: bool,
    pub proxy_amqp: bool,
}

/// The repository's `models/` folder.
pub fn models_dir() -> PathBuf {
    let dir = std::env::var("MAAS_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models")));
    assert!(
        dir.join("all-minilm-l6-v2/model.safetensors").exists(),
        "{} has no models: run scripts/fetch-models",
        dir.display()
    );
    dir
}

/// The Python of the repository's `.venv` (made by scripts/test, with the
/// official `openai` client).
pub fn python() -> PathBuf {
    let p = std::env::var("MAAS_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../.venv/bin/python"
            ))
        });
    assert!(
        p.exists(),
        "{} is missing: scripts/test creates it",
        p.display()
    );
    p
}

/// Runs one of the official client's scripts in `tests/openai/` against the
/// platform with `OPENAI_BASE_URL` set, `OPENAI_API_KEY` the given key and
/// `env` added; asserts that it succeeded and printed `ok:`, and returns its
/// standard output.
pub async fn run_openai_script(
    p: &Platform,
    script: &str,
    key: &str,
    env: &[(&str, &str)],
) -> String {
    let path =
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/openai")).join(script);
    let out = tokio::process::Command::new(python())
        .arg(&path)
        .env("OPENAI_BASE_URL", p.url("/v1"))
        .env("OPENAI_API_KEY", key)
        .envs(env.iter().copied())
        .output()
        .await
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ok:"), "{stdout}");
    stdout
}

impl Default for Options {
    fn default() -> Self {
        Self {
            workers: 1,
            worker_slots: 4,
            schedulers: 1,
            heartbeat_ms: 200,
            heartbeat_timeout_ms: 1_500,
            max_attempts: 3,
            batch_aging_ms: 10_000,
            max_body_bytes: 64 * 1024,
            with_models: false,
            worker_env: Vec::new(),
            api_env: Vec::new(),
            env: Vec::new(),
            log_dir: None,
            proxy_postgres: false,
            proxy_redis: false,
            proxy_amqp: false,
        }
    }
}

/// One running service process.
pub struct Service {
    pub name: &'static str,
    pub port: u16,
    child: Child,
}

impl Service {
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// Whether the process is still running (it has not exited on its own).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL: no cleanup, as in a crash.
    pub async fn kill9(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// SIGTERM, then wait (up to `limit`) for a clean exit; returns the exit success.
    pub async fn terminate(&mut self, limit: Duration) -> bool {
        let pid = self.pid().to_string();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status();
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(Ok(status)) => status.success(),
            _ => {
                self.kill9().await;
                false
            }
        }
    }
}

pub struct Platform {
    pub opts: Options,
    pub db: PgPool,
    pub database_url: String,
    pub namespace: String,
    pub jwt_secret: String,
    pub http: reqwest::Client,
    pub api: Vec<Service>,
    pub schedulers: Vec<Service>,
    pub workers: Vec<Service>,
    pub proxies: Proxies,
}

/// The fault proxies in front of the shared dependencies, where asked for.
#[derive(Default)]
pub struct Proxies {
    pub postgres: Option<proxy::FaultProxy>,
    pub redis: Option<proxy::FaultProxy>,
    pub amqp: Option<proxy::FaultProxy>,
}

/// The shared dependencies' addresses (the machine's own services).
const PG_ADDR: &str = "127.0.0.1:5432";
const REDIS_ADDR: &str = "127.0.0.1:6379";
const AMQP_ADDR: &str = "127.0.0.1:5672";

/// A tenant with one key, as created through the admin API.
#[derive(Debug, Clone)]
pub struct TestTenant {
    pub id: String,
    pub key: String,
    pub key_id: String,
}

fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("MAAS_BIN_DIR") {
        return PathBuf::from(dir);
    }
    // target/<profile>/deps/<test-binary> → target/<profile>
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(|p| p.parent())
        .expect("target dir")
        .to_path_buf()
}

fn pg_admin_url() -> String {
    std::env::var("MAAS_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

impl Platform {
    /// A fresh database and namespace, an API, the schedulers and workers of `opts`.
    pub async fn start(opts: Options) -> anyhow::Result<Self> {
        let suffix = Uuid::new_v4().simple().to_string();
        let db_name = format!("maas_t_{}", &suffix[..16]);
        let admin = PgPool::connect(&pg_admin_url())
            .await
            .context("connecting to Postgres (is it running?)")?;
        sqlx::query(&format!("CREATE DATABASE {db_name}"))
            .execute(&admin)
            .await?;
        admin.close().await;
        let base = pg_admin_url();
        let database_url = format!(
            "{}/{db_name}",
            base.rsplit_once('/').map(|(b, _)| b).unwrap_or(&base)
        );
        let db = maas_store::connect(&database_url, 8).await?;
        maas_store::migrate(&db).await?;
        let proxy = |on: bool, addr: &'static str| async move {
            match on {
                true => proxy::FaultProxy::start(addr).await.map(Some),
                false => Ok(None),
            }
        };
        let proxies = Proxies {
            postgres: proxy(opts.proxy_postgres, PG_ADDR).await?,
            redis: proxy(opts.proxy_redis, REDIS_ADDR).await?,
            amqp: proxy(opts.proxy_amqp, AMQP_ADDR).await?,
        };
        let mut p = Self {
            proxies,
            opts: opts.clone(),
            db,
            database_url,
            namespace: format!("t{}", &suffix[..12]),
            jwt_secret: format!("secret-{suffix}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()?,
            api: Vec::new(),
            schedulers: Vec::new(),
            workers: Vec::new(),
        };
        p.spawn_api().await?;
        for _ in 0..opts.schedulers {
            p.spawn_scheduler().await?;
        }
        for _ in 0..opts.workers {
            p.spawn_worker(opts.worker_slots).await?;
        }
        if opts.workers > 0 && opts.schedulers > 0 {
            p.wait_for_live_workers(opts.workers).await?;
        }
        Ok(p)
    }

    /// Whether every service process is still running.
    pub fn all_running(&mut self) -> bool {
        self.api
            .iter_mut()
            .chain(self.schedulers.iter_mut())
            .chain(self.workers.iter_mut())
            .all(|s| s.is_running())
    }

    /// The database URL the services use (through the proxy when there is one).
    fn service_database_url(&self) -> String {
        match &self.proxies.postgres {
            Some(p) => self
                .database_url
                .replacen(PG_ADDR, &format!("127.0.0.1:{}", p.port()), 1),
            None => self.database_url.clone(),
        }
    }

    fn env(&self) -> Vec<(String, String)> {
        let o = &self.opts;
        let mut through_proxies = Vec::new();
        if let Some(p) = &self.proxies.redis {
            through_proxies.push(("MAAS_REDIS_URL", format!("redis://127.0.0.1:{}", p.port())));
        }
        if let Some(p) = &self.proxies.amqp {
            through_proxies.push((
                "MAAS_AMQP_URL",
                format!("amqp://guest:guest@127.0.0.1:{}/%2f", p.port()),
            ));
        }
        [
            ("MAAS_DATABASE_URL", self.service_database_url()),
            ("MAAS_NAMESPACE", self.namespace.clone()),
            ("MAAS_JWT_SECRET", self.jwt_secret.clone()),
            ("MAAS_LOG_FORMAT", "json".into()),
            ("MAAS_AMQP_QUEUE_EXPIRES_MS", "600000".into()),
            ("MAAS_API_LISTEN", "127.0.0.1:0".into()),
            ("MAAS_API_WORKERS", "2".into()),
            ("MAAS_API_MAX_BODY_BYTES", o.max_body_bytes.to_string()),
            ("MAAS_API_SHUTDOWN_TIMEOUT_SECS", "5".into()),
            ("MAAS_SCHEDULER_LISTEN", "127.0.0.1:0".into()),
            (
                "MAAS_SCHEDULER_HEARTBEAT_TIMEOUT_MS",
                o.heartbeat_timeout_ms.to_string(),
            ),
            ("MAAS_SCHEDULER_MAX_ATTEMPTS", o.max_attempts.to_string()),
            (
                "MAAS_SCHEDULER_BATCH_AGING_MS",
                o.batch_aging_ms.to_string(),
            ),
            ("MAAS_WORKER_LISTEN", "127.0.0.1:0".into()),
            ("MAAS_WORKER_HEARTBEAT_MS", o.heartbeat_ms.to_string()),
            ("MAAS_WORKER_SHUTDOWN_GRACE_MS", "10000".into()),
            (
                "MAAS_MODELS_DIR",
                if o.with_models {
                    models_dir().display().to_string()
                } else {
                    "/nonexistent-models".into()
                },
            ),
            (
                "RUST_LOG",
                std::env::var("TEST_RUST_LOG")
                    .unwrap_or_else(|_| "info,sqlx=warn,lapin=warn".into()),
            ),
        ]
        .into_iter()
        .chain(through_proxies)
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    async fn spawn(&self, name: &'static str, extra: &[(&str, String)]) -> anyhow::Result<Service> {
        let path = bin_dir().join(name);
        if !path.exists() {
            bail!(
                "{} not found: build the binaries first (cargo build --release --bins)",
                path.display()
            );
        }
        let mut cmd = Command::new(&path);
        let stderr = match &self.opts.log_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)?;
                let n = self.api.len() + self.schedulers.len() + self.workers.len();
                Stdio::from(std::fs::File::create(dir.join(format!("{name}-{n}.log")))?)
            }
            None if std::env::var_os("TEST_LOG").is_some() => Stdio::inherit(),
            None => Stdio::null(),
        };
        cmd.envs(self.env())
            .envs(
                self.opts
                    .env
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.clone())),
            )
            .envs(extra.iter().map(|(k, v)| (k.to_string(), v.clone())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true);
        let mut child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .with_context(|| format!("{name} did not start within 60 s"))??
            .with_context(|| {
                format!("{name} exited before listening (run with TEST_LOG=1 to see why)")
            })?;
        let port: u16 = line
            .rsplit(' ')
            .next()
            .and_then(|p| p.parse().ok())
            .with_context(|| format!("unexpected first line from {name}: {line}"))?;
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Service { name, port, child })
    }

    /// Starts an API instance and waits until its `/readyz` says ready
    /// (it listens before its connections are up).
    pub async fn spawn_api(&mut self) -> anyhow::Result<usize> {
        let i = self.spawn_api_unready().await?;
        let url = self.url_of(&self.api[i], "/readyz");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let ready = self.http.get(&url).send().await.map(|r| r.status() == 200);
            if matches!(ready, Ok(true)) {
                return Ok(i);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("the api instance was not ready within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts an API instance without waiting for its dependencies.
    pub async fn spawn_api_unready(&mut self) -> anyhow::Result<usize> {
        let env = self.opts.api_env.clone();
        let s = self.spawn("maas-api", &env).await?;
        self.api.push(s);
        Ok(self.api.len() - 1)
    }

    pub async fn spawn_scheduler(&mut self) -> anyhow::Result<usize> {
        let s = self.spawn("maas-scheduler", &[]).await?;
        self.schedulers.push(s);
        Ok(self.schedulers.len() - 1)
    }

    pub async fn spawn_worker(&mut self, slots: u32) -> anyhow::Result<usize> {
        let mut env = vec![("MAAS_WORKER_SLOTS", slots.to_string())];
        env.extend(self.opts.worker_env.iter().cloned());
        let s = self.spawn("maas-worker", &env).await?;
        self.workers.push(s);
        Ok(self.workers.len() - 1)
    }

    /// Base URL of the first API instance.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.api[0].port)
    }

    pub fn url_of(&self, service: &Service, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", service.port)
    }

    /// Waits until the scheduler has recorded `n` live workers.
    pub async fn wait_for_live_workers(&self, n: usize) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let live: i64 =
                sqlx::query_scalar("SELECT count(*) FROM workers WHERE status = 'alive'")
                    .fetch_one(&self.db)
                    .await?;
            if live as usize >= n {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("only {live} of {n} workers registered within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A valid admin token.
    pub fn admin_token(&self) -> String {
        self.token_with(&self.jwt_secret, json!({"role": "admin", "aud": "maas-admin", "iss": "maas", "exp": chrono::Utc::now().timestamp() + 600}))
    }

    /// A token with the given claims (`sub` is added), signed HS256 with `secret`.
    pub fn token_with(&self, secret: &str, mut claims: Value) -> String {
        claims["sub"] = json!("test-admin");
        let key = EncodingKey::from_secret(secret.as_bytes()).unwrap();
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap()
    }

    pub async fn admin_post(&self, path: &str, body: Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .bearer_auth(self.admin_token())
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Creates a tenant and a key for it through the admin API.
    pub async fn create_tenant(&self, name: &str, weight: i32) -> TestTenant {
        let r = self
            .admin_post("/admin/v1/tenants", json!({"name": name, "weight": weight}))
            .await;
        assert_eq!(r.status(), 201, "create tenant");
        let t: Value = r.json().await.unwrap();
        let id = t["id"].as_str().unwrap().to_owned();
        let r = self
            .admin_post(&format!("/admin/v1/tenants/{id}/keys"), json!({}))
            .await;
        assert_eq!(r.status(), 201, "create key");
        let k: Value = r.json().await.unwrap();
        TestTenant {
            id,
            key: k["key"].as_str().unwrap().to_owned(),
            key_id: k["id"].as_str().unwrap().to_owned(),
        }
    }

    /// Replaces a tenant's quota through the admin API.
    pub async fn set_quota(&self, tenant: &str, quota: Value) {
        let r = self
            .http
            .put(self.url(&format!("/admin/v1/tenants/{tenant}/quota")))
            .bearer_auth(self.admin_token())
            .json(&quota)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "set quota");
    }

    /// `POST /v1/jobs` with a tenant key.
    pub async fn submit(&self, key: &str, body: Value) -> reqwest::Response {
        self.http
            .post(self.url("/v1/jobs"))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Submits an async echo job and returns its id.
    pub async fn submit_async_echo(&self, key: &str, text: &str, delay_ms: u64) -> String {
        let r = self.submit(key, json!({"model": "echo", "mode": "async", "input": {"text": text, "delay_ms": delay_ms}})).await;
        assert_eq!(r.status(), 202, "async submit");
        let v: Value = r.json().await.unwrap();
        v["id"].as_str().unwrap().to_owned()
    }

    pub async fn get_job(&self, key: &str, id: &str) -> reqwest::Response {
        self.http
            .get(self.url(&format!("/v1/jobs/{id}")))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
    }

    /// Polls a job until it is in a terminal state.
    pub async fn wait_finished(&self, key: &str, id: &str, limit: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let v: Value = self.get_job(key, id).await.json().await.unwrap();
            let s = v["status"].as_str().unwrap_or_default();
            if ["succeeded", "failed", "cancelled", "expired"].contains(&s) {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "job {id} still {s} after {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls Postgres until `sql` (a count) reaches `n`.
    pub async fn wait_count(&self, sql: &str, n: i64, limit: Duration) -> i64 {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let c: i64 = sqlx::query_scalar(sql).fetch_one(&self.db).await.unwrap();
            if c >= n || tokio::time::Instant::now() > deadline {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Asserts an OpenAI-style error object with the given status and code.
pub async fn assert_error(resp: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(resp.status().as_u16(), status, "status");
    let v: Value = resp.json().await.expect("error body is JSON");
    let e = &v["error"];
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "error.message in {v}"
    );
    assert!(e["type"].is_string(), "error.type in {v}");
    assert!(e.get("param").is_some(), "error.param in {v}");
    assert_eq!(e["code"], code, "error.code in {v}");
    v
}
