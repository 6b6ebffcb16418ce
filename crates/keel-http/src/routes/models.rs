//! What is served: `GET /v1/models` (OpenAI's shape) and `GET /info` (Keel's own detail).

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/models", get(list_models))
        .route("/info", get(info))
}

async fn list_models(State(state): State<AppState>) -> Json<Value> {
    let data: Vec<Value> = state
        .registry
        .summaries()
        .into_iter()
        .map(|m| {
            let mut model = json!({
                "id": m.name,
                "object": "model",
                "created": 0,
                "owned_by": "keel",
                "task": m.task,
                "state": m.state,
            });
            if let Some(size) = m.input_size {
                model["input_size"] = json!(size);
            }
            if let Some(n) = m.num_labels {
                model["num_labels"] = json!(n);
            }
            model
        })
        .collect();
    Json(json!({"object": "list", "data": data}))
}

async fn info(State(state): State<AppState>) -> Json<Value> {
    Json(json!({
        "name": "keel",
        "version": env!("CARGO_PKG_VERSION"),
        "models": state.registry.summaries(),
        "settings": *state.settings,
    }))
}
