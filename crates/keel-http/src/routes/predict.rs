//! Classification of texts and images: `POST /predict`.
//!
//! Accepts the guide's shape (`{"text": ...}` -> `{"label", "score"}`, or `?text=` in the
//! query string, so its clients work unchanged) and a batch shape (`{"inputs": [...]}` -> a
//! list in input order). Images come as a multipart form, a raw image body, or base64 in
//! JSON (`{"image": ...}`, `{"images": [...]}`, or `{"inputs": [...]}` for an image model);
//! see [`super::uploads`]. Both kinds answer in the same shapes, and `top_k` turns each
//! answer into its k best labels. With no model named, the first model of the input's task
//! answers.

use axum::body::Bytes;
use axum::extract::multipart::Multipart;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use keel_engine::{Inference, Task};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::uploads::{self, BodyKind};
use super::{check_input_count, deadline, TextOrTexts};
use crate::error::ApiError;
use crate::json::{body_too_large, parse_json, read_body_within};
use crate::middleware::inference_headers;
use crate::rate_limit::Charge;
use crate::{AppState, Limits};

fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

/// The route, with a body limit that fits image uploads; JSON bodies are still held to
/// MAX_BODY_BYTES by the handler.
pub fn routes(limits: &Limits) -> Router<AppState> {
    let largest = limits.max_body_bytes.max(limits.max_image_bytes);
    Router::new()
        .route("/predict", post(predict))
        .layer(DefaultBodyLimit::max(largest))
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
    /// One image, base64 or a `data:` URL.
    #[serde(default, deserialize_with = "present")]
    image: Option<String>,
    #[serde(default, deserialize_with = "present")]
    images: Option<Vec<String>>,
    model: Option<String>,
    top_k: Option<u32>,
}

/// What a request asks to classify, once its body is read.
enum Inputs {
    Texts(Vec<String>),
    Images(Vec<Bytes>),
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
) -> Result<Response, ApiError> {
    let deadline = deadline(request.headers(), &state.limits)?;
    let charge = request.extensions().get::<Charge>().cloned();
    let Query(query) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let (inputs, batched, model, top_k) = if let Some(text) = query.text {
        // The guide's form: everything in the query string, body ignored.
        (Inputs::Texts(vec![text]), false, query.model, query.top_k)
    } else {
        match uploads::body_kind(request.headers())? {
            BodyKind::Json => {
                let body = read_body_within(request, state.limits.max_body_bytes, body_too_large())
                    .await?;
                let body: PredictRequest = parse_json(&body)?;
                let model = body.model.clone().or(query.model);
                let top_k = body.top_k.or(query.top_k);
                let (inputs, batched) = json_inputs(body, model.as_deref(), &state)?;
                (inputs, batched, model, top_k)
            }
            BodyKind::Multipart => {
                let multipart = Multipart::from_request(request, &state)
                    .await
                    .map_err(|e| {
                        ApiError::new(
                            StatusCode::BAD_REQUEST,
                            "malformed_multipart",
                            e.body_text(),
                        )
                    })?;
                let form = uploads::read_form(multipart, &state.limits).await?;
                let batched = form.images.len() > 1;
                (
                    Inputs::Images(form.images),
                    batched,
                    form.model.or(query.model),
                    form.top_k.or(query.top_k),
                )
            }
            BodyKind::RawImage => {
                let too_large = ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "image_too_large",
                    "the image is larger than MAX_IMAGE_BYTES allows",
                );
                let body =
                    read_body_within(request, state.limits.max_image_bytes, too_large).await?;
                (Inputs::Images(vec![body]), false, query.model, query.top_k)
            }
        }
    };
    if top_k == Some(0) {
        return Err(ApiError::invalid("top_k must be at least 1"));
    }
    let (inference, served) = match inputs {
        Inputs::Texts(texts) => {
            check_input_count(&texts, &state.limits)?;
            let served = state.registry.get(model.as_deref(), Task::Classification)?;
            (served.classify(texts, deadline).await?, served)
        }
        Inputs::Images(images) => {
            check_image_count(images.len(), &state.limits)?;
            let served = state
                .registry
                .get(model.as_deref(), Task::ImageClassification)?;
            (served.classify_images(images, deadline).await?, served)
        }
    };
    if let Some(charge) = &charge {
        // Text is charged by tokens; an image counts as one.
        let units = if inference.images.is_empty() {
            inference.tokens.iter().map(|&t| t as u64).sum()
        } else {
            inference.images.len() as u64
        };
        charge.usage(units, None);
    }
    let body = answers(&served.spec.labels, &inference, top_k, batched);
    Ok((inference_headers(&inference), Json(body)).into_response())
}

/// The texts or images of a JSON body, and whether the answer is a list.
fn json_inputs(
    body: PredictRequest,
    model: Option<&str>,
    state: &AppState,
) -> Result<(Inputs, bool), ApiError> {
    let given = [
        body.text.is_some(),
        body.inputs.is_some(),
        body.image.is_some(),
        body.images.is_some(),
    ];
    if given.iter().filter(|&&g| g).count() > 1 {
        return Err(ApiError::invalid(
            "give one of \"text\", \"inputs\", \"image\" or \"images\"",
        ));
    }
    let images = |list: Vec<String>| -> Result<Inputs, ApiError> {
        list.iter()
            .enumerate()
            .map(|(i, b64)| uploads::decode_base64(i, b64))
            .collect::<Result<Vec<_>, _>>()
            .map(Inputs::Images)
    };
    Ok(match (body.text, body.inputs, body.image, body.images) {
        (Some(text), ..) => (Inputs::Texts(vec![text]), false),
        (_, _, Some(image), _) => (images(vec![image])?, false),
        (_, _, _, Some(list)) => (images(list)?, true),
        (_, Some(inputs), ..) => {
            let (list, batched) = match inputs {
                TextOrTexts::One(one) => (vec![one], false),
                TextOrTexts::Many(many) => (many, true),
            };
            // `inputs` holds images when the named model takes images, or, with no model
            // named, when every input is an image data: URL.
            let for_images = match model {
                Some(name) => state.registry.task_of(name) == Some(Task::ImageClassification),
                None => !list.is_empty() && list.iter().all(|s| s.starts_with("data:image/")),
            };
            if for_images {
                (images(list)?, batched)
            } else {
                (Inputs::Texts(list), batched)
            }
        }
        (None, None, None, None) => {
            return Err(ApiError::invalid(
                "missing \"text\" (or \"inputs\", \"image\", \"images\")",
            ))
        }
    })
}

fn check_image_count(count: usize, limits: &Limits) -> Result<(), ApiError> {
    if count == 0 {
        return Err(ApiError::invalid("the list of images is empty"));
    }
    if count > limits.max_client_batch {
        return Err(ApiError::invalid(format!(
            "{count} images in one request; at most {} are accepted (MAX_CLIENT_BATCH)",
            limits.max_client_batch
        )));
    }
    Ok(())
}

/// Each input's best label (or its `top_k` labels), one answer or a list.
fn answers(labels: &[String], inference: &Inference, top_k: Option<u32>, batched: bool) -> Value {
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
            match top_k {
                Some(k) => serde_json::to_value(&ranked[..(k as usize).min(ranked.len())]),
                None => serde_json::to_value(&ranked[0]),
            }
            .expect("label scores serialize")
        })
        .collect();
    if batched {
        Value::Array(answers)
    } else {
        answers
            .into_iter()
            .next()
            .expect("one input gives one answer")
    }
}
