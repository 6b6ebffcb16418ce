//! Per-key limits at the HTTP edge: admits or refuses each request before any work, writes
//! the `x-ratelimit-*` headers, and leaves a [`Charge`] in the request for the handler to
//! settle the tokens (and, through the gateway, the spend) it used.
//!
//! Runs inside the API-key check, which marks the request with its [`Caller`]; without API
//! keys every client is the one anonymous caller.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use keel_limits::{Caller, Limiter, Meter, Reading, Refusal};

use crate::error::ApiError;

pub use keel_limits::Charge;

/// Paths that spend no model time are never limited: probes, metrics, the API description.
fn limited(path: &str) -> bool {
    !matches!(path, "/health" | "/ready" | "/metrics" | "/openapi.json")
}

pub async fn enforce(
    State(limiter): State<Option<Arc<Limiter>>>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some(limiter) = limiter else {
        return next.run(req).await;
    };
    if !limited(req.uri().path()) {
        return next.run(req).await;
    }
    let caller = req
        .extensions()
        .get::<Caller>()
        .cloned()
        .unwrap_or_else(Caller::anonymous);
    let with_spend = req.uri().path() == "/v1/chat/completions";
    match limiter.admit(&caller, with_spend).await {
        Ok(admission) => {
            req.extensions_mut().insert(admission.charge);
            let mut response = next.run(req).await;
            write_headers(response.headers_mut(), &admission.readings);
            response
        }
        Err(Refusal::Limited { reading, all }) => {
            let seconds = reading.verdict.retry_after_us.div_ceil(1_000_000).max(1);
            let (code, what) = match reading.meter {
                Meter::Requests => ("rate_limited", "requests per minute"),
                Meter::Tokens => ("rate_limited", "tokens per minute"),
                Meter::Spend => ("budget_exceeded", "US dollars of upstream spend per day"),
            };
            let message = format!(
                "{} has used its {} {what}; retry after {seconds} s",
                caller.id, reading.limit
            );
            let mut response = ApiError::new(StatusCode::TOO_MANY_REQUESTS, code, message)
                .retry_after(u32::try_from(seconds).unwrap_or(u32::MAX))
                .into_response();
            write_headers(response.headers_mut(), &all);
            response
        }
        Err(Refusal::StoreDown(reason)) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "rate_limit_unavailable",
            format!("the shared rate-limit store cannot be reached ({reason}); try again shortly"),
        )
        .retry_after(1)
        .into_response(),
    }
}

/// `x-ratelimit-{limit,remaining,reset}-{requests,tokens,spend}`: the limit, what is left,
/// and seconds until the meter is full again. Spend is in US dollars.
fn write_headers(headers: &mut HeaderMap, readings: &[Reading]) {
    for r in readings {
        let meter = r.meter.as_str();
        let remaining = match r.meter {
            Meter::Spend => format!("{:.6}", r.verdict.remaining as f64 / 1e6),
            _ => r.verdict.remaining.to_string(),
        };
        let values = [
            ("limit", format!("{}", r.limit)),
            ("remaining", remaining),
            ("reset", r.verdict.reset_us.div_ceil(1_000_000).to_string()),
        ];
        for (what, value) in values {
            if let (Ok(name), Ok(value)) = (
                HeaderName::try_from(format!("x-ratelimit-{what}-{meter}")),
                HeaderValue::try_from(value),
            ) {
                headers.insert(name, value);
            }
        }
    }
}
