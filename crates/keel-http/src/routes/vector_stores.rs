//! OpenAI's vector stores: the stores, the files attached to them (with their ingestion
//! status), and search. Attaching only queues the file; the workers of
//! [`keel_retrieval::Retrieval`] ingest it, and a GET shows its status meanwhile, with
//! `openai-poll-after-ms` telling the SDK's `poll` helpers how soon to ask again.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use keel_limits::Caller;
use keel_rag::filter::parse_attributes;
use keel_rag::records::{Attach, IngestStatus, ListQuery, Page, StoreFileRecord, StoreRecord};
use keel_rag::{Attributes, ChunkStrategy, Filter};
use keel_retrieval::SearchRequest;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::rag::{list_body, list_query, rag, RagCaller};
use crate::error::ApiError;
use crate::json::JsonBody;
use crate::AppState;

/// How soon the SDK's polling helpers should ask again while a file is in progress.
const POLL_AFTER_MS: &str = "200";
const MAX_METADATA: usize = 16;
/// Files one request may attach.
const MAX_FILES_PER_REQUEST: usize = 500;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/vector_stores", get(list_stores).post(create_store))
        .route(
            "/v1/vector_stores/{id}",
            get(retrieve_store).post(update_store).delete(delete_store),
        )
        .route(
            "/v1/vector_stores/{id}/files",
            get(list_files).post(attach_file),
        )
        .route(
            "/v1/vector_stores/{id}/files/{file_id}",
            get(retrieve_file).post(update_file).delete(detach_file),
        )
        .route("/v1/vector_stores/{id}/search", post(search))
}

fn store_object(s: &StoreRecord) -> Value {
    let c = s.file_counts;
    json!({
        "id": s.id,
        "object": "vector_store",
        "created_at": s.created_at,
        "name": s.name,
        "description": null,
        "usage_bytes": s.usage_bytes,
        "file_counts": {
            "in_progress": c.in_progress, "completed": c.completed, "failed": c.failed,
            "cancelled": c.cancelled, "total": c.total(),
        },
        "status": if c.in_progress > 0 { "in_progress" } else { "completed" },
        "last_active_at": s.last_active_at,
        "metadata": s.metadata,
        "expires_after": null,
        "expires_at": null,
    })
}

pub(super) fn file_object(f: &StoreFileRecord) -> Value {
    json!({
        "id": f.file_id,
        "object": "vector_store.file",
        "created_at": f.created_at,
        "vector_store_id": f.store_id,
        "status": f.status.as_str(),
        "last_error": f.last_error.as_ref().map(|e| json!({"code": e.code, "message": e.message})),
        "usage_bytes": f.usage_bytes,
        "attributes": f.attributes,
        "chunking_strategy": {
            "type": "static",
            "static": {
                "max_chunk_size_tokens": f.strategy.max_tokens,
                "chunk_overlap_tokens": f.strategy.overlap_tokens,
            },
        },
    })
}

/// A file list's paging and its `filter` parameter (one ingestion status).
pub(super) fn file_list_query(
    params: &HashMap<String, String>,
) -> Result<(ListQuery, Option<IngestStatus>), ApiError> {
    let q = list_query(params, 20, 100)?;
    let status = params
        .get("filter")
        .map(|f| {
            IngestStatus::parse(f).ok_or_else(|| {
                ApiError::invalid(format!(
                    "filter: '{f}' is not in_progress, completed, failed or cancelled"
                ))
            })
        })
        .transpose()?;
    Ok((q, status))
}

/// A page of attached files as OpenAI's list.
pub(super) fn file_list(page: &Page<StoreFileRecord>) -> Json<Value> {
    Json(list_body(
        page.items.iter().map(file_object).collect(),
        page.has_more,
    ))
}

/// The poll hint while the object is still being worked on.
pub(super) fn poll_headers(in_progress: bool) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if in_progress {
        headers.insert(
            HeaderName::from_static("openai-poll-after-ms"),
            HeaderValue::from_static(POLL_AFTER_MS),
        );
    }
    headers
}

/// OpenAI's metadata: at most 16 pairs, keys up to 64 characters, string values up to 512.
fn metadata(value: Option<Value>) -> Result<Option<Map<String, Value>>, ApiError> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let Value::Object(map) = value else {
        return Err(ApiError::invalid("metadata: must be an object of strings"));
    };
    if map.len() > MAX_METADATA {
        return Err(ApiError::invalid(format!(
            "metadata: at most {MAX_METADATA} pairs"
        )));
    }
    for (k, v) in &map {
        let ok = k.chars().count() <= 64 && v.as_str().is_some_and(|s| s.chars().count() <= 512);
        if !ok {
            return Err(ApiError::invalid(format!(
                "metadata.{k}: keys are at most 64 characters and values strings of at most 512"
            )));
        }
    }
    Ok(Some(map))
}

pub(super) fn strategy(
    rag: &RagCaller,
    param: Option<&Value>,
    path: &str,
) -> Result<ChunkStrategy, ApiError> {
    let limit = rag.rag.content_limit()?;
    Ok(ChunkStrategy::resolve(param, limit, path)?)
}

pub(super) fn attributes(value: Option<&Value>, path: &str) -> Result<Attributes, ApiError> {
    match value.filter(|v| !v.is_null()) {
        None => Ok(Attributes::new()),
        Some(v) => Ok(parse_attributes(v, path)?),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateStore {
    name: Option<String>,
    description: Option<String>,
    file_ids: Option<Vec<String>>,
    metadata: Option<Value>,
    chunking_strategy: Option<Value>,
    expires_after: Option<Value>,
}

async fn create_store(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    JsonBody(req): JsonBody<CreateStore>,
) -> Result<impl IntoResponse, ApiError> {
    let rag = rag(&state, caller)?;
    let _ = (&req.description, &req.expires_after);
    let metadata = metadata(req.metadata)?.unwrap_or_default();
    let name = req.name.unwrap_or_default();
    let file_ids = req.file_ids.unwrap_or_default();
    if file_ids.len() > MAX_FILES_PER_REQUEST {
        return Err(ApiError::invalid(format!(
            "file_ids: at most {MAX_FILES_PER_REQUEST} files per request"
        )));
    }
    let attach: Vec<Attach> = if file_ids.is_empty() {
        Vec::new()
    } else {
        let strategy = strategy(&rag, req.chunking_strategy.as_ref(), "chunking_strategy")?;
        file_ids
            .into_iter()
            .map(|file_id| Attach {
                file_id,
                attributes: Attributes::new(),
                strategy,
            })
            .collect()
    };
    let owner = rag.owner.clone();
    let store = rag
        .rag
        .with_store(move |s| {
            let store = s.create_store(&owner, &name, &metadata)?;
            if !attach.is_empty() {
                // A missing file undoes the store: nothing half-made is left behind.
                if let Err(e) = s.attach(&owner, &store.id, &attach) {
                    let _ = s.delete_store(&owner, &store.id);
                    return Err(e);
                }
                return s.store(&owner, &store.id);
            }
            Ok(store)
        })
        .await?;
    rag.rag.notify();
    Ok(Json(store_object(&store)))
}

async fn list_stores(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<impl IntoResponse, ApiError> {
    let RagCaller { rag, owner, .. } = rag(&state, caller)?;
    let q = list_query(&params, 20, 100)?;
    let page = rag.with_store(move |s| s.list_stores(&owner, &q)).await?;
    Ok(Json(list_body(
        page.items.iter().map(store_object).collect(),
        page.has_more,
    )))
}

async fn retrieve_store(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let RagCaller { rag, owner, .. } = rag(&state, caller)?;
    let store = rag.with_store(move |s| s.store(&owner, &id)).await?;
    Ok((
        poll_headers(store.file_counts.in_progress > 0),
        Json(store_object(&store)),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateStore {
    name: Option<String>,
    metadata: Option<Value>,
    expires_after: Option<Value>,
}

async fn update_store(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<UpdateStore>,
) -> Result<impl IntoResponse, ApiError> {
    let RagCaller { rag, owner, .. } = rag(&state, caller)?;
    let _ = req.expires_after;
    let metadata = metadata(req.metadata)?;
    let store = rag
        .with_store(move |s| s.update_store(&owner, &id, req.name.as_deref(), metadata.as_ref()))
        .await?;
    Ok(Json(store_object(&store)))
}

async fn delete_store(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let RagCaller { rag, owner, .. } = rag(&state, caller)?;
    let store_id = id.clone();
    rag.with_store(move |s| s.delete_store(&owner, &store_id))
        .await?;
    Ok(Json(
        json!({"id": id, "object": "vector_store.deleted", "deleted": true}),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AttachFile {
    file_id: String,
    attributes: Option<Value>,
    chunking_strategy: Option<Value>,
}

async fn attach_file(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<AttachFile>,
) -> Result<impl IntoResponse, ApiError> {
    let rag = rag(&state, caller)?;
    let attach = Attach {
        file_id: req.file_id,
        attributes: attributes(req.attributes.as_ref(), "attributes")?,
        strategy: strategy(&rag, req.chunking_strategy.as_ref(), "chunking_strategy")?,
    };
    let owner = rag.owner.clone();
    let mut files = rag
        .rag
        .with_store(move |s| s.attach(&owner, &id, &[attach]))
        .await?;
    rag.rag.notify();
    let file = files
        .pop()
        .ok_or_else(|| ApiError::invalid("file_id: nothing attached"))?;
    Ok((poll_headers(true), Json(file_object(&file))))
}

async fn list_files(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<impl IntoResponse, ApiError> {
    let RagCaller { rag, owner, .. } = rag(&state, caller)?;
    let (q, status) = file_list_query(&params)?;
    let page = rag
        .with_store(move |s| s.list_store_files(&owner, &id, status, &q))
        .await?;
    Ok(file_list(&page))
}

async fn retrieve_file(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    Path((id, file_id)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let RagCaller { rag, owner, .. } = rag(&state, caller)?;
    let file = rag
        .with_store(move |s| s.store_file(&owner, &id, &file_id))
        .await?;
    Ok((
        poll_headers(file.status == IngestStatus::InProgress),
        Json(file_object(&file)),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateFile {
    attributes: Option<Value>,
}

async fn update_file(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    Path((id, file_id)): Path<(String, String)>,
    JsonBody(req): JsonBody<UpdateFile>,
) -> Result<impl IntoResponse, ApiError> {
    let RagCaller { rag, owner, .. } = rag(&state, caller)?;
    let attrs = attributes(req.attributes.as_ref(), "attributes")?;
    let file = rag
        .with_store(move |s| s.set_attributes(&owner, &id, &file_id, &attrs))
        .await?;
    Ok(Json(file_object(&file)))
}

async fn detach_file(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    Path((id, file_id)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let RagCaller { rag, owner, .. } = rag(&state, caller)?;
    let fid = file_id.clone();
    rag.with_store(move |s| s.detach(&owner, &id, &fid)).await?;
    Ok(Json(
        json!({"id": file_id, "object": "vector_store.file.deleted", "deleted": true}),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchBody {
    query: Value,
    max_num_results: Option<Value>,
    filters: Option<Value>,
    ranking_options: Option<Value>,
    /// Accepted and ignored: the query is searched as written.
    rewrite_query: Option<bool>,
}

/// The query strings: one string, or a list of 1 to 8 non-blank strings.
fn queries(value: Value) -> Result<Vec<String>, ApiError> {
    let list = match value {
        Value::String(s) => vec![s],
        Value::Array(items) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                _ => Err(ApiError::invalid(
                    "query: must be a string or a list of strings",
                )),
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(ApiError::invalid(
                "query: must be a string or a list of strings",
            ))
        }
    };
    if list.is_empty() || list.len() > 8 || list.iter().any(|q| q.trim().is_empty()) {
        return Err(ApiError::invalid(
            "query: 1 to 8 queries, none of them blank",
        ));
    }
    if list.iter().any(|q| q.chars().count() > 4096) {
        return Err(ApiError::invalid("query: at most 4096 characters each"));
    }
    Ok(list)
}

fn number(
    v: Option<&Value>,
    path: &str,
    min: f64,
    max: f64,
    default: f64,
) -> Result<f64, ApiError> {
    match v.filter(|v| !v.is_null()) {
        None => Ok(default),
        Some(v) => v
            .as_f64()
            .filter(|n| (min..=max).contains(n))
            .ok_or_else(|| {
                ApiError::invalid(format!("{path}: must be a number from {min} to {max}"))
            }),
    }
}

/// The search options that `/search` and the `file_search` tool share, checked; `prefix`
/// names where they sit in the body (`tools[0].` for a tool).
pub(super) struct SearchOptions {
    pub max_results: usize,
    pub filter: Option<Filter>,
    pub threshold: f32,
    pub dense_weight: f32,
    pub bm25_weight: f32,
}

impl SearchOptions {
    pub fn request(&self, store_id: String, queries: Vec<String>) -> SearchRequest {
        SearchRequest {
            store_id,
            queries,
            max_results: self.max_results,
            filter: self.filter.clone(),
            score_threshold: self.threshold,
            dense_weight: self.dense_weight,
            bm25_weight: self.bm25_weight,
        }
    }
}

pub(super) fn search_options(
    max_num_results: Option<&Value>,
    filters: Option<&Value>,
    ranking: Option<&Value>,
    prefix: &str,
) -> Result<SearchOptions, ApiError> {
    let max_results = match max_num_results.filter(|v| !v.is_null()) {
        None => 10,
        Some(v) => v.as_u64().filter(|n| (1..=50).contains(n)).ok_or_else(|| {
            ApiError::invalid(format!(
                "{prefix}max_num_results: must be a whole number from 1 to 50"
            ))
        })? as usize,
    };
    let filter = match filters.filter(|v| !v.is_null()) {
        None => None,
        Some(f) => Some(Filter::parse(f, &format!("{prefix}filters"))?),
    };
    let ranking = ranking.cloned().unwrap_or(Value::Null);
    if !ranking.is_null() && !ranking.is_object() {
        return Err(ApiError::invalid(format!(
            "{prefix}ranking_options: must be an object"
        )));
    }
    let threshold = number(
        ranking.get("score_threshold"),
        &format!("{prefix}ranking_options.score_threshold"),
        0.0,
        1.0,
        0.0,
    )?;
    let hybrid = ranking.get("hybrid_search");
    let dense_weight = number(
        hybrid.and_then(|h| h.get("embedding_weight")),
        &format!("{prefix}ranking_options.hybrid_search.embedding_weight"),
        0.0,
        1e6,
        1.0,
    )?;
    let bm25_weight = number(
        hybrid.and_then(|h| h.get("text_weight")),
        &format!("{prefix}ranking_options.hybrid_search.text_weight"),
        0.0,
        1e6,
        1.0,
    )?;
    if dense_weight == 0.0 && bm25_weight == 0.0 {
        return Err(ApiError::invalid(format!(
            "{prefix}ranking_options.hybrid_search: at least one weight must be above 0"
        )));
    }
    Ok(SearchOptions {
        max_results,
        filter,
        threshold: threshold as f32,
        dense_weight: dense_weight as f32,
        bm25_weight: bm25_weight as f32,
    })
}

async fn search(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<SearchBody>,
) -> Result<impl IntoResponse, ApiError> {
    let RagCaller { rag, owner, .. } = rag(&state, caller)?;
    let _ = req.rewrite_query;
    let queries = queries(req.query)?;
    let o = search_options(
        req.max_num_results.as_ref(),
        req.filters.as_ref(),
        req.ranking_options.as_ref(),
        "",
    )?;
    let request = o.request(id, queries.clone());
    let hits = rag.search(&owner, request).await?;
    let data: Vec<Value> = hits
        .iter()
        .map(|h| {
            json!({
                "file_id": h.chunk.file_id,
                "filename": h.chunk.filename,
                "score": h.score,
                "attributes": h.chunk.attributes,
                "content": [{"type": "text", "text": h.chunk.text}],
                // Keel's own: where each leg ranked this chunk (1-based; null: not found by it).
                "ranking": {"dense_rank": h.dense_rank, "bm25_rank": h.bm25_rank, "fused_score": h.score},
            })
        })
        .collect();
    Ok(Json(json!({
        "object": "vector_store.search_results.page",
        "search_query": queries,
        "data": data,
        "has_more": false,
        "next_page": null,
    })))
}
