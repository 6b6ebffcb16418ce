//! What the files and vector-store routes share: reaching the RAG service as the caller,
//! and OpenAI's cursor lists.

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::StatusCode;
use axum::Extension;
use keel_limits::Caller;
use keel_rag::records::ListQuery;
use keel_retrieval::Retrieval;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::AppState;

/// Objects of a request with no API key (none configured) belong to this owner.
const ANONYMOUS: &str = "anonymous";

pub(crate) struct RagCaller {
    pub rag: Arc<Retrieval>,
    /// The caller's key id: every object is scoped to it.
    pub owner: String,
    pub max_file_bytes: usize,
}

pub(crate) fn rag(
    state: &AppState,
    caller: Option<Extension<Caller>>,
) -> Result<RagCaller, ApiError> {
    let Some(rag) = &state.rag else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such route",
        ));
    };
    if let Some(why) = rag.refused {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "api_key_required",
            why,
        ));
    }
    Ok(RagCaller {
        rag: rag.service.clone(),
        owner: caller.map_or_else(|| ANONYMOUS.to_owned(), |Extension(c)| c.id.to_string()),
        max_file_bytes: rag.max_file_bytes,
    })
}

/// `limit`, `after`, `before`, `order` from a list request's query string.
pub(crate) fn list_query(
    params: &HashMap<String, String>,
    default_limit: usize,
    max_limit: usize,
) -> Result<ListQuery, ApiError> {
    let limit = match params.get("limit") {
        None => default_limit,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=max_limit).contains(n))
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "limit: must be a whole number from 1 to {max_limit}"
                ))
            })?,
    };
    let descending = match params.get("order").map(String::as_str) {
        None | Some("desc") => true,
        Some("asc") => false,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "order: '{other}' is not 'asc' or 'desc'"
            )))
        }
    };
    Ok(ListQuery {
        limit,
        after: params.get("after").cloned(),
        before: params.get("before").cloned(),
        descending,
    })
}

/// OpenAI's list envelope.
pub(crate) fn list_body(data: Vec<Value>, has_more: bool) -> Value {
    let first = data.first().and_then(|v| v.get("id")).cloned();
    let last = data.last().and_then(|v| v.get("id")).cloned();
    json!({"object": "list", "data": data, "first_id": first, "last_id": last, "has_more": has_more})
}
