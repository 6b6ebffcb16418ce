//! OpenAI-compatible embeddings: `POST /v1/embeddings`.
//!
//! Shape-compatible with OpenAI's API so the official SDKs work unchanged; note that those
//! SDKs ask for `encoding_format: "base64"` by default (little-endian f32 bytes).

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Extension, Json, Router};
use base64::Engine as _;
use keel_engine::Task;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{check_input_count, deadline, TextOrTexts};
use crate::error::ApiError;
use crate::json::JsonBody;
use crate::middleware::inference_headers;
use crate::rate_limit::Charge;
use crate::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/embeddings", post(embeddings))
}

#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq)]
#[serde(rename_all = "lowercase")]
enum EncodingFormat {
    #[default]
    Float,
    Base64,
}

#[derive(Debug, Deserialize)]
struct EmbeddingsRequest {
    input: Value,
    model: Option<String>,
    #[serde(default)]
    encoding_format: Option<EncodingFormat>,
    dimensions: Option<usize>,
    #[allow(dead_code)]
    user: Option<String>,
}

#[derive(Debug, Serialize)]
struct EmbeddingsResponse {
    object: &'static str,
    data: Vec<EmbeddingObject>,
    model: String,
    usage: Usage,
}

#[derive(Debug, Serialize)]
struct EmbeddingObject {
    object: &'static str,
    embedding: Value,
    index: usize,
}

#[derive(Debug, Serialize)]
struct Usage {
    prompt_tokens: usize,
    total_tokens: usize,
}

fn texts(input: Value) -> Result<Vec<String>, ApiError> {
    match serde_json::from_value::<TextOrTexts>(input) {
        Ok(t) => Ok(t.into_vec()),
        Err(_) => Err(ApiError::invalid(
            "\"input\" must be a string or an array of strings (token-id inputs are not supported)",
        )),
    }
}

async fn embeddings(
    State(state): State<AppState>,
    headers: HeaderMap,
    charge: Option<Extension<Charge>>,
    JsonBody(request): JsonBody<EmbeddingsRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let deadline = deadline(&headers, &state.limits)?;
    let texts = texts(request.input)?;
    check_input_count(&texts, &state.limits)?;
    let model = state
        .registry
        .get(request.model.as_deref(), Task::Embedding)?;
    if let Some(d) = request.dimensions {
        if d != model.spec.dimensions {
            return Err(ApiError::invalid(format!(
                "model '{}' produces {} dimensions; \"dimensions\" must be {} or absent",
                model.name, model.spec.dimensions, model.spec.dimensions
            )));
        }
    }
    let format = request.encoding_format.unwrap_or_default();
    let inference = model.embed(texts, deadline).await?;
    if let Some(Extension(charge)) = &charge {
        charge.usage(inference.tokens.iter().map(|&t| t as u64).sum(), None);
    }
    let prompt_tokens = inference.tokens.iter().sum();
    let headers = inference_headers(&inference);
    let data = inference
        .outputs
        .into_iter()
        .enumerate()
        .map(|(index, vector)| EmbeddingObject {
            object: "embedding",
            embedding: match format {
                EncodingFormat::Float => Value::from(vector),
                EncodingFormat::Base64 => {
                    let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                    Value::from(base64::engine::general_purpose::STANDARD.encode(bytes))
                }
            },
            index,
        })
        .collect();
    Ok((
        headers,
        Json(EmbeddingsResponse {
            object: "list",
            data,
            model: model.name.clone(),
            usage: Usage {
                prompt_tokens,
                total_tokens: prompt_tokens,
            },
        }),
    ))
}
