//! OpenAI's Files API: `POST /v1/files` (multipart), `GET /v1/files`, `GET/DELETE
//! /v1/files/{id}`, `GET /v1/files/{id}/content`. Files belong to the caller's API key;
//! another key's file is not found.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::multipart::{Multipart, MultipartError, MultipartRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Extension, Json, Router};
use keel_limits::Caller;
use keel_rag::records::FileRecord;
use serde_json::{json, Value};

use super::rag::{list_body, list_query, rag, RagCaller};
use super::uploads::form_error;
use crate::error::ApiError;
use crate::AppState;

/// The purposes OpenAI accepts; only `assistants` files are searched, but all are stored.
const PURPOSES: &[&str] = &[
    "assistants",
    "batch",
    "fine-tune",
    "vision",
    "user_data",
    "evals",
];

pub fn routes(max_file_bytes: usize) -> Router<AppState> {
    Router::new()
        .route(
            "/v1/files",
            get(list).post(upload).layer(DefaultBodyLimit::max(
                max_file_bytes.saturating_add(64 * 1024),
            )),
        )
        .route("/v1/files/{id}", get(retrieve).delete(delete))
        .route("/v1/files/{id}/content", get(content))
}

pub(crate) fn file_object(f: &FileRecord) -> Value {
    json!({
        "id": f.id,
        "object": "file",
        "bytes": f.bytes,
        "created_at": f.created_at,
        "filename": f.filename,
        "purpose": f.purpose,
        "status": "processed",
        "expires_at": null,
        "status_details": null,
    })
}

fn too_large(max: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "file_too_large",
        format!("the file is larger than MAX_FILE_BYTES ({max} bytes)"),
    )
}

fn multipart_error(e: MultipartError, max: usize) -> ApiError {
    form_error(e, || too_large(max))
}

async fn upload(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    headers: HeaderMap,
    form: Result<Multipart, MultipartRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("multipart/form-data")
        });
    if !is_form {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "upload files as multipart/form-data with a file part and a purpose part",
        ));
    }
    // axum's own rejection is plain text: Keel answers in its JSON shape.
    let mut form = form.map_err(|r| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_multipart",
            r.body_text(),
        )
    })?;
    let RagCaller {
        rag,
        owner,
        max_file_bytes,
    } = rag(&state, caller)?;
    let (mut file, mut purpose): (Option<(String, Bytes)>, Option<String>) = (None, None);
    while let Some(field) = form
        .next_field()
        .await
        .map_err(|e| multipart_error(e, max_file_bytes))?
    {
        match field.name().unwrap_or_default() {
            "file" => {
                let name = field.file_name().unwrap_or("upload").to_owned();
                let bytes = field
                    .bytes()
                    .await
                    .map_err(|e| multipart_error(e, max_file_bytes))?;
                if bytes.len() > max_file_bytes {
                    return Err(too_large(max_file_bytes));
                }
                file = Some((name, bytes));
            }
            "purpose" => {
                purpose = Some(
                    field
                        .text()
                        .await
                        .map_err(|e| multipart_error(e, max_file_bytes))?,
                );
            }
            _ => {}
        }
    }
    let purpose = purpose.ok_or_else(|| ApiError::invalid("purpose: is required"))?;
    if !PURPOSES.contains(&purpose.as_str()) {
        return Err(ApiError::invalid(format!(
            "purpose: '{purpose}' is not one of {}",
            PURPOSES.join(", ")
        )));
    }
    let (filename, bytes) =
        file.ok_or_else(|| ApiError::invalid("file: is required (a multipart file field)"))?;
    if filename.chars().count() > 255 || filename.contains(['/', '\\', '\0']) {
        return Err(ApiError::invalid(
            "file: the file name must be at most 255 characters, with no path",
        ));
    }
    let record = rag
        .with_store(move |s| s.put_file(&owner, &filename, &purpose, &bytes))
        .await?;
    Ok(Json(file_object(&record)))
}

async fn list(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<impl IntoResponse, ApiError> {
    let RagCaller { rag, owner, .. } = rag(&state, caller)?;
    let q = list_query(&params, 10_000, 10_000)?;
    let purpose = params.get("purpose").cloned();
    let page = rag
        .with_store(move |s| s.list_files(&owner, purpose.as_deref(), &q))
        .await?;
    Ok(Json(list_body(
        page.items.iter().map(file_object).collect(),
        page.has_more,
    )))
}

async fn retrieve(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let RagCaller { rag, owner, .. } = rag(&state, caller)?;
    let record = rag.with_store(move |s| s.file(&owner, &id)).await?;
    Ok(Json(file_object(&record)))
}

async fn content(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let RagCaller { rag, owner, .. } = rag(&state, caller)?;
    let bytes = rag.with_store(move |s| s.file_bytes(&owner, &id)).await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes))
}

async fn delete(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let RagCaller { rag, owner, .. } = rag(&state, caller)?;
    let file_id = id.clone();
    rag.with_store(move |s| s.delete_file(&owner, &file_id))
        .await?;
    Ok(Json(json!({"id": id, "object": "file", "deleted": true})))
}
