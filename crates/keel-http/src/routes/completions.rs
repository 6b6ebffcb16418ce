//! `POST /v1/completions`, OpenAI's legacy text completion (a prompt in, text out), for
//! Keel's own generative models only: streaming and not, with the same sampling fields and
//! checks as local chat.

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json, Router};
use keel_engine::generate::GenerateError;
use keel_gateway::local::{self, Labels, LocalAnswer, LocalRequest};
use keel_gateway::meter::RequestRecord;
use serde_json::Value;

use crate::error::ApiError;
use crate::json::{body_error, check_json_content_type, parse_json};
use crate::middleware::{request_id, RequestId};
use crate::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/completions", post(completions))
}

/// A local model's refusal as an HTTP error.
pub fn generate_error(e: GenerateError) -> ApiError {
    let (status, code) = e.status_and_code();
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut error = ApiError::new(status, code, e.to_string());
    error.retry_after = e
        .retry_after_secs()
        .map(|s| s.min(u64::from(u32::MAX)) as u32);
    error
}

async fn completions(
    State(state): State<AppState>,
    headers: HeaderMap,
    id: Option<Extension<RequestId>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match complete(&state, &headers, id, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn complete(
    state: &AppState,
    headers: &HeaderMap,
    id: Option<Extension<RequestId>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let id = id.map_or_else(|| request_id(headers), |Extension(RequestId(id))| id);
    check_json_content_type(headers)?;
    let body = body.map_err(|rejection| body_error(&rejection))?;
    let Value::Object(body) = parse_json::<Value>(&body)? else {
        return Err(ApiError::invalid("the body must be a JSON object"));
    };
    let model = match body.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        _ => return Err(ApiError::invalid("model: must be a non-empty string")),
    };
    let name = model.strip_prefix("local/").unwrap_or(&model);
    let generator = state.registry.generator(name).map_err(|e| match e {
        keel_engine::EngineError::UnknownModel(_) => ApiError::new(
            StatusCode::NOT_FOUND,
            "model_not_found",
            format!("the model '{model}' is not one of the local generative models served here"),
        ),
        other => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "model_not_ready",
            other.to_string(),
        ),
    })?;
    let deadline = super::deadline(headers, &state.limits)?;
    let request = LocalRequest::completion(&body, deadline, id.to_str().unwrap_or_default())
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    let labels = Labels {
        model: model.clone(),
        degraded: false,
    };
    let answer = local::generate(
        generator.as_ref(),
        request,
        labels,
        RequestRecord::finished(),
    )
    .await
    .map_err(generate_error)?;
    Ok(match answer {
        LocalAnswer::Complete { body, .. } => Json(body).into_response(),
        LocalAnswer::Stream(stream) => super::chat::event_stream(Body::from_stream(stream)),
    })
}
