//! Files of the Batch API: their rows, and their content in one of two
//! stores shared by every API replica, chosen by one setting
//! (`MAAS_FILE_STORE`):
//!
//! - `postgres` (the default): chunks of up to 1 MiB in `file_chunks`,
//!   written in the same transaction as the file's row;
//! - an object store URL (`s3://bucket/prefix`, with the usual `AWS_*`
//!   variables for the endpoint and credentials; or `file:///dir` for a
//!   single host): one object per file, written by multipart upload.
//!
//! Content is streamed both ways: an upload holds at most one chunk in
//! memory, a download reads one chunk at a time.

use crate::{Result, StoreError};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::stream::{self, BoxStream, StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::ObjectStore;
use object_store::ObjectStoreExt;
use sha2::{Digest, Sha256};
use sqlx::{PgPool, Postgres, Transaction};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

/// Bytes per chunk in the Postgres store.
pub const CHUNK_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct FileRow {
    pub id: String,
    pub tenant_id: Uuid,
    pub purpose: String,
    pub filename: String,
    pub bytes: i64,
    pub lines: i64,
    pub sha256: String,
    pub store: String,
    pub object_key: Option<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str =
    "id, tenant_id, purpose, filename, bytes, lines, sha256, store, object_key, created_at, expires_at";

/// What a new file's row holds besides its content's size and checksum.
#[derive(Debug, Clone)]
pub struct NewFile {
    pub tenant_id: Uuid,
    pub purpose: String,
    pub filename: String,
    pub expires_at: Option<DateTime<Utc>>,
}

/// A new file id: `file-` and 32 hex digits.
pub fn new_id() -> String {
    format!("file-{}", Uuid::new_v4().simple())
}

#[derive(Clone)]
enum Backend {
    Postgres,
    Object {
        store: Arc<dyn ObjectStore>,
        prefix: ObjectPath,
    },
}

/// Where file content lives (see the module's documentation).
#[derive(Clone)]
pub struct FileStore {
    db: PgPool,
    backend: Backend,
}

impl std::fmt::Debug for FileStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind())
    }
}

impl FileStore {
    /// The store a setting names: `postgres`, or an object store URL
    /// (`s3://…`, `file:///…`, `memory:///`).
    pub fn from_setting(db: PgPool, setting: &str) -> std::result::Result<Self, String> {
        let setting = setting.trim();
        if setting.is_empty() || setting == "postgres" {
            return Ok(Self {
                db,
                backend: Backend::Postgres,
            });
        }
        let url = url::Url::parse(setting).map_err(|e| {
            format!("MAAS_FILE_STORE '{setting}' is neither 'postgres' nor a URL: {e}")
        })?;
        // Options come from the environment (AWS_ENDPOINT, AWS_ACCESS_KEY_ID,
        // AWS_ALLOW_HTTP, …), as each backend's own documentation says.
        let env: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| k.starts_with("AWS_"))
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        if url.scheme() == "file" {
            // The local backend wants the directory to exist.
            std::fs::create_dir_all(url.path())
                .map_err(|e| format!("MAAS_FILE_STORE: cannot create {}: {e}", url.path()))?;
        }
        let (store, prefix) = object_store::parse_url_opts(&url, env)
            .map_err(|e| format!("MAAS_FILE_STORE '{setting}': {e}"))?;
        Ok(Self {
            db,
            backend: Backend::Object {
                store: Arc::from(store),
                prefix,
            },
        })
    }

    /// `postgres` or `object`: what the rows of files written here record.
    pub fn kind(&self) -> &'static str {
        match self.backend {
            Backend::Postgres => "postgres",
            Backend::Object { .. } => "object",
        }
    }

    fn object_path(prefix: &ObjectPath, key: &str) -> ObjectPath {
        prefix.clone().join(key)
    }

    /// Starts writing a new file's content.
    pub async fn begin(&self, tenant_id: Uuid) -> Result<Upload> {
        let id = new_id();
        let sink = match &self.backend {
            Backend::Postgres => Sink::Postgres {
                tx: self.db.begin().await?,
                seq: 0,
            },
            Backend::Object { store, prefix } => {
                let key = format!("{tenant_id}/{id}");
                let path = Self::object_path(prefix, &key);
                Sink::Object {
                    writer: Box::new(object_store::buffered::BufWriter::new(
                        store.clone(),
                        path.clone(),
                    )),
                    store: store.clone(),
                    path,
                    key,
                }
            }
        };
        Ok(Upload {
            id,
            db: self.db.clone(),
            sink,
            buf: Vec::with_capacity(CHUNK_BYTES),
            bytes: 0,
            newlines: 0,
            last: None,
            hasher: Sha256::new(),
        })
    }

    /// The file's content, a chunk at a time.
    pub async fn open(&self, file: &FileRow) -> Result<BoxStream<'static, Result<Bytes>>> {
        match (&self.backend, file.store.as_str(), &file.object_key) {
            (_, "postgres", _) => {
                let (db, id) = (self.db.clone(), file.id.clone());
                Ok(stream::try_unfold(0i32, move |seq| {
                    let (db, id) = (db.clone(), id.clone());
                    async move {
                        let row: Option<(Vec<u8>,)> = sqlx::query_as(
                            "SELECT data FROM file_chunks WHERE file_id = $1 AND seq = $2",
                        )
                        .bind(&id)
                        .bind(seq)
                        .fetch_optional(&db)
                        .await?;
                        Ok(row.map(|(data,)| (Bytes::from(data), seq + 1)))
                    }
                })
                .boxed())
            }
            (Backend::Object { store, prefix }, "object", Some(key)) => {
                let got = store
                    .get(&Self::object_path(prefix, key))
                    .await
                    .map_err(|e| StoreError::Object(e.to_string()))?;
                Ok(got
                    .into_stream()
                    .map_err(|e| StoreError::Object(e.to_string()))
                    .boxed())
            }
            _ => Err(StoreError::Object(format!(
                "file {} is in the {} store, which this service is not configured for",
                file.id, file.store
            ))),
        }
    }

    /// Deletes a file of the tenant: its row at once, then its object.
    /// Whether it existed.
    pub async fn delete(&self, tenant_id: Uuid, id: &str) -> Result<bool> {
        let row = sqlx::query_as::<_, FileRow>(&format!(
            "DELETE FROM files WHERE id = $1 AND tenant_id = $2 RETURNING {COLUMNS}"
        ))
        .bind(id)
        .bind(tenant_id)
        .fetch_optional(&self.db)
        .await?;
        match row {
            Some(row) => {
                self.delete_object(&row).await;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn delete_object(&self, row: &FileRow) {
        if let (Backend::Object { store, prefix }, Some(key)) = (&self.backend, &row.object_key) {
            if let Err(e) = store.delete(&Self::object_path(prefix, key)).await {
                tracing::warn!(file = %row.id, error = %e, "could not delete the file's object");
            }
        }
    }

    /// Deletes up to `limit` expired files (any tenant's); how many. Safe on
    /// several replicas at once (each row is taken by one).
    pub async fn sweep(&self, limit: i64) -> Result<u64> {
        let rows = sqlx::query_as::<_, FileRow>(&format!(
            "DELETE FROM files WHERE id IN (
                 SELECT id FROM files WHERE expires_at <= now()
                 ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED)
             RETURNING {COLUMNS}"
        ))
        .bind(limit)
        .fetch_all(&self.db)
        .await?;
        for row in &rows {
            self.delete_object(row).await;
        }
        Ok(rows.len() as u64)
    }
}

enum Sink {
    Postgres {
        tx: Transaction<'static, Postgres>,
        seq: i32,
    },
    Object {
        writer: Box<object_store::buffered::BufWriter>,
        store: Arc<dyn ObjectStore>,
        path: ObjectPath,
        key: String,
    },
}

/// A file being written: [`Upload::write`] its bytes, then
/// [`Upload::finish`]. Dropped unfinished, it leaves nothing (the
/// transaction rolls back; an unfinished multipart upload is never visible).
pub struct Upload {
    id: String,
    db: PgPool,
    sink: Sink,
    buf: Vec<u8>,
    bytes: u64,
    newlines: u64,
    last: Option<u8>,
    hasher: Sha256,
}

impl Upload {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub async fn write(&mut self, mut data: &[u8]) -> Result<()> {
        self.bytes += data.len() as u64;
        self.newlines += data.iter().filter(|&&b| b == b'\n').count() as u64;
        if let Some(&b) = data.last() {
            self.last = Some(b);
        }
        self.hasher.update(data);
        while !data.is_empty() {
            let room = CHUNK_BYTES - self.buf.len();
            let (now, rest) = data.split_at(room.min(data.len()));
            self.buf.extend_from_slice(now);
            data = rest;
            if self.buf.len() == CHUNK_BYTES {
                self.flush().await?;
            }
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        match &mut self.sink {
            Sink::Postgres { tx, seq } => {
                sqlx::query("INSERT INTO file_chunks (file_id, seq, data) VALUES ($1, $2, $3)")
                    .bind(&self.id)
                    .bind(*seq)
                    .bind(&self.buf[..])
                    .execute(&mut **tx)
                    .await?;
                *seq += 1;
            }
            Sink::Object { writer, .. } => {
                writer
                    .write_all(&self.buf)
                    .await
                    .map_err(|e| StoreError::Object(e.to_string()))?;
            }
        }
        self.buf.clear();
        Ok(())
    }

    /// Stores the file's row. With `max_stored`, refuses (and removes the
    /// content) when the tenant's files would then take more bytes than
    /// that: checked under a per-tenant lock, so concurrent uploads cannot
    /// pass the limit together.
    pub async fn finish(mut self, meta: NewFile, max_stored: Option<i64>) -> Result<FileRow> {
        self.flush().await?;
        let lines = self.newlines + u64::from(self.last.is_some_and(|b| b != b'\n'));
        let sha256 = hex::encode(self.hasher.finalize_reset());
        let (mut tx, store, key, object) = match self.sink {
            Sink::Postgres { tx, .. } => (tx, "postgres", None, None),
            Sink::Object {
                mut writer,
                store,
                path,
                key,
            } => {
                writer
                    .shutdown()
                    .await
                    .map_err(|e| StoreError::Object(e.to_string()))?;
                (
                    self.db.begin().await?,
                    "object",
                    Some(key),
                    Some((store, path)),
                )
            }
        };
        let result = async {
            if let Some(max) = max_stored {
                sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1::text, 7311))")
                    .bind(meta.tenant_id)
                    .execute(&mut *tx)
                    .await?;
                let (used,): (i64,) =
                    sqlx::query_as("SELECT coalesce(sum(bytes), 0)::bigint FROM files WHERE tenant_id = $1")
                        .bind(meta.tenant_id)
                        .fetch_one(&mut *tx)
                        .await?;
                if used + self.bytes as i64 > max {
                    return Err(StoreError::StorageFull { limit: max, used });
                }
            }
            let row = sqlx::query_as::<_, FileRow>(&format!(
                "INSERT INTO files (id, tenant_id, purpose, filename, bytes, lines, sha256, store, object_key, expires_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING {COLUMNS}"
            ))
            .bind(&self.id)
            .bind(meta.tenant_id)
            .bind(&meta.purpose)
            .bind(&meta.filename)
            .bind(self.bytes as i64)
            .bind(lines as i64)
            .bind(&sha256)
            .bind(store)
            .bind(&key)
            .bind(meta.expires_at)
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(row)
        }
        .await;
        if result.is_err() {
            if let Some((store, path)) = object {
                if let Err(e) = store.delete(&path).await {
                    tracing::warn!(error = %e, "could not remove a refused upload's object");
                }
            }
        }
        result
    }
}

/// A tenant's live file (not expired), or `None`.
pub async fn get(db: &PgPool, tenant_id: Uuid, id: &str) -> Result<Option<FileRow>> {
    Ok(sqlx::query_as::<_, FileRow>(&format!(
        "SELECT {COLUMNS} FROM files
         WHERE id = $1 AND tenant_id = $2 AND (expires_at IS NULL OR expires_at > now())"
    ))
    .bind(id)
    .bind(tenant_id)
    .fetch_optional(db)
    .await?)
}

/// A page of the tenant's live files, newest first (or oldest first with
/// `ascending`), after the file `after` in that order.
pub async fn list(
    db: &PgPool,
    tenant_id: Uuid,
    purpose: Option<&str>,
    ascending: bool,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<FileRow>> {
    let (cmp, order) = if ascending {
        (">", "ASC")
    } else {
        ("<", "DESC")
    };
    Ok(sqlx::query_as::<_, FileRow>(&format!(
        "SELECT {COLUMNS} FROM files f
         WHERE tenant_id = $1 AND (expires_at IS NULL OR expires_at > now())
           AND ($2::text IS NULL OR purpose = $2)
           AND ($3::text IS NULL OR (created_at, id) {cmp}
                (SELECT created_at, id FROM files WHERE id = $3 AND tenant_id = $1))
         ORDER BY created_at {order}, id {order} LIMIT $4"
    ))
    .bind(tenant_id)
    .bind(purpose)
    .bind(after)
    .bind(limit)
    .fetch_all(db)
    .await?)
}

/// A tenant's overrides of the platform's file limits (`None`: the
/// platform's default).
#[derive(
    Debug,
    Clone,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    sqlx::FromRow,
    utoipa::ToSchema,
)]
#[serde(deny_unknown_fields)]
pub struct FileLimits {
    /// Largest file, in bytes.
    pub max_file_bytes: Option<i64>,
    /// Most lines (requests) in one batch.
    pub max_batch_lines: Option<i64>,
    /// Most bytes of all the tenant's files together.
    pub max_stored_bytes: Option<i64>,
    /// Most tokens (the sum of each line's bound) the tenant's unfinished
    /// batch lines may hold.
    pub max_batch_enqueued_tokens: Option<i64>,
}

pub async fn limits(db: &PgPool, tenant_id: Uuid) -> Result<FileLimits> {
    Ok(sqlx::query_as::<_, FileLimits>(
        "SELECT max_file_bytes, max_batch_lines, max_stored_bytes, max_batch_enqueued_tokens FROM file_limits WHERE tenant_id = $1",
    )
    .bind(tenant_id)
    .fetch_optional(db)
    .await?
    .unwrap_or_default())
}

/// Replaces the tenant's overrides.
pub async fn put_limits(db: &PgPool, tenant_id: Uuid, l: &FileLimits) -> Result<FileLimits> {
    Ok(sqlx::query_as::<_, FileLimits>(
        "INSERT INTO file_limits (tenant_id, max_file_bytes, max_batch_lines, max_stored_bytes, max_batch_enqueued_tokens, updated_at)
         VALUES ($1, $2, $3, $4, $5, now())
         ON CONFLICT (tenant_id) DO UPDATE SET max_file_bytes = $2, max_batch_lines = $3,
             max_stored_bytes = $4, max_batch_enqueued_tokens = $5, updated_at = now()
         RETURNING max_file_bytes, max_batch_lines, max_stored_bytes, max_batch_enqueued_tokens",
    )
    .bind(tenant_id)
    .bind(l.max_file_bytes)
    .bind(l.max_batch_lines)
    .bind(l.max_stored_bytes)
    .bind(l.max_batch_enqueued_tokens)
    .fetch_one(db)
    .await?)
}
