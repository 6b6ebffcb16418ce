//! Text classification: `POST /predict`.
//!
//! Accepts the guide's shape (`{"text": ...}` -> `{"label", "score"}`, or `?text=` in the
//! query string, so its clients work unchanged) and a batch shape (`{"inputs": [...]}` -> a
//! list in input order). `top_k` turns each answer into its k best labels.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request, State};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Json, Router};
use keel_engine::Task;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{check_input_count, deadline, TextOrTexts};
use crate::error::ApiError;
use crate::json::{check_json_content_type, parse_json, read_body};
use crate::middleware::inference_headers;
use crate::rate_limit::Charge;
use crate::AppState;

fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

pub fn routes() -> Router<AppState> {
    Router::new().route("/predict", post(predict))
}

#[derive(Debug, Default, Deserialize)]
struct PredictQuery {
    text: Option<String>,
    model: Option<String>,
    top_k: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
struct PredictRequest {
    // An explicit null is refused, not taken for "absent": {"text": null, "inputs": [..]}
    // is a client bug worth a 422.
    #[serde(default, deserialize_with = "present")]
    text: Option<String>,
    #[serde(default, deserialize_with = "present")]
    inputs: Option<TextOrTexts>,
    model: Option<String>,
    top_k: Option<u32>,
}

#[derive(Debug, Serialize)]
struct LabelScore {
    label: String,
    score: f32,
}

async fn predict(
    State(state): State<AppState>,
    query: Result<Query<PredictQuery>, QueryRejection>,
    request: Request,
) -> Result<impl IntoResponse, ApiError> {
    let deadline = deadline(request.headers(), &state.limits)?;
    let charge = request.extensions().get::<Charge>().cloned();
    let Query(query) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let request = if query.text.is_some() {
        // The guide's form: everything in the query string, body ignored.
        PredictRequest {
            text: query.text,
            inputs: None,
            model: query.model,
            top_k: query.top_k,
        }
    } else {
        check_json_content_type(request.headers())?;
        let body = read_body(request, &state).await?;
        let mut body: PredictRequest = parse_json(&body)?;
        body.model = body.model.or(query.model);
        body.top_k = body.top_k.or(query.top_k);
        body
    };
    let (texts, batched) = match (request.text, request.inputs) {
        (Some(text), None) => (vec![text], false),
        (None, Some(TextOrTexts::One(text))) => (vec![text], false),
        (None, Some(TextOrTexts::Many(texts))) => (texts, true),
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "give either \"text\" or \"inputs\", not both",
            ))
        }
        (None, None) => return Err(ApiError::invalid("missing \"text\" (or \"inputs\")")),
    };
    if request.top_k == Some(0) {
        return Err(ApiError::invalid("top_k must be at least 1"));
    }
    check_input_count(&texts, &state.limits)?;

    let model = state
        .registry
        .get(request.model.as_deref(), Task::Classification)?;
    let inference = model.classify(texts, deadline).await?;
    if let Some(charge) = &charge {
        charge.usage(inference.tokens.iter().map(|&t| t as u64).sum(), None);
    }
    let labels = &model.spec.labels;
    let answers: Vec<Value> = inference
        .outputs
        .iter()
        .map(|scores| {
            let mut ranked: Vec<LabelScore> = labels
                .iter()
                .zip(scores)
                .map(|(label, &score)| LabelScore {
                    label: label.clone(),
                    score,
                })
                .collect();
            ranked.sort_by(|a, b| b.score.total_cmp(&a.score));
            match request.top_k {
                Some(k) => serde_json::to_value(&ranked[..(k as usize).min(ranked.len())]),
                None => serde_json::to_value(&ranked[0]),
            }
            .expect("label scores serialize")
        })
        .collect();
    let body = if batched {
        Value::Array(answers)
    } else {
        answers
            .into_iter()
            .next()
            .expect("one input gives one answer")
    };
    Ok((inference_headers(&inference), Json(body)))
}
