//! `POST /v1/chat/completions`, OpenAI-compatible, streaming and not: the HTTP edge of the
//! gateway to third-party model APIs (keel-gateway decides where a request goes).
//!
//! Bad bodies get the same statuses as every other route (415, 413, 408, 400, 422); a model
//! no route serves is OpenAI's 404 `model_not_found`; an upstream's client error is passed on
//! with its status; when every target fails the answer is the route's degraded one (a local
//! model's, or the route's fixed message), never a bare 500. Keel's own generative models
//! answer here too, by name. The request id decided by the middleware is sent upstream.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json, Router};
use keel_gateway::{Answer, ChatError, ChatRequest, DegradedBody, Gateway, Served};

use crate::error::ApiError;
use crate::json::{body_error, check_json_content_type, parse_json};
use crate::middleware::{request_id, RequestId};

pub const PROVIDER: HeaderName = HeaderName::from_static("x-keel-provider");
pub const MODEL: HeaderName = HeaderName::from_static("x-keel-model");
pub const ATTEMPTS: HeaderName = HeaderName::from_static("x-keel-attempts");
pub const DEGRADED: HeaderName = HeaderName::from_static("x-keel-degraded");

pub fn routes(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .with_state(gateway)
}

impl From<ChatError> for ApiError {
    fn from(e: ChatError) -> Self {
        let message = e.to_string();
        match e {
            ChatError::NoRoute(_) => Self::new(StatusCode::NOT_FOUND, "model_not_found", message),
            ChatError::Untranslatable(_) => Self::invalid(message),
        }
    }
}

fn parse(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<ChatRequest, ApiError> {
    check_json_content_type(headers)?;
    let body = body.map_err(|rejection| body_error(&rejection))?;
    // Only the fields the gateway needs are checked: the rest is the upstream's to judge.
    let value: serde_json::Value = parse_json(&body)?;
    ChatRequest::from_json(value).map_err(|e| ApiError::invalid(e.to_string()))
}

async fn chat_completions(
    State(gateway): State<Arc<Gateway>>,
    headers: HeaderMap,
    id: Option<Extension<RequestId>>,
    charge: Option<Extension<keel_limits::Charge>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    // Set by the middleware; the route is only served behind it, but stays correct alone.
    let id = id.map_or_else(|| request_id(&headers), |Extension(RequestId(id))| id);
    let chat = match parse(&headers, body) {
        Ok(chat) => chat,
        Err(e) => return e.into_response(),
    };
    match gateway.chat(chat, id, charge.map(|Extension(c)| c)).await {
        Ok(answer) => answer_response(answer),
        Err(e) => ApiError::from(e).into_response(),
    }
}

pub(crate) fn served_headers(response: &mut Response, served: &Served) {
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&served.provider) {
        h.insert(PROVIDER, v);
    }
    if let Ok(v) = HeaderValue::from_str(&served.model) {
        h.insert(MODEL, v);
    }
    h.insert(ATTEMPTS, HeaderValue::from(served.attempts));
    if served.degraded {
        h.insert(DEGRADED, HeaderValue::from_static("true"));
    }
}

/// An SSE answer: the body as `text/event-stream`, never cached.
pub(crate) fn event_stream(body: Body) -> Response {
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

fn answer_response(answer: Answer) -> Response {
    let (mut response, served) = match answer {
        Answer::Complete { body, served } => (Json(body).into_response(), served),
        Answer::Stream { body, served } => (event_stream(Body::from_stream(body)), served),
        Answer::Refused {
            status,
            error,
            served,
            retry_after,
        } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
            let mut e = ApiError::new(status, error.code, error.message);
            e.retry_after = retry_after.map(|s| s.min(u64::from(u32::MAX)) as u32);
            (e.into_response(), served)
        }
        Answer::Degraded(d) => return degraded_response(d.render()),
    };
    served_headers(&mut response, &served);
    response
}

fn degraded_response(degraded: DegradedBody) -> Response {
    let mut response = match degraded {
        DegradedBody::Unavailable { body, retry_after } => {
            let mut r = (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
            if let Some(secs) = retry_after {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            r
        }
        DegradedBody::Completion(body) => Json(body).into_response(),
        DegradedBody::Stream(bytes) => event_stream(Body::from(bytes)),
    };
    response
        .headers_mut()
        .insert(DEGRADED, HeaderValue::from_static("true"));
    response
}
