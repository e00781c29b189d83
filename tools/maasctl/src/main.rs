//! `maasctl`: the admin API from a shell. Reads the admin token from
//! `MAAS_ADMIN_TOKEN` (never from the command line, so it stays out of shell
//! history and process lists) and the API's address from `MAAS_API_URL`.
//! Prints the API's JSON answers; an error prints the API's error message and
//! exits with status 1.

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use serde_json::{json, Map, Value};

#[derive(Parser)]
#[command(
    name = "maasctl",
    version,
    about = "Manage tenants, keys, quotas, usage, models and webhooks through the admin API"
)]
struct Cli {
    /// Base URL of the API.
    #[arg(long, env = "MAAS_API_URL", default_value = "http://127.0.0.1:8080")]
    api: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Tenants: list, create, show, update, delete.
    #[command(subcommand)]
    Tenants(Tenants),
    /// API keys: create (prints the secret once), list, revoke.
    #[command(subcommand)]
    Keys(Keys),
    /// A tenant's limits.
    #[command(subcommand)]
    Quota(QuotaCmd),
    /// The model registry: list, register, load, unload, label.
    #[command(subcommand)]
    Models(ModelsCmd),
    /// A tenant's webhook endpoints: add (prints the signing secret once),
    /// list, show, update, rotate, test, deliveries, delete.
    #[command(subcommand)]
    Webhooks(WebhooksCmd),
    /// A tenant's usage per day, key and model.
    Usage {
        tenant: String,
        #[arg(long, default_value_t = 30)]
        days: u32,
    },
}

#[derive(Subcommand)]
enum ModelsCmd {
    /// Every model with its labels, versions and each version's state per worker.
    List,
    /// Registers a new, immutable version of a model from files under MAAS_MODELS_DIR.
    Register {
        model: String,
        version: String,
        /// The files (a folder or a file), relative to the workers' MAAS_MODELS_DIR.
        #[arg(long)]
        path: String,
        /// sha256 of the files (see docs/models.md); absent: pinned at first load.
        #[arg(long)]
        checksum: Option<String>,
        /// Runtime settings as JSON, e.g. '{"slots": 16}'.
        #[arg(long)]
        settings: Option<String>,
    },
    /// Asks workers to load a version (all of them, or --replicas of them).
    Load {
        model: String,
        version: String,
        #[arg(long)]
        replicas: Option<i32>,
        /// Wait up to this many seconds for the version to be ready (or fail).
        #[arg(long)]
        wait: Option<u64>,
    },
    /// Withdraws a version: it drains its jobs, then unloads.
    Unload { model: String, version: String },
    /// Points a label (stable, canary, ...) at a version that is ready.
    Label {
        model: String,
        label: String,
        version: String,
    },
}

#[derive(Subcommand)]
enum Tenants {
    List,
    Create {
        name: String,
        /// Fair-share weight (1–1000).
        #[arg(long)]
        weight: Option<i32>,
    },
    Show {
        id: String,
    },
    Update {
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        weight: Option<i32>,
        /// `true` stops the tenant's keys from working; `false` restores them.
        #[arg(long)]
        disabled: Option<bool>,
    },
    Delete {
        id: String,
    },
    /// Which models the tenant may use: `--allow a,b`, or `--all`.
    Models {
        id: String,
        /// Model names, comma-separated (an empty value: none).
        #[arg(
            long,
            value_delimiter = ',',
            conflicts_with = "all",
            required_unless_present = "all"
        )]
        allow: Option<Vec<String>>,
        /// Every model.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Subcommand)]
enum Keys {
    Create {
        tenant: String,
        #[arg(long)]
        name: Option<String>,
        /// Endpoint families or `model:<name>`; repeat for several (none: every scope).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// RFC 3339 time after which the key stops working.
        #[arg(long)]
        expires_at: Option<String>,
        /// The key's own requests per minute (the tenant's limit applies too).
        #[arg(long)]
        rpm: Option<i64>,
        /// The key's own tokens per minute (the tenant's limit applies too).
        #[arg(long)]
        tpm: Option<i64>,
    },
    /// Replaces the key's own limits: a limit not given is removed.
    Limits {
        key_id: String,
        #[arg(long)]
        rpm: Option<i64>,
        #[arg(long)]
        tpm: Option<i64>,
    },
    List {
        tenant: String,
    },
    Revoke {
        key_id: String,
    },
}

#[derive(Subcommand)]
enum WebhooksCmd {
    /// Registers an endpoint; prints it with its signing secret (shown once).
    Add {
        tenant: String,
        #[arg(long)]
        url: String,
        #[arg(long)]
        name: String,
        /// batch.completed, batch.failed, batch.expired or batch.cancelled;
        /// repeat for several (none: all four).
        #[arg(long = "event")]
        events: Vec<String>,
    },
    List {
        tenant: String,
    },
    Show {
        tenant: String,
        id: String,
    },
    /// Changes what is given (`--event` replaces the whole set).
    Update {
        tenant: String,
        id: String,
        #[arg(long)]
        url: Option<String>,
        #[arg(long)]
        name: Option<String>,
        #[arg(long = "event")]
        events: Vec<String>,
    },
    /// A new signing secret (printed once); `--keep-old`: the old one also
    /// signs for 24 hours.
    Rotate {
        tenant: String,
        id: String,
        #[arg(long)]
        keep_old: bool,
    },
    /// Sends a signed sample event and prints what the endpoint answered.
    Test {
        tenant: String,
        id: String,
        #[arg(long, default_value = "batch.completed")]
        event: String,
    },
    /// The endpoint's recent deliveries with every attempt.
    Deliveries {
        tenant: String,
        id: String,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    Delete {
        tenant: String,
        id: String,
    },
}

#[derive(Subcommand)]
enum QuotaCmd {
    Show {
        tenant: String,
    },
    /// Replaces the whole record: a limit not given is removed (unlimited).
    Set {
        tenant: String,
        #[arg(long)]
        rpm: Option<i64>,
        #[arg(long)]
        tpm: Option<i64>,
        #[arg(long)]
        max_concurrent: Option<i64>,
        #[arg(long)]
        max_queued: Option<i64>,
        #[arg(long)]
        token_budget: Option<i64>,
        #[arg(long)]
        budget_period: Option<String>,
    },
}

/// Drops unset fields, so the API sees only what was asked for.
fn fields(pairs: &[(&str, Value)]) -> Value {
    Value::Object(
        pairs
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect::<Map<_, _>>(),
    )
}

/// One version's entry in the registry index.
fn version_of(index: &Value, model: &str, version: &str) -> Option<Value> {
    index["data"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == model)?["versions"]
        .as_array()?
        .iter()
        .find(|v| v["version"] == version)
        .cloned()
}

async fn call(
    http: &reqwest::Client,
    api: &str,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let url = format!("{}/admin/v1{path}", api.trim_end_matches('/'));
    let mut req = http.request(method, &url).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let v: Value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    if !status.is_success() {
        let msg = v["error"]["message"]
            .as_str()
            .map_or_else(|| v.to_string(), str::to_owned);
        let code = v["error"]["code"].as_str().unwrap_or("");
        bail!("{status} {code}: {msg}");
    }
    Ok(v)
}

async fn run(cli: Cli) -> anyhow::Result<Value> {
    let token = std::env::var("MAAS_ADMIN_TOKEN")
        .context("set MAAS_ADMIN_TOKEN to an admin token (maas-api admin-token --sub you)")?;
    let http = reqwest::Client::new();
    let api = cli.api.as_str();
    use reqwest::Method as M;
    let c = |m: M, p: String, b: Option<Value>| {
        let (http, token) = (&http, &token);
        async move { call(http, api, token, m, &p, b).await }
    };
    match cli.command {
        Command::Tenants(t) => match t {
            Tenants::List => c(M::GET, "/tenants".into(), None).await,
            Tenants::Create { name, weight } => {
                c(
                    M::POST,
                    "/tenants".into(),
                    Some(fields(&[("name", json!(name)), ("weight", json!(weight))])),
                )
                .await
            }
            Tenants::Show { id } => c(M::GET, format!("/tenants/{id}"), None).await,
            Tenants::Update {
                id,
                name,
                weight,
                disabled,
            } => {
                c(
                    M::PATCH,
                    format!("/tenants/{id}"),
                    Some(fields(&[
                        ("name", json!(name)),
                        ("weight", json!(weight)),
                        ("disabled", json!(disabled)),
                    ])),
                )
                .await
            }
            Tenants::Delete { id } => c(M::DELETE, format!("/tenants/{id}"), None).await,
            Tenants::Models { id, allow, all: _ } => {
                let allow = allow.map(|v| {
                    v.into_iter()
                        .map(|m| m.trim().to_owned())
                        .filter(|m| !m.is_empty())
                        .collect::<Vec<_>>()
                });
                c(
                    M::PUT,
                    format!("/tenants/{id}/models"),
                    Some(json!({ "allow": allow })),
                )
                .await
            }
        },
        Command::Keys(k) => match k {
            Keys::Create {
                tenant,
                name,
                scopes,
                expires_at,
                rpm,
                tpm,
            } => {
                let scopes = (!scopes.is_empty()).then_some(scopes);
                let body = fields(&[
                    ("name", json!(name)),
                    ("scopes", json!(scopes)),
                    ("expires_at", json!(expires_at)),
                    ("rpm", json!(rpm)),
                    ("tpm", json!(tpm)),
                ]);
                c(M::POST, format!("/tenants/{tenant}/keys"), Some(body)).await
            }
            Keys::Limits { key_id, rpm, tpm } => {
                c(
                    M::PATCH,
                    format!("/keys/{key_id}"),
                    Some(json!({"rpm": rpm, "tpm": tpm})),
                )
                .await
            }
            Keys::List { tenant } => c(M::GET, format!("/tenants/{tenant}/keys"), None).await,
            Keys::Revoke { key_id } => c(M::DELETE, format!("/keys/{key_id}"), None).await,
        },
        Command::Quota(q) => match q {
            QuotaCmd::Show { tenant } => c(M::GET, format!("/tenants/{tenant}/quota"), None).await,
            QuotaCmd::Set {
                tenant,
                rpm,
                tpm,
                max_concurrent,
                max_queued,
                token_budget,
                budget_period,
            } => {
                let body = fields(&[
                    ("rpm", json!(rpm)),
                    ("tpm", json!(tpm)),
                    ("max_concurrent", json!(max_concurrent)),
                    ("max_queued", json!(max_queued)),
                    ("token_budget", json!(token_budget)),
                    ("budget_period", json!(budget_period)),
                ]);
                c(M::PUT, format!("/tenants/{tenant}/quota"), Some(body)).await
            }
        },
        Command::Models(m) => match m {
            ModelsCmd::List => c(M::GET, "/models".into(), None).await,
            ModelsCmd::Register {
                model,
                version,
                path,
                checksum,
                settings,
            } => {
                let settings = settings
                    .map(|s| serde_json::from_str::<Value>(&s))
                    .transpose()
                    .context("--settings must be a JSON object")?;
                let body = fields(&[
                    ("version", json!(version)),
                    ("path", json!(path)),
                    ("checksum", json!(checksum)),
                    ("settings", json!(settings)),
                ]);
                c(M::POST, format!("/models/{model}/versions"), Some(body)).await
            }
            ModelsCmd::Load {
                model,
                version,
                replicas,
                wait,
            } => {
                let body = fields(&[("replicas", json!(replicas))]);
                let asked = c(
                    M::POST,
                    format!("/models/{model}/versions/{version}/load"),
                    Some(body),
                )
                .await?;
                let Some(secs) = wait else { return Ok(asked) };
                let want = replicas.unwrap_or(1).max(1) as u64;
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
                loop {
                    let index = c(M::GET, "/models".into(), None).await?;
                    let v = version_of(&index, &model, &version)
                        .with_context(|| format!("{model}@{version} is not in the registry"))?;
                    if v["ready_workers"].as_u64().unwrap_or(0) >= want {
                        return Ok(v);
                    }
                    let workers: Vec<Value> = v["workers"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|w| w["worker_alive"] == true)
                        .cloned()
                        .collect();
                    let failed: Vec<String> = workers
                        .iter()
                        .filter(|w| w["state"] == "failed")
                        .map(|w| {
                            format!(
                                "{}: {}",
                                w["worker_id"].as_str().unwrap_or("?"),
                                w["reason"].as_str().unwrap_or("")
                            )
                        })
                        .collect();
                    if !workers.is_empty() && failed.len() == workers.len() {
                        bail!("{model}@{version} failed to load: {}", failed.join("; "));
                    }
                    if std::time::Instant::now() >= deadline {
                        bail!("{model}@{version} is not ready after {secs} s: {v}");
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
            }
            ModelsCmd::Unload { model, version } => {
                c(
                    M::POST,
                    format!("/models/{model}/versions/{version}/unload"),
                    None,
                )
                .await
            }
            ModelsCmd::Label {
                model,
                label,
                version,
            } => {
                c(
                    M::PUT,
                    format!("/models/{model}/labels/{label}"),
                    Some(json!({ "version": version })),
                )
                .await
            }
        },
        Command::Webhooks(w) => {
            let base = |t: &str| format!("/tenants/{t}/webhook_endpoints");
            match w {
                WebhooksCmd::Add {
                    tenant,
                    url,
                    name,
                    events,
                } => {
                    let events = if events.is_empty() {
                        [
                            "batch.completed",
                            "batch.failed",
                            "batch.expired",
                            "batch.cancelled",
                        ]
                        .map(String::from)
                        .to_vec()
                    } else {
                        events
                    };
                    let body = json!({"url": url, "name": name, "event_types": events});
                    c(M::POST, base(&tenant), Some(body)).await
                }
                WebhooksCmd::List { tenant } => c(M::GET, base(&tenant), None).await,
                WebhooksCmd::Show { tenant, id } => {
                    c(M::GET, format!("{}/{id}", base(&tenant)), None).await
                }
                WebhooksCmd::Update {
                    tenant,
                    id,
                    url,
                    name,
                    events,
                } => {
                    let events = (!events.is_empty()).then(|| json!(events));
                    let body = fields(&[
                        ("url", json!(url)),
                        ("name", json!(name)),
                        ("event_types", events.unwrap_or(Value::Null)),
                    ]);
                    c(M::POST, format!("{}/{id}", base(&tenant)), Some(body)).await
                }
                WebhooksCmd::Rotate {
                    tenant,
                    id,
                    keep_old,
                } => {
                    let body = json!({"keep_old_secret_active_for_24_hours": keep_old});
                    c(
                        M::POST,
                        format!("{}/{id}/rotate_secret", base(&tenant)),
                        Some(body),
                    )
                    .await
                }
                WebhooksCmd::Test { tenant, id, event } => {
                    let body = json!({ "event_type": event });
                    c(M::POST, format!("{}/{id}/test", base(&tenant)), Some(body)).await
                }
                WebhooksCmd::Deliveries { tenant, id, limit } => {
                    c(
                        M::GET,
                        format!("{}/{id}/deliveries?limit={limit}", base(&tenant)),
                        None,
                    )
                    .await
                }
                WebhooksCmd::Delete { tenant, id } => {
                    c(M::DELETE, format!("{}/{id}", base(&tenant)), None).await
                }
            }
        }
        Command::Usage { tenant, days } => {
            c(M::GET, format!("/tenants/{tenant}/usage?days={days}"), None).await
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(Value::Null) => {}
        Ok(v) => println!(
            "{}",
            serde_json::to_string_pretty(&v).unwrap_or_else(|_| v.to_string())
        ),
        Err(e) => {
            eprintln!("maasctl: {e:#}");
            std::process::exit(1);
        }
    }
}
