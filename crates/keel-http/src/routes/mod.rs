//! Route groups, one file each.

pub mod embeddings;
pub mod health;
pub mod metrics;
pub mod models;
pub mod openapi;
pub mod predict;

use axum::http::StatusCode;
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
