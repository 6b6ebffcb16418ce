//! The designed answer when every target of a route has failed: the route's configured text
//! (a local model later), in the shape the client asked for, marked by the
//! `x-keel-degraded: true` header and a `degraded` field in the body. Status 200 by default;
//! 503 (with Keel's error shape and `Retry-After` when known) if the route says so.

use axum::body::Body;
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::provider::unix_now;
use crate::router::Degraded;
use crate::sse::frame;
use crate::stream::DONE;

pub const DEGRADED_HEADER: HeaderName = HeaderName::from_static("x-keel-degraded");

pub fn response(d: Degraded) -> Response {
    let mut response = if d.settings.status == 503 {
        let body = json!({
            "error": {"code": "upstream_unavailable", "message": d.settings.message},
            "degraded": true,
            "degraded_reason": d.reason,
        });
        let mut r = (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
        if let Some(wait) = d.retry_after {
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        r
    } else if d.stream {
        let id = format!("keel-degraded-{}", uuid::Uuid::new_v4().simple());
        let created = unix_now();
        let chunk = |delta: serde_json::Value, finish: serde_json::Value| {
            json!({
                "id": id, "object": "chat.completion.chunk", "created": created,
                "model": d.model, "degraded": true,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            })
            .to_string()
        };
        let mut out = Vec::new();
        frame(
            &mut out,
            None,
            &chunk(
                json!({"role": "assistant", "content": d.settings.message}),
                serde_json::Value::Null,
            ),
        );
        frame(&mut out, None, &chunk(json!({}), "stop".into()));
        out.extend_from_slice(DONE);
        let mut r = Response::new(Body::from(out));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        r
    } else {
        let body = json!({
            "id": format!("keel-degraded-{}", uuid::Uuid::new_v4().simple()),
            "object": "chat.completion",
            "created": unix_now(),
            "model": d.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": d.settings.message},
                "finish_reason": "stop",
            }],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
            "degraded": true,
            "degraded_reason": d.reason,
        });
        Json(body).into_response()
    };
    response
        .headers_mut()
        .insert(DEGRADED_HEADER, HeaderValue::from_static("true"));
    response
}
