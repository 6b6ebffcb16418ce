//! `GET /openapi.json`: the API described for clients and for schema-driven tests.
//!
//! Written by hand beside the handlers it describes; the integration tests compare real
//! responses with it.

use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/openapi.json", get(|| async { Json(document()) }))
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

fn responses(ok: Value, errors: &[&str]) -> Value {
    let mut all = error_responses(errors);
    all["200"] = json!({"description": "success", "content": {"application/json": {"schema": ok}}});
    all
}

pub fn document() -> Value {
    let body_errors = ["400", "413", "415", "422", "429", "503"];
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
                "summary": "Text classification",
                "parameters": [
                    {"name": "text", "in": "query", "required": false, "schema": {"type": "string"}},
                    {"name": "model", "in": "query", "required": false, "schema": {"type": "string"}},
                    {"name": "top_k", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 1}}
                ],
                "requestBody": {"required": false, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}}}},
                "responses": responses(json!({"oneOf": [
                    {"$ref": "#/components/schemas/LabelScore"},
                    {"type": "array", "items": {"$ref": "#/components/schemas/LabelScore"}},
                    {"type": "array", "items": {"type": "array", "items": {"$ref": "#/components/schemas/LabelScore"}}}
                ]}), &body_errors)
            }},
            "/v1/embeddings": {"post": {
                "summary": "Embeddings (OpenAI-compatible)",
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/EmbeddingsRequest"}}}},
                "responses": responses(json!({"$ref": "#/components/schemas/EmbeddingsResponse"}), &body_errors)
            }},
            "/v1/models": {"get": {"summary": "Served models (OpenAI-compatible)", "responses": responses(json!({"$ref": "#/components/schemas/ModelList"}), &[])}},
            "/info": {"get": {"summary": "Models, tasks, limits, version and settings", "responses": responses(json!({"type": "object"}), &[])}},
            "/openapi.json": {"get": {"summary": "This document", "responses": responses(json!({"type": "object"}), &[])}}
        },
        "components": {"schemas": {
            "Error": {"type": "object", "required": ["error"], "properties": {"error": {
                "type": "object", "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}},
            "Health": {"type": "object", "required": ["status"], "properties": {"status": {"type": "string", "enum": ["ok"]}}},
            "Readiness": {"type": "object", "required": ["status", "models"], "properties": {
                "status": {"type": "string", "enum": ["ready", "loading", "failed", "draining"]},
                "models": {"type": "object", "additionalProperties": {"type": "object", "required": ["state"], "properties": {
                    "state": {"type": "string", "enum": ["ready", "loading", "failed"]},
                    "reason": {"type": "string"}}}}}},
            "PredictRequest": {"type": "object", "properties": {
                "text": {"type": "string", "minLength": 1},
                "inputs": {"oneOf": [{"type": "string", "minLength": 1}, {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}}]},
                "model": {"type": "string"},
                "top_k": {"type": "integer", "minimum": 1}}},
            "LabelScore": {"type": "object", "required": ["label", "score"], "properties": {
                "label": {"type": "string"}, "score": {"type": "number", "minimum": 0, "maximum": 1}}},
            "EmbeddingsRequest": {"type": "object", "required": ["input"], "properties": {
                "input": {"oneOf": [{"type": "string", "minLength": 1}, {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}}]},
                "model": {"type": "string"},
                "encoding_format": {"type": "string", "enum": ["float", "base64"]},
                "dimensions": {"type": "integer", "minimum": 1},
                "user": {"type": "string"}}},
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
