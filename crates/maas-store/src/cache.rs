//! Redis caches shared by every replica: the API-key cache (so most requests
//! authenticate without Postgres) and hot job status (so polling rarely reaches
//! Postgres). Both are caches only: every entry can be rebuilt from Postgres,
//! and a Redis failure degrades to Postgres reads, never to an error.

use crate::jobs::Job;
use crate::keys::KeyAuth;
use crate::Result;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
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

#[derive(Clone)]
pub struct Cache {
    conn: ConnectionManager,
    ns: String,
    put_if_newer: redis::Script,
}

impl Cache {
    /// Connects to `url` (a `/N` database index is honoured); all keys start with `<namespace>:`.
    pub async fn connect(url: &str, namespace: &str) -> Result<Self> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2);
        let conn = client.get_connection_manager_with_config(config).await?;
        Ok(Self { conn, ns: namespace.to_owned(), put_if_newer: redis::Script::new(PUT_IF_NEWER) })
    }

    pub async fn ping(&self) -> Result<()> {
        let mut c = self.conn.clone();
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
        let mut c = self.conn.clone();
        let raw: Option<String> = redis::cmd("GET").arg(self.key_key(prefix)).query_async(&mut c).await?;
        Ok(raw.and_then(|s| serde_json::from_str(&s).ok()))
    }

    /// Fills the cache after a miss. `NX`: a reader holding an older copy of
    /// the row can never overwrite what an admin change wrote meanwhile.
    pub async fn fill_key(&self, prefix: &str, auth: &KeyAuth) -> Result<()> {
        let mut c = self.conn.clone();
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
        let mut c = self.conn.clone();
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
        let mut c = self.conn.clone();
        let body = serde_json::to_string(job).unwrap_or_default();
        let finished = maas_core::JobStatus::parse(&job.status).is_some_and(|s| s.is_terminal());
        let ttl = if finished { FINISHED_JOB_TTL_SECS } else { LIVE_JOB_TTL_SECS };
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
        let mut c = self.conn.clone();
        let raw: Option<String> = redis::cmd("HGET").arg(self.job_key(id)).arg("job").query_async(&mut c).await?;
        Ok(raw.and_then(|s| serde_json::from_str(&s).ok()))
    }

    /// Best-effort write used after a committed transition: a failure is logged,
    /// since the next read falls back to Postgres.
    pub async fn put_job_logged(&self, job: &Job) {
        if let Err(e) = self.put_job(job).await {
            tracing::warn!(job_id = %job.id, error = %e, "could not update job status cache; dropping the entry");
            let mut c = self.conn.clone();
            let _: Result<(), _> = redis::cmd("DEL").arg(self.job_key(job.id)).query_async(&mut c).await;
        }
    }
}
