//! `GET /openapi.json`: the API described for clients and for schema-driven tests.
//!
//! Written by hand beside the handlers it describes, and filled in from the running server
//! (its model names, dimensions and limits), so that a request the document calls valid is one
//! the server accepts. schemathesis checks exactly that in the tests, along with every answer
//! against the documented statuses and schemas.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use keel_engine::Task;
use serde_json::{json, Value};

use crate::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route(
        "/openapi.json",
        get(|State(state): State<AppState>| async move { Json(document(&state)) }),
    )
}

/// A string with at least one character that is not Unicode White_Space (what Rust's
/// `trim` removes): Keel refuses blank inputs.
const NOT_BLANK: &str =
    "[^\\u0009-\\u000d\\u0020\\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]";

/// What the running server serves, for the document's enums and bounds.
struct Served {
    classifiers: Vec<String>,
    embedders: Vec<String>,
    dimensions: Vec<usize>,
    max_inputs: usize,
    keys: bool,
    limited: bool,
}

impl Served {
    fn of(state: &AppState) -> Self {
        let mut served = Served {
            classifiers: Vec::new(),
            embedders: Vec::new(),
            dimensions: Vec::new(),
            max_inputs: state.limits.max_client_batch,
            keys: !state.api_keys.is_empty(),
            limited: state.limiter.is_some(),
        };
        for m in state.registry.summaries() {
            match m.task {
                Some(Task::Classification) => served.classifiers.push(m.name),
                Some(Task::Embedding) => {
                    served.embedders.push(m.name);
                    served.dimensions.extend(m.dimensions);
                }
                _ => {}
            }
        }
        served.dimensions.sort_unstable();
        served.dimensions.dedup();
        served
    }
}

fn error_responses(codes: &[&str]) -> Value {
    let mut map = serde_json::Map::new();
    for code in codes {
        map.insert(
            code.to_string(),
            json!({"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}),
        );
    }
    Value::Object(map)
}

pub(super) fn responses(ok: Value, errors: &[&str]) -> Value {
    let mut all = error_responses(errors);
    all["200"] = json!({"description": "success", "content": {"application/json": {"schema": ok}}});
    all
}

/// One of `values`, or null (OpenAPI 3.0 wants the null among the enum's values too).
fn nullable_enum<T: serde::Serialize>(values: &[T]) -> Value {
    let mut values: Vec<Value> = values.iter().map(|v| json!(v)).collect();
    let kind = match values.first() {
        Some(Value::Number(_)) => "integer",
        _ => "string",
    };
    values.push(Value::Null);
    json!({"type": kind, "enum": values, "nullable": true})
}

pub fn document(state: &AppState) -> Value {
    let served = Served::of(state);
    let mut body_errors = vec!["400", "408", "413", "415", "422", "429", "503", "504"];
    let mut get_errors = vec![];
    if served.keys {
        body_errors.push("401");
        get_errors.push("401");
    }
    if served.limited {
        get_errors.extend(["429", "503"]);
    }
    let text = json!({"type": "string", "pattern": NOT_BLANK});
    let mut doc = body(&served, text, &body_errors, &get_errors);
    if let Some(gateway) = state.gateway.as_ref().map(|g| g.config()) {
        if !gateway.providers.is_empty() {
            add_chat(&mut doc, gateway, &body_errors);
        }
    }
    super::openapi_rag::add(&mut doc, state.rag.is_some(), &body_errors, &get_errors);
    if served.keys {
        // Every path but the probes needs a key, as a bearer token or in x-api-key.
        doc["components"]["securitySchemes"] = json!({
            "bearer": {"type": "http", "scheme": "bearer"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"}
        });
        doc["security"] = json!([{"bearer": []}, {"apiKey": []}]);
        for probe in ["/health", "/ready"] {
            doc["paths"][probe]["get"]["security"] = json!([]);
        }
    }
    doc
}

/// `POST /v1/chat/completions`, when the gateway has providers. Keel checks what it needs
/// (model, messages, stream) and relays the rest for the upstream to judge, so the request
/// schema is OpenAI's outline, and an upstream's own 4xx comes back as it was.
fn add_chat(doc: &mut Value, gateway: &keel_gateway::GatewayConfig, body_errors: &[&str]) {
    // The names a client may use: routes, the models providers list, and any name on a
    // provider that forwards any model; with a `*` route, any name at all.
    let mut names: Vec<String> = gateway
        .routes
        .keys()
        .filter(|r| *r != "*")
        .cloned()
        .collect();
    for (name, p) in &gateway.providers {
        names.extend(p.models.iter().map(|m| format!("{name}/{m}")));
    }
    let open: Vec<String> = gateway
        .providers
        .iter()
        .filter(|(_, p)| p.allow_any_model)
        .map(|(name, _)| regex_escape(name))
        .collect();
    let mut choices = Vec::new();
    if !names.is_empty() {
        choices.push(json!({"type": "string", "enum": names}));
    }
    if !open.is_empty() {
        choices.push(json!({"type": "string", "pattern": format!("^({})/.+$", open.join("|"))}));
    }
    let model = if gateway.routes.contains_key("*") || choices.is_empty() {
        json!({"type": "string", "minLength": 1})
    } else if choices.len() == 1 {
        choices.remove(0)
    } else {
        json!({"anyOf": choices})
    };
    let request = json!({"type": "object", "required": ["model", "messages"], "properties": {
        "model": model,
        "messages": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["role"], "properties": {
                "role": {"type": "string", "enum": ["system", "developer", "user", "assistant"]},
                "content": {"type": "string"}}}},
        "stream": {"type": "boolean", "nullable": true},
        "max_tokens": {"type": "integer", "minimum": 1, "maximum": 1_000_000, "nullable": true},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2, "nullable": true}}});
    let completion = json!({"type": "object", "required": ["object", "choices"], "properties": {
        "object": {"type": "string", "enum": ["chat.completion"]},
        "choices": {"type": "array", "items": {"type": "object", "required": ["index", "message"]}},
        "degraded": {"type": "boolean"}}});
    let mut errors = body_errors.to_vec();
    errors.push("404");
    let mut responses = error_responses(&errors);
    responses["200"] = json!({"description": "the answer, or the route's degraded answer", "content": {
        "application/json": {"schema": completion},
        // One event: its data is a JSON chunk, an error object after a cut, or [DONE].
        "text/event-stream": {"schema": {"type": "object", "required": ["data"], "properties": {
            "data": {"type": "string", "minLength": 1},
            "event": {"type": "string"}}}}}});
    responses["4XX"] = json!({"description": "an upstream's client error, passed on",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    doc["paths"]["/v1/chat/completions"] = json!({"post": {
        "summary": "Chat completions (OpenAI-compatible) through the gateway",
        "requestBody": {"required": true, "content": {"application/json": {"schema": request}}},
        "responses": responses}});
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let special = "\\.+*?()|[]{}^$".contains(c);
            special
                .then_some('\\')
                .into_iter()
                .chain(std::iter::once(c))
        })
        .collect()
}

fn body(served: &Served, text: Value, body_errors: &[&str], get_errors: &[&str]) -> Value {
    let texts =
        json!({"type": "array", "minItems": 1, "maxItems": served.max_inputs, "items": text});
    json!({
        "openapi": "3.0.3",
        "info": {"title": "Keel", "version": env!("CARGO_PKG_VERSION"),
                 "description": "A production runtime for AI models."},
        "paths": {
            "/health": {"get": {"summary": "Liveness", "responses": responses(json!({"$ref": "#/components/schemas/Health"}), &[])}},
            "/ready": {"get": {"summary": "Readiness: every model loaded and warmed",
                "responses": {
                    "200": {"description": "ready", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Readiness"}}}},
                    "503": {"description": "not ready", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Readiness"}}}}
                }}},
            "/predict": {"post": {
                "summary": "Text and image classification",
                "description": "Also accepts the text in the query string instead of a body: POST /predict?text=...&model=...&top_k=... . Images go to an image model: as multipart/form-data file parts (text parts model and top_k), as a raw body with Content-Type image/jpeg, png, webp, gif, bmp or tiff (?model=&top_k= in the query), or in JSON as {\"image\": base64 or data: URL}, {\"images\": [...]}, or {\"inputs\": [...]} naming an image model. Bad images answer 413 image_too_large, 415 unsupported_image_format or 422 invalid_image.",
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}}}},
                "responses": responses(json!({"oneOf": [
                    {"$ref": "#/components/schemas/LabelScore"},
                    {"type": "array", "items": {"$ref": "#/components/schemas/LabelScore"}},
                    {"type": "array", "items": {"type": "array", "items": {"$ref": "#/components/schemas/LabelScore"}}}
                ]}), body_errors)
            }},
            "/v1/embeddings": {"post": {
                "summary": "Embeddings (OpenAI-compatible)",
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/EmbeddingsRequest"}}}},
                "responses": responses(json!({"$ref": "#/components/schemas/EmbeddingsResponse"}), body_errors)
            }},
            "/v1/models": {"get": {"summary": "Served models (OpenAI-compatible)", "responses": responses(json!({"$ref": "#/components/schemas/ModelList"}), get_errors)}},
            "/info": {"get": {"summary": "Models, tasks, limits, version and settings", "responses": responses(json!({"type": "object"}), get_errors)}},
            "/openapi.json": {"get": {"summary": "This document", "responses": responses(json!({"type": "object"}), if served.keys { &["401"] } else { &[] })}}
        },
        "components": {"schemas": {
            "Error": {"type": "object", "required": ["error"], "properties": {"error": {
                "type": "object", "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}},
            "Health": {"type": "object", "required": ["status"], "properties": {"status": {"type": "string", "enum": ["ok"]}}},
            "Readiness": {"type": "object", "required": ["status", "models"], "properties": {
                "status": {"type": "string", "enum": ["ready", "loading", "failed", "draining", "rate_limit_store_unreachable"]},
                "rate_limit_store": {"type": "string"},
                "models": {"type": "object", "additionalProperties": {"type": "object", "required": ["state"], "properties": {
                    "state": {"type": "string", "enum": ["ready", "loading", "failed"]},
                    "reason": {"type": "string"}}}}}},
            "PredictRequest": {"type": "object",
                "oneOf": [{"required": ["text"]}, {"required": ["inputs"]}],
                "properties": {
                    "text": text,
                    "inputs": {"oneOf": [text, texts]},
                    "model": nullable_enum(&served.classifiers),
                    "top_k": {"type": "integer", "minimum": 1, "maximum": u32::MAX, "nullable": true}}},
            "LabelScore": {"type": "object", "required": ["label", "score"], "properties": {
                "label": {"type": "string"}, "score": {"type": "number", "minimum": 0, "maximum": 1}}},
            "EmbeddingsRequest": {"type": "object", "required": ["input"], "properties": {
                "input": {"oneOf": [text, texts]},
                "model": nullable_enum(&served.embedders),
                "encoding_format": nullable_enum(&["float", "base64"]),
                "dimensions": nullable_enum(&served.dimensions),
                "user": {"type": "string", "nullable": true}}},
            "EmbeddingsResponse": {"type": "object", "required": ["object", "data", "model", "usage"], "properties": {
                "object": {"type": "string", "enum": ["list"]},
                "data": {"type": "array", "items": {"type": "object", "required": ["object", "embedding", "index"], "properties": {
                    "object": {"type": "string", "enum": ["embedding"]},
                    "embedding": {"oneOf": [{"type": "array", "items": {"type": "number"}}, {"type": "string"}]},
                    "index": {"type": "integer", "minimum": 0}}}},
                "model": {"type": "string"},
                "usage": {"type": "object", "required": ["prompt_tokens", "total_tokens"], "properties": {
                    "prompt_tokens": {"type": "integer"}, "total_tokens": {"type": "integer"}}}}},
            "ModelList": {"type": "object", "required": ["object", "data"], "properties": {
                "object": {"type": "string", "enum": ["list"]},
                "data": {"type": "array", "items": {"type": "object", "required": ["id", "object", "owned_by"], "properties": {
                    "id": {"type": "string"}, "object": {"type": "string"}, "created": {"type": "integer"}, "owned_by": {"type": "string"}}}}}}
        }}
    })
}
