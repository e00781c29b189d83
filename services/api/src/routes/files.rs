//! The Files API, as OpenAI's: upload (multipart, streamed into the file
//! store), list, get, content (streamed), delete. A tenant sees only its own
//! files; any other id is a 404 on every route.

use crate::auth::Principal;
use crate::error::ApiError;
use crate::routes::resource;
use crate::state::AppState;
use actix_multipart::Multipart;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{Duration, Utc};
use futures_util::{StreamExt, TryStreamExt};
use maas_core::Code;
use maas_store::files::{self, FileRow, NewFile};
use serde::{Deserialize, Serialize};

pub fn config(cfg: &mut web::ServiceConfig) {
    cfg.service(
        resource("/v1/files")
            .route(web::post().to(upload))
            .route(web::get().to(list)),
    )
    .service(
        resource("/v1/files/{id}")
            .route(web::get().to(get))
            .route(web::delete().to(delete)),
    )
    .service(resource("/v1/files/{id}/content").route(web::get().to(content)));
}

/// Purposes a tenant may upload with.
const UPLOAD_PURPOSES: [&str; 1] = ["batch"];
/// Bounds of `expires_after[seconds]`: an hour to 30 days.
const EXPIRY_SECS: std::ops::RangeInclusive<i64> = 3600..=30 * 24 * 3600;

/// A file as OpenAI's client reads it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FileObject {
    pub id: String,
    /// Always `file`.
    pub object: &'static str,
    pub bytes: i64,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds; null: kept until deleted.
    pub expires_at: Option<i64>,
    pub filename: String,
    /// `batch` (uploaded) or `batch_output` (written by a batch).
    pub purpose: String,
    /// Always `processed` once stored.
    pub status: &'static str,
    pub status_details: Option<String>,
}

impl From<&FileRow> for FileObject {
    fn from(f: &FileRow) -> Self {
        Self {
            id: f.id.clone(),
            object: "file",
            bytes: f.bytes,
            created_at: f.created_at.timestamp(),
            expires_at: f.expires_at.map(|t| t.timestamp()),
            filename: f.filename.clone(),
            purpose: f.purpose.clone(),
            status: "processed",
            status_details: None,
        }
    }
}

fn file_not_found(id: &str) -> ApiError {
    ApiError::NotFound {
        message: format!("no such file: '{id}'"),
        code: Code::NotFound,
    }
}

/// A tenant's live file, or 404.
pub async fn tenant_file(
    state: &AppState,
    tenant: uuid::Uuid,
    id: &str,
) -> Result<FileRow, ApiError> {
    if !id.starts_with("file-") || id.len() > 64 {
        return Err(file_not_found(id));
    }
    files::get(&state.db, tenant, id)
        .await?
        .ok_or_else(|| file_not_found(id))
}

/// The limits in force for a tenant: its overrides, else the platform's.
pub struct Limits {
    pub max_file_bytes: i64,
    pub max_batch_lines: i64,
    pub max_stored_bytes: i64,
    pub max_batch_enqueued_tokens: i64,
}

pub async fn limits(state: &AppState, tenant: uuid::Uuid) -> Result<Limits, ApiError> {
    let o = files::limits(&state.db, tenant).await?;
    let s = &state.settings;
    Ok(Limits {
        max_file_bytes: o.max_file_bytes.unwrap_or(s.files_max_bytes),
        max_batch_lines: o.max_batch_lines.unwrap_or(s.batch_max_lines),
        max_stored_bytes: o.max_stored_bytes.unwrap_or(s.files_max_stored_bytes),
        max_batch_enqueued_tokens: o
            .max_batch_enqueued_tokens
            .unwrap_or(s.batch_max_enqueued_tokens),
    })
}

fn multipart_error(e: actix_multipart::MultipartError) -> ApiError {
    ApiError::invalid(format!("could not read the multipart body: {e}"), None)
}

/// A small form field's text (at most 1 KiB).
async fn field_text(field: &mut actix_multipart::Field, name: &str) -> Result<String, ApiError> {
    let mut buf = Vec::new();
    while let Some(chunk) = field.next().await {
        buf.extend_from_slice(&chunk.map_err(multipart_error)?);
        if buf.len() > 1024 {
            return Err(ApiError::invalid(format!("{name} is too long"), Some(name)));
        }
    }
    String::from_utf8(buf)
        .map_err(|_| ApiError::invalid(format!("{name} must be UTF-8 text"), Some(name)))
}

fn check_purpose(purpose: &str) -> Result<(), ApiError> {
    if UPLOAD_PURPOSES.contains(&purpose) {
        Ok(())
    } else {
        Err(ApiError::invalid(
            format!("purpose '{purpose}' is not supported here; files are uploaded with purpose 'batch'"),
            Some("purpose"),
        ))
    }
}

#[utoipa::path(post, path = "/v1/files", tag = "files", security(("api_key" = [])),
    request_body(content_type = "multipart/form-data", description = "Fields: file (a .jsonl file), purpose (batch), expires_after[anchor] (created_at), expires_after[seconds] (3600 to 2592000)"),
    responses(
        (status = 200, body = FileObject),
        (status = 400, body = crate::error::ErrorBody),
        (status = 413, description = "Larger than the tenant's file limit", body = crate::error::ErrorBody),
        (status = 429, description = "The tenant's storage is full", body = crate::error::ErrorBody),
    ))]
pub async fn upload(
    state: web::Data<AppState>,
    principal: Principal,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    principal.require("files", None)?;
    let limits = limits(&state, principal.tenant_id).await?;
    let mut form = Multipart::new(req.headers(), payload);
    let (mut purpose, mut anchor, mut seconds) = (None::<String>, None::<String>, None::<String>);
    let mut stored: Option<(files::Upload, String)> = None;
    while let Some(field) = form.next().await {
        let mut field = field.map_err(multipart_error)?;
        let Some(cd) = field.content_disposition().cloned() else {
            continue;
        };
        let name = cd.get_name().unwrap_or_default().to_owned();
        match name.as_str() {
            "purpose" => {
                let p = field_text(&mut field, "purpose").await?;
                check_purpose(&p)?;
                purpose = Some(p);
            }
            "expires_after[anchor]" => anchor = Some(field_text(&mut field, &name).await?),
            "expires_after[seconds]" => seconds = Some(field_text(&mut field, &name).await?),
            "file" => {
                if stored.is_some() {
                    return Err(ApiError::invalid("only one file per upload", Some("file")));
                }
                let filename = cd
                    .get_filename()
                    .map(str::to_owned)
                    .filter(|f| !f.is_empty())
                    .ok_or_else(|| {
                        ApiError::invalid("the file part has no filename", Some("file"))
                    })?;
                if filename.len() > 255 {
                    return Err(ApiError::invalid(
                        "filename is longer than 255 bytes",
                        Some("file"),
                    ));
                }
                let mut upload = state.files.begin(principal.tenant_id).await?;
                while let Some(chunk) = field.next().await {
                    let chunk = chunk.map_err(multipart_error)?;
                    if upload.bytes() + chunk.len() as u64 > limits.max_file_bytes as u64 {
                        return Err(ApiError::PayloadTooLarge {
                            limit: limits.max_file_bytes as usize,
                        });
                    }
                    upload.write(&chunk).await?;
                }
                stored = Some((upload, filename));
            }
            // Other fields are read and ignored, as unknown JSON fields
            // would not be: a client may send more than we use.
            _ => {
                while let Some(chunk) = field.next().await {
                    chunk.map_err(multipart_error)?;
                }
            }
        }
    }
    let purpose =
        purpose.ok_or_else(|| ApiError::invalid("purpose is required", Some("purpose")))?;
    let (upload, filename) = stored.ok_or_else(|| {
        ApiError::invalid(
            "file is required (a multipart part named 'file')",
            Some("file"),
        )
    })?;
    if purpose == "batch" && !filename.to_ascii_lowercase().ends_with(".jsonl") {
        return Err(ApiError::invalid(
            format!("a batch file must be JSONL with a .jsonl name; got '{filename}'"),
            Some("file"),
        ));
    }
    let expiry_secs = match (anchor.as_deref(), seconds.as_deref()) {
        (None, None) => state.settings.files_default_expiry_secs,
        (Some("created_at"), Some(s)) => {
            let s: i64 = s.trim().parse().map_err(|_| {
                ApiError::invalid(
                    "expires_after[seconds] must be an integer",
                    Some("expires_after[seconds]"),
                )
            })?;
            if !EXPIRY_SECS.contains(&s) {
                return Err(ApiError::invalid(
                    format!(
                        "expires_after[seconds] must be between {} and {}",
                        EXPIRY_SECS.start(),
                        EXPIRY_SECS.end()
                    ),
                    Some("expires_after[seconds]"),
                ));
            }
            s
        }
        (Some("created_at"), None) => {
            return Err(ApiError::invalid(
                "expires_after[seconds] is required with expires_after[anchor]",
                Some("expires_after[seconds]"),
            ))
        }
        (None, Some(_)) => {
            return Err(ApiError::invalid(
                "expires_after[anchor] is required with expires_after[seconds]",
                Some("expires_after[anchor]"),
            ))
        }
        (Some(a), _) => {
            return Err(ApiError::invalid(
                format!("expires_after[anchor] must be 'created_at'; got '{a}'"),
                Some("expires_after[anchor]"),
            ))
        }
    };
    let row = upload
        .finish(
            NewFile {
                tenant_id: principal.tenant_id,
                purpose,
                filename,
                expires_at: Some(Utc::now() + Duration::seconds(expiry_secs)),
            },
            Some(limits.max_stored_bytes),
        )
        .await?;
    tracing::info!(file = %row.id, bytes = row.bytes, lines = row.lines, store = %row.store, "file stored");
    Ok(HttpResponse::Ok().json(FileObject::from(&row)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// The id of the last file of the previous page.
    pub after: Option<String>,
    /// 1 to 10,000 (the default).
    pub limit: Option<i64>,
    /// `desc` (newest first, the default) or `asc`.
    pub order: Option<String>,
    /// Only files of this purpose.
    pub purpose: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct FileList {
    pub object: &'static str,
    pub data: Vec<FileObject>,
    pub first_id: Option<String>,
    pub last_id: Option<String>,
    pub has_more: bool,
}

#[utoipa::path(get, path = "/v1/files", tag = "files", security(("api_key" = [])), params(ListQuery),
    responses((status = 200, body = FileList), (status = 400, body = crate::error::ErrorBody)))]
pub async fn list(
    state: web::Data<AppState>,
    principal: Principal,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    principal.require("files", None)?;
    let limit = query.limit.unwrap_or(10_000);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::invalid(
            "limit must be between 1 and 10000",
            Some("limit"),
        ));
    }
    let ascending = match query.order.as_deref() {
        None | Some("desc") => false,
        Some("asc") => true,
        Some(o) => {
            return Err(ApiError::invalid(
                format!("order must be 'asc' or 'desc'; got '{o}'"),
                Some("order"),
            ))
        }
    };
    let mut rows = files::list(
        &state.db,
        principal.tenant_id,
        query.purpose.as_deref(),
        ascending,
        query.after.as_deref(),
        limit + 1,
    )
    .await?;
    let has_more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let data: Vec<FileObject> = rows.iter().map(FileObject::from).collect();
    Ok(HttpResponse::Ok().json(FileList {
        object: "list",
        first_id: data.first().map(|f| f.id.clone()),
        last_id: data.last().map(|f| f.id.clone()),
        has_more,
        data,
    }))
}

#[utoipa::path(get, path = "/v1/files/{id}", tag = "files", security(("api_key" = [])),
    params(("id" = String, Path, description = "File id")),
    responses((status = 200, body = FileObject), (status = 404, body = crate::error::ErrorBody)))]
pub async fn get(
    state: web::Data<AppState>,
    principal: Principal,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    principal.require("files", None)?;
    let row = tenant_file(&state, principal.tenant_id, &path).await?;
    Ok(HttpResponse::Ok().json(FileObject::from(&row)))
}

#[utoipa::path(get, path = "/v1/files/{id}/content", tag = "files", security(("api_key" = [])),
    params(("id" = String, Path, description = "File id")),
    responses((status = 200, description = "The file's bytes, streamed", content_type = "application/octet-stream"),
               (status = 404, body = crate::error::ErrorBody)))]
pub async fn content(
    state: web::Data<AppState>,
    principal: Principal,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    principal.require("files", None)?;
    let row = tenant_file(&state, principal.tenant_id, &path).await?;
    let body = state.files.open(&row).await?.map_err(|e| {
        tracing::warn!(error = %e, "file content stream failed");
        std::io::Error::other("the file store failed mid-stream")
    });
    Ok(HttpResponse::Ok()
        .content_type("application/octet-stream")
        .insert_header((
            actix_web::http::header::CONTENT_DISPOSITION,
            format!(
                "attachment; filename=\"{}\"",
                row.filename.replace(['"', '\\', '\r', '\n'], "_")
            ),
        ))
        .no_chunking(row.bytes as u64)
        .streaming(body))
}

#[utoipa::path(delete, path = "/v1/files/{id}", tag = "files", security(("api_key" = [])),
    params(("id" = String, Path, description = "File id")),
    responses((status = 200, description = "{id, object: file, deleted: true}"), (status = 404, body = crate::error::ErrorBody)))]
pub async fn delete(
    state: web::Data<AppState>,
    principal: Principal,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    principal.require("files", None)?;
    let row = tenant_file(&state, principal.tenant_id, &path).await?;
    if !state.files.delete(principal.tenant_id, &row.id).await? {
        return Err(file_not_found(&row.id));
    }
    Ok(HttpResponse::Ok()
        .json(serde_json::json!({"id": row.id, "object": "file", "deleted": true})))
}

/// Deletes expired files, every `every`, on every replica (each file is
/// taken by one).
pub async fn sweep_forever(store: files::FileStore, every: std::time::Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        loop {
            match store.sweep(500).await {
                Ok(n) if n > 0 => tracing::info!(deleted = n, "expired files deleted"),
                Ok(_) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "file sweep failed; next time");
                    break;
                }
            }
            // A full page: there may be more.
        }
    }
}
