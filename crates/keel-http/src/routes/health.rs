//! Liveness (`/health`: the process answers) and readiness (`/ready`: every model can serve).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Ready when every model is, and the rate-limit store, if shared, can decide requests
/// (a Redis that is down is reported either way; it makes the replica unready only when the
/// policy is to fail closed).
async fn ready(State(state): State<AppState>) -> Response {
    let report = state.registry.readiness();
    let mut ready = report.is_ready();
    let mut body = serde_json::to_value(&report).unwrap_or_default();
    if let Some(limiter) = &state.limiter {
        let (store, serving) = limiter.store_report();
        body["rate_limit_store"] = json!(store);
        if ready && !serving {
            ready = false;
            body["status"] = json!("rate_limit_store_unreachable");
        }
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}
