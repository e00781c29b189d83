//! Redis caches shared by every replica: the API-key cache (so most requests
//! authenticate without Postgres) and hot job status (so polling rarely reaches
//! Postgres). Both are caches only: every entry can be rebuilt from Postgres,
//! and a Redis failure degrades to Postgres reads, never to an error.

use crate::jobs::Job;
use crate::keys::KeyAuth;
use crate::Result;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

const KEY_TTL_SECS: u64 = 60;
/// A finished job never changes: keep it for an hour of polling.
const FINISHED_JOB_TTL_SECS: u64 = 3600;
/// A live job's entry is short-lived, so a missed update heals quickly.
const LIVE_JOB_TTL_SECS: u64 = 10;

/// Stores a job only if it is newer than what is cached: concurrent writers
/// (api, scheduler, worker) can then never put an older state over a newer one.
const PUT_IF_NEWER: &str = r#"
local cur = redis.call('HGET', KEYS[1], 'v')
if cur and tonumber(cur) >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'job', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"#;

/// Token buckets, one per limit: `limit` per window, refilled continuously,
/// full at first use. KEYS are the buckets; ARGV = {cost, window, force,
/// limit of each bucket...}. Takes `cost` from every bucket if every one has
/// that many, and from none otherwise, so a refusal consumes nothing (with
/// force = 1 it always takes: settling actual usage; a bucket may go
/// negative). Redis's own clock, so every API replica sees one time. Returns,
/// per bucket, {taken, remaining, ms until full, ms until `cost` would fit}.
const TAKE: &str = r#"
local cost = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local force = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local levels = {}
local fits = true
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[3 + i])
  local b = redis.call('HMGET', key, 'tokens', 'ts')
  local tokens = tonumber(b[1])
  local ts = tonumber(b[2])
  if tokens == nil then tokens = limit; ts = now end
  tokens = math.min(limit, tokens + math.max(0, now - ts) * limit / window)
  levels[i] = tokens
  if tokens < cost then fits = false end
end
local taken = 0
if force == 1 or fits then taken = 1 end
local out = {}
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[3 + i])
  local rate = limit / window
  local tokens = levels[i]
  if taken == 1 then tokens = tokens - cost end
  redis.call('HSET', key, 'tokens', tostring(tokens), 'ts', tostring(now), 'limit', tostring(limit))
  redis.call('PEXPIRE', key, window * 2)
  local wait = 0
  if taken == 0 and tokens < cost then wait = math.ceil((cost - tokens) / rate) end
  table.insert(out, taken)
  table.insert(out, math.floor(math.max(tokens, 0)))
  table.insert(out, math.ceil((limit - tokens) / rate))
  table.insert(out, wait)
end
return out
"#;

/// Settles usage into the buckets that still exist, with the limit each was
/// last taken under: ARGV = {tokens to take (negative gives back), window}.
const SETTLE: &str = r#"
local delta = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for _, key in ipairs(KEYS) do
  local b = redis.call('HMGET', key, 'tokens', 'ts', 'limit')
  local tokens, ts, limit = tonumber(b[1]), tonumber(b[2]), tonumber(b[3])
  if tokens ~= nil and limit ~= nil then
    tokens = math.min(limit, tokens + math.max(0, now - ts) * limit / window) - delta
    redis.call('HSET', key, 'tokens', tostring(math.min(limit, tokens)), 'ts', tostring(now))
    redis.call('PEXPIRE', key, window * 2)
  end
end
return 1
"#;

/// Every rate limit is per minute.
pub const RATE_WINDOW_MS: u64 = 60_000;

/// The bucket of a tenant's limit of `kind` (`requests` or `tokens`).
pub fn tenant_bucket(tenant_id: Uuid, kind: &str) -> String {
    format!("{tenant_id}:{kind}")
}

/// The bucket of a key's own limit of `kind`.
pub fn key_bucket(key_id: Uuid, kind: &str) -> String {
    format!("key:{key_id}:{kind}")
}

/// What a rate-limit check decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateDecision {
    pub taken: bool,
    pub limit: u64,
    pub remaining: u64,
    /// Until the bucket is full again.
    pub reset_ms: u64,
    /// Until this cost would fit (0 when taken).
    pub retry_after_ms: u64,
}

#[derive(Clone)]
pub struct Cache {
    client: redis::Client,
    /// Made on first use, then kept: the manager reconnects by itself, so a
    /// Redis restart costs the calls made while it is down, nothing more.
    conn: Arc<tokio::sync::OnceCell<ConnectionManager>>,
    ns: String,
    put_if_newer: redis::Script,
    take: redis::Script,
    settle: redis::Script,
}

impl Cache {
    /// A cache on `url` (a `/N` database index is honoured); all keys start
    /// with `<namespace>:`. Connects on first use, so a service starts (and
    /// serves from Postgres) while Redis is away; only a malformed URL fails.
    pub fn new(url: &str, namespace: &str) -> Result<Self> {
        let client = redis::Client::open(url)?;
        Ok(Self {
            client,
            conn: Arc::new(tokio::sync::OnceCell::new()),
            ns: namespace.to_owned(),
            put_if_newer: redis::Script::new(PUT_IF_NEWER),
            take: redis::Script::new(TAKE),
            settle: redis::Script::new(SETTLE),
        })
    }

    /// [`Cache::new`], then one try to connect (a failure is only logged).
    pub async fn connect(url: &str, namespace: &str) -> Result<Self> {
        let cache = Self::new(url, namespace)?;
        if let Err(e) = cache.conn().await {
            tracing::warn!(error = %e, "Redis unreachable; serving without it until it is back");
        }
        Ok(cache)
    }

    async fn conn(&self) -> Result<ConnectionManager> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1);
        let client = &self.client;
        Ok(self
            .conn
            .get_or_try_init(|| client.get_connection_manager_with_config(config))
            .await?
            .clone())
    }

    /// Takes `cost` from every bucket of `limits` ((name, limit per
    /// `window_ms`)) or from none, in one atomic script; with `force` it
    /// always takes. One decision per bucket, in order.
    pub async fn rate_take(
        &self,
        limits: &[(String, u64)],
        cost: i64,
        window_ms: u64,
        force: bool,
    ) -> Result<Vec<RateDecision>> {
        if limits.is_empty() {
            return Ok(Vec::new());
        }
        let mut c = self.conn().await?;
        let mut inv = self.take.prepare_invoke();
        for (name, _) in limits {
            inv.key(format!("{}:ratelimit:{name}", self.ns));
        }
        inv.arg(cost).arg(window_ms).arg(i64::from(force));
        for (_, limit) in limits {
            inv.arg(*limit);
        }
        let flat: Vec<i64> = inv.invoke_async(&mut c).await?;
        Ok(flat
            .chunks_exact(4)
            .zip(limits)
            .map(|(v, (_, limit))| RateDecision {
                taken: v[0] == 1,
                limit: *limit,
                remaining: v[1].max(0) as u64,
                reset_ms: v[2].max(0) as u64,
                retry_after_ms: v[3].max(0) as u64,
            })
            .collect())
    }

    /// Takes `delta` more tokens (or gives `-delta` back) from the buckets
    /// that still exist: settling an estimate with actual usage.
    pub async fn rate_settle(&self, buckets: &[String], delta: i64, window_ms: u64) -> Result<()> {
        if buckets.is_empty() || delta == 0 {
            return Ok(());
        }
        let mut c = self.conn().await?;
        let mut inv = self.settle.prepare_invoke();
        for name in buckets {
            inv.key(format!("{}:ratelimit:{name}", self.ns));
        }
        let _: i64 = inv.arg(delta).arg(window_ms).invoke_async(&mut c).await?;
        Ok(())
    }

    pub async fn ping(&self) -> Result<()> {
        let mut c = self.conn().await?;
        let _: String = redis::cmd("PING").query_async(&mut c).await?;
        Ok(())
    }

    fn key_key(&self, prefix: &str) -> String {
        format!("{}:apikey:{prefix}", self.ns)
    }

    fn job_key(&self, id: Uuid) -> String {
        format!("{}:job:{id}", self.ns)
    }

    pub async fn get_key(&self, prefix: &str) -> Result<Option<KeyAuth>> {
        let mut c = self.conn().await?;
        let raw: Option<String> = redis::cmd("GET")
            .arg(self.key_key(prefix))
            .query_async(&mut c)
            .await?;
        Ok(raw.and_then(|s| serde_json::from_str(&s).ok()))
    }

    /// Fills the cache after a miss. `NX`: a reader holding an older copy of
    /// the row can never overwrite what an admin change wrote meanwhile.
    pub async fn fill_key(&self, prefix: &str, auth: &KeyAuth) -> Result<()> {
        let mut c = self.conn().await?;
        let body = serde_json::to_string(auth).unwrap_or_default();
        let _: Option<String> = redis::cmd("SET")
            .arg(self.key_key(prefix))
            .arg(body)
            .arg("EX")
            .arg(KEY_TTL_SECS)
            .arg("NX")
            .query_async(&mut c)
            .await?;
        Ok(())
    }

    /// Writes a key's new state after an admin change (revocation, tenant
    /// disabled), replacing whatever was cached, so every replica sees the
    /// change on its next request. Kept twice as long as a fill, so a fill
    /// racing with the change finds it and backs off.
    pub async fn replace_key(&self, prefix: &str, auth: &KeyAuth) -> Result<()> {
        let mut c = self.conn().await?;
        let body = serde_json::to_string(auth).unwrap_or_default();
        let _: () = redis::cmd("SET")
            .arg(self.key_key(prefix))
            .arg(body)
            .arg("EX")
            .arg(2 * KEY_TTL_SECS)
            .query_async(&mut c)
            .await?;
        Ok(())
    }

    pub async fn put_job(&self, job: &Job) -> Result<()> {
        let mut c = self.conn().await?;
        let body = serde_json::to_string(job).unwrap_or_default();
        let finished = job.status.is_terminal();
        let ttl = if finished {
            FINISHED_JOB_TTL_SECS
        } else {
            LIVE_JOB_TTL_SECS
        };
        let _: i64 = self
            .put_if_newer
            .key(self.job_key(job.id))
            .arg(job.version)
            .arg(body)
            .arg(ttl)
            .invoke_async(&mut c)
            .await?;
        Ok(())
    }

    pub async fn get_job(&self, id: Uuid) -> Result<Option<Job>> {
        let mut c = self.conn().await?;
        let raw: Option<String> = redis::cmd("HGET")
            .arg(self.job_key(id))
            .arg("job")
            .query_async(&mut c)
            .await?;
        Ok(raw.and_then(|s| serde_json::from_str(&s).ok()))
    }

    /// Best-effort write used after a committed transition: a failure is logged,
    /// since the next read falls back to Postgres.
    pub async fn put_job_logged(&self, job: &Job) {
        if let Err(e) = self.put_job(job).await {
            tracing::warn!(job_id = %job.id, error = %e, "could not update job status cache; dropping the entry");
            if let Ok(mut c) = self.conn().await {
                let _: Result<(), _> = redis::cmd("DEL")
                    .arg(self.job_key(job.id))
                    .query_async(&mut c)
                    .await;
            }
        }
    }
}
