//! Route groups, one file each.

pub mod chat;
pub mod completions;
pub mod embeddings;
pub mod file_batches;
pub mod files;
pub mod health;
pub mod metrics;
pub mod models;
pub mod openapi;
mod openapi_rag;
pub mod predict;
mod rag;
pub mod responses;
mod responses_stream;
pub mod uploads;
pub mod vector_stores;

use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderName, StatusCode};
use serde::Deserialize;

use crate::error::ApiError;
use crate::Limits;

pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not accept that method",
    )
}

/// One text or a list of texts, as both `/predict` and `/v1/embeddings` accept.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum TextOrTexts {
    One(String),
    Many(Vec<String>),
}

impl TextOrTexts {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            TextOrTexts::One(t) => vec![t],
            TextOrTexts::Many(v) => v,
        }
    }
}

/// Checks the count of inputs against the limits; texts themselves are checked by the
/// engine (empty, too long).
pub fn check_input_count(texts: &[String], limits: &Limits) -> Result<(), ApiError> {
    if texts.is_empty() {
        return Err(ApiError::invalid("the list of inputs is empty"));
    }
    if texts.len() > limits.max_client_batch {
        return Err(ApiError::invalid(format!(
            "{} inputs in one request; at most {} are accepted (MAX_CLIENT_BATCH)",
            texts.len(),
            limits.max_client_batch
        )));
    }
    Ok(())
}

pub const REQUEST_TIMEOUT: HeaderName = HeaderName::from_static("x-request-timeout-ms");

/// When the request must be answered by: `REQUEST_TIMEOUT_MS` from now, or sooner if the
/// client asks for it in `X-Request-Timeout-Ms`.
pub fn deadline(headers: &HeaderMap, limits: &Limits) -> Result<Instant, ApiError> {
    let mut timeout = limits.request_timeout;
    if let Some(value) = headers.get(&REQUEST_TIMEOUT) {
        let ms: u64 = value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .filter(|&ms| ms > 0)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_header",
                    "X-Request-Timeout-Ms must be a positive whole number of milliseconds",
                )
            })?;
        timeout = timeout.min(Duration::from_millis(ms));
    }
    Ok(Instant::now() + timeout)
}
