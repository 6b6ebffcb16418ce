//! OpenAI's vector-store file batches: attach many files in one request, follow them with
//! one status, cancel what has not finished. The batch is a view over the attachments it
//! made (see `keel_store_sqlite::batches`), so its counts never drift from the files' own.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use keel_limits::Caller;
use keel_rag::records::{Attach, BatchRecord};
use serde::Deserialize;
use serde_json::{json, Value};

use super::rag::{rag, RagCaller};
use super::vector_stores::{attributes, file_list, file_list_query, poll_headers, strategy};
use crate::error::ApiError;
use crate::json::JsonBody;
use crate::AppState;

/// Files one batch may attach. Ten thousand ids are about half a megabyte of JSON, and
/// attaching them is one transaction of cached inserts.
pub const MAX_BATCH_FILES: usize = 10_000;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/vector_stores/{id}/file_batches", post(create_batch))
        .route(
            "/v1/vector_stores/{id}/file_batches/{batch_id}",
            get(retrieve_batch),
        )
        .route(
            "/v1/vector_stores/{id}/file_batches/{batch_id}/cancel",
            post(cancel_batch),
        )
        .route(
            "/v1/vector_stores/{id}/file_batches/{batch_id}/files",
            get(list_batch_files),
        )
}

fn batch_object(b: &BatchRecord) -> Value {
    let c = b.file_counts;
    json!({
        "id": b.id,
        "object": "vector_store.files_batch",
        "created_at": b.created_at,
        "vector_store_id": b.store_id,
        "status": b.status(),
        "file_counts": {
            "in_progress": c.in_progress, "completed": c.completed, "failed": c.failed,
            "cancelled": c.cancelled, "total": c.total(),
        },
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBatch {
    file_ids: Option<Vec<String>>,
    files: Option<Vec<BatchFile>>,
    attributes: Option<Value>,
    chunking_strategy: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchFile {
    file_id: String,
    attributes: Option<Value>,
    chunking_strategy: Option<Value>,
}

/// The attachments a batch request asks for: `file_ids` share the request's attributes and
/// strategy; each of `files` may set its own.
fn attachments(rag: &RagCaller, req: CreateBatch) -> Result<Vec<Attach>, ApiError> {
    let shared_attributes = attributes(req.attributes.as_ref(), "attributes")?;
    let shared = strategy(rag, req.chunking_strategy.as_ref(), "chunking_strategy")?;
    let attach: Vec<Attach> = match (req.file_ids, req.files) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "file_ids, files: give one of them, not both",
            ))
        }
        (None, None) => return Err(ApiError::invalid("file_ids: required (or files)")),
        (Some(ids), None) => {
            check_count(ids.len(), "file_ids")?;
            ids.into_iter()
                .map(|file_id| Attach {
                    file_id,
                    attributes: shared_attributes.clone(),
                    strategy: shared,
                })
                .collect()
        }
        (None, Some(files)) => {
            check_count(files.len(), "files")?;
            files
                .into_iter()
                .enumerate()
                .map(|(i, f)| {
                    Ok(Attach {
                        attributes: match &f.attributes {
                            None => shared_attributes.clone(),
                            Some(a) => attributes(Some(a), &format!("files[{i}].attributes"))?,
                        },
                        strategy: match &f.chunking_strategy {
                            None => shared,
                            Some(s) => {
                                strategy(rag, Some(s), &format!("files[{i}].chunking_strategy"))?
                            }
                        },
                        file_id: f.file_id,
                    })
                })
                .collect::<Result<_, ApiError>>()?
        }
    };
    Ok(attach)
}

fn check_count(n: usize, field: &str) -> Result<(), ApiError> {
    if n == 0 {
        return Err(ApiError::invalid(format!("{field}: at least one file")));
    }
    if n > MAX_BATCH_FILES {
        return Err(ApiError::invalid(format!(
            "{field}: at most {MAX_BATCH_FILES} files per batch, got {n}"
        )));
    }
    Ok(())
}

async fn create_batch(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<CreateBatch>,
) -> Result<impl IntoResponse, ApiError> {
    let rag = rag(&state, caller)?;
    let attach = attachments(&rag, req)?;
    let owner = rag.owner.clone();
    let batch = rag
        .rag
        .with_store(move |s| s.create_batch(&owner, &id, &attach))
        .await?;
    rag.rag.notify();
    Ok((
        poll_headers(batch.file_counts.in_progress > 0),
        Json(batch_object(&batch)),
    ))
}

async fn retrieve_batch(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    Path((id, batch_id)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let RagCaller { rag, owner, .. } = rag(&state, caller)?;
    let batch = rag
        .with_store(move |s| s.batch(&owner, &id, &batch_id))
        .await?;
    Ok((
        poll_headers(batch.file_counts.in_progress > 0),
        Json(batch_object(&batch)),
    ))
}

async fn cancel_batch(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    Path((id, batch_id)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let RagCaller { rag, owner, .. } = rag(&state, caller)?;
    let batch = rag
        .with_store(move |s| s.cancel_batch(&owner, &id, &batch_id))
        .await?;
    Ok(Json(batch_object(&batch)))
}

async fn list_batch_files(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    Path((id, batch_id)): Path<(String, String)>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<impl IntoResponse, ApiError> {
    let RagCaller { rag, owner, .. } = rag(&state, caller)?;
    let (q, status) = file_list_query(&params)?;
    let page = rag
        .with_store(move |s| s.list_batch_files(&owner, &id, &batch_id, status, &q))
        .await?;
    Ok(file_list(&page))
}
