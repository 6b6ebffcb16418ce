//! Cross-cutting request handling as layers: the request id (decided here, once), the one
//! log line per request, the HTTP metrics, and the total-time header.
//!
//! `observe` wraps the whole router (so 404s are logged too); `record_route` runs only on
//! matched routes and passes the route template back out, so metrics are labelled by
//! template (`/predict`), never by raw path (unbounded cardinality).

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use keel_telemetry::metrics::names;
use tracing::Instrument;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const TOTAL_MS: HeaderName = HeaderName::from_static("x-keel-total-ms");
pub const QUEUE_MS: HeaderName = HeaderName::from_static("x-keel-queue-ms");
pub const INFERENCE_MS: HeaderName = HeaderName::from_static("x-keel-inference-ms");
pub const DECODE_MS: HeaderName = HeaderName::from_static("x-keel-decode-ms");
pub const PREPROCESS_MS: HeaderName = HeaderName::from_static("x-keel-preprocess-ms");

#[derive(Clone)]
struct RouteTemplate(String);

/// The request's id, decided once by [`observe`] and left in the request's extensions for
/// handlers (the gateway sends it upstream).
#[derive(Debug, Clone)]
pub struct RequestId(pub HeaderValue);

/// The id a client sent when it is a sane one (printable ASCII, at most 128 bytes), else a
/// fresh UUID: the one rule for the whole server.
pub fn request_id(headers: &axum::http::HeaderMap) -> HeaderValue {
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

fn content_length(headers: &axum::http::HeaderMap) -> u64 {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

pub async fn record_route(req: Request, next: Next) -> Response {
    let template = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string());
    let mut response = next.run(req).await;
    if let Some(t) = template {
        response.extensions_mut().insert(RouteTemplate(t));
    }
    response
}

pub async fn observe(mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = request_id(req.headers());
    req.headers_mut().insert(REQUEST_ID, id.clone());
    req.extensions_mut().insert(RequestId(id.clone()));
    let method = req.method().to_string();
    let bytes_in = content_length(req.headers());
    let span = tracing::info_span!("request", request_id = %id.to_str().unwrap_or_default());

    metrics::gauge!(names::HTTP_IN_FLIGHT).increment(1.0);
    let mut response = next.run(req).instrument(span.clone()).await;
    metrics::gauge!(names::HTTP_IN_FLIGHT).decrement(1.0);

    let latency = started.elapsed();
    let route = response
        .extensions()
        .get::<RouteTemplate>()
        .map_or_else(|| "unmatched".to_string(), |r| r.0.clone());
    let status = response.status().as_u16();
    let bytes_out = axum::body::HttpBody::size_hint(response.body())
        .exact()
        .unwrap_or_else(|| content_length(response.headers()));
    span.in_scope(|| {
        tracing::info!(
            target: "keel::request",
            method = %method,
            route = %route,
            status,
            latency_ms = latency.as_secs_f64() * 1e3,
            bytes_in,
            bytes_out,
            "request"
        )
    });
    let labels = [
        ("route", route),
        ("method", method),
        ("status", status.to_string()),
    ];
    metrics::counter!(names::HTTP_REQUESTS, &labels).increment(1);
    metrics::histogram!(names::HTTP_DURATION, &labels).record(latency.as_secs_f64());

    let headers = response.headers_mut();
    headers.insert(REQUEST_ID, id);
    headers.insert(TOTAL_MS, ms_header(latency));
    response
}

pub fn ms_header(d: std::time::Duration) -> HeaderValue {
    HeaderValue::from_str(&format!("{:.3}", d.as_secs_f64() * 1e3)).expect("a number is ASCII")
}

/// Queue and compute time of an inference, for the response headers.
pub fn inference_headers(inference: &keel_engine::registry::Inference) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(QUEUE_MS, ms_header(inference.queue_wait));
    headers.insert(INFERENCE_MS, ms_header(inference.compute));
    if !inference.images.is_empty() {
        headers.insert(DECODE_MS, ms_header(inference.decode()));
        headers.insert(PREPROCESS_MS, ms_header(inference.preprocess()));
    }
    headers
}
