//! The HTTP edge: OpenAI-compatible `POST /v1/chat/completions`, streaming and not.
//!
//! Bad bodies get Keel's statuses (415 wrong content type, 413 too large, 400 malformed
//! JSON, 422 missing or wrong fields or a model no route serves), always as
//! `{"error": {"code", "message"}}`; an upstream's client error is passed on with its status;
//! when every target fails the answer is the route's degraded one, never a bare 500. The
//! client's `x-request-id` (or a fresh one) is sent upstream and returned.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json, Router};
use serde_json::json;

use crate::gateway::Gateway;
use crate::provider::ChatRequest;
use crate::router::{Answer, ChatError, Served};

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const PROVIDER: HeaderName = HeaderName::from_static("x-keel-provider");
pub const MODEL: HeaderName = HeaderName::from_static("x-keel-model");
pub const ATTEMPTS: HeaderName = HeaderName::from_static("x-keel-attempts");

/// The gateway's error at the HTTP edge: a status and `{"error": {"code", "message"}}`.
#[derive(Debug)]
pub struct GatewayApiError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
}

impl GatewayApiError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.to_string(),
            message: message.into(),
        }
    }
}

impl IntoResponse for GatewayApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

impl From<ChatError> for GatewayApiError {
    fn from(e: ChatError) -> Self {
        let code = match e {
            ChatError::NoRoute(_) => "model_not_found",
            ChatError::Untranslatable(_) => "invalid_request",
        };
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, e.to_string())
    }
}

pub fn routes(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .with_state(gateway)
}

/// The client's request id when it is a sane one (printable, at most 128 bytes), else a UUID.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    headers
        .get(&REQUEST_ID)
        .filter(|v| {
            let b = v.as_bytes();
            !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic())
        })
        .cloned()
        .unwrap_or_else(|| {
            HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()).expect("a UUID is ASCII")
        })
}

fn parse(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<ChatRequest, GatewayApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|m| {
            let m = m.trim().to_ascii_lowercase();
            m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
        })
        .unwrap_or(false);
    if !is_json {
        return Err(GatewayApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "expected a body with Content-Type: application/json",
        ));
    }
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            GatewayApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the request body is larger than the limit",
            )
        } else {
            GatewayApiError::new(
                StatusCode::BAD_REQUEST,
                "unreadable_body",
                format!("cannot read the request body: {rejection}"),
            )
        }
    })?;
    keel_limits::input::check_json_depth(&body)
        .map_err(|m| GatewayApiError::new(StatusCode::BAD_REQUEST, "json_too_deep", m))?;
    let value: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
        GatewayApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("the body is not valid JSON: {e}"),
        )
    })?;
    ChatRequest::from_json(value)
        .map_err(|m| GatewayApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", m))
}

fn served_headers(response: &mut Response, served: &Served) {
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&served.provider) {
        h.insert(PROVIDER, v);
    }
    if let Ok(v) = HeaderValue::from_str(&served.model) {
        h.insert(MODEL, v);
    }
    h.insert(ATTEMPTS, HeaderValue::from(served.attempts));
}

async fn chat_completions(
    State(gateway): State<Arc<Gateway>>,
    headers: HeaderMap,
    charge: Option<Extension<keel_limits::Charge>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let id = request_id(&headers);
    let mut response = match parse(&headers, body) {
        Err(e) => e.into_response(),
        Ok(chat) => match gateway
            .chat(chat, id.clone(), charge.map(|Extension(c)| c))
            .await
        {
            Err(e) => GatewayApiError::from(e).into_response(),
            Ok(answer) => answer_response(answer),
        },
    };
    response.headers_mut().insert(REQUEST_ID, id);
    response
}

fn answer_response(answer: Answer) -> Response {
    match answer {
        Answer::Complete { body, served } => {
            let mut r = Json(body).into_response();
            served_headers(&mut r, &served);
            r
        }
        Answer::Stream { body, served } => {
            let mut r = Response::new(Body::from_stream(body));
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            served_headers(&mut r, &served);
            r
        }
        Answer::Refused {
            status,
            error,
            served,
        } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
            let mut r = GatewayApiError::new(status, &error.code, error.message).into_response();
            served_headers(&mut r, &served);
            r
        }
        Answer::Degraded(d) => crate::degraded::response(d),
    }
}
