//! The RAG part of `/openapi.json`: files, vector stores, their files and batches, search,
//! and `/v1/responses`. Request bodies follow OpenAI's shapes; a few rules the server checks
//! cannot be said in OpenAPI 3.0 (an overlap at most half the chunk size, filter keys free of
//! quotes, at least one search weight above 0), so schemathesis holds these paths to "no
//! 5xx, documented statuses, content types and bodies" rather than exact acceptance.

use serde_json::{json, Value};

use super::openapi::responses;

/// Paths the RAG routes add; `rag` is false when the server has no embedding model.
pub(super) fn add(doc: &mut Value, rag: bool, body_errors: &[&str], get_errors: &[&str]) {
    let mut body_errors = body_errors.to_vec();
    body_errors.extend(["403", "404"]);
    let mut get_errors = get_errors.to_vec();
    get_errors.extend(["403", "404", "422"]);
    let (b, g) = (&body_errors[..], &get_errors[..]);
    let schemas = &mut doc["components"]["schemas"];
    for (name, schema) in component_schemas() {
        schemas[name] = schema;
    }
    let paths = &mut doc["paths"];
    let r = |name: &str| json!({"$ref": format!("#/components/schemas/{name}")});
    let list = |item: &str| {
        json!({"type": "object", "required": ["object", "data", "has_more"], "properties": {
            "object": {"type": "string", "enum": ["list"]},
            "data": {"type": "array", "items": {"$ref": format!("#/components/schemas/{item}")}},
            "has_more": {"type": "boolean"}}})
    };
    let json_body = |schema: Value| json!({"required": true, "content": {"application/json": {"schema": schema}}});
    let id = |name: &str| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string", "minLength": 1}});
    let paging = json!([
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100}},
        {"name": "order", "in": "query", "schema": {"type": "string", "enum": ["asc", "desc"]}},
        {"name": "after", "in": "query", "schema": {"type": "string"}},
        {"name": "before", "in": "query", "schema": {"type": "string"}}
    ]);
    let deleted = json!({"type": "object", "required": ["id", "object", "deleted"], "properties": {
        "id": {"type": "string"}, "object": {"type": "string"}, "deleted": {"type": "boolean"}}});

    paths["/v1/responses"] = json!({"post": {
        "summary": "Responses (OpenAI-compatible): answers through the gateway or a local model, with the file_search tool",
        "requestBody": json_body(r("ResponseRequest")),
        "responses": with_events(responses(r("Response"), b))}});
    if !rag {
        return;
    }
    paths["/v1/files"] = json!({
        "get": {"summary": "Uploaded files", "parameters": [
                {"name": "purpose", "in": "query", "schema": {"type": "string"}},
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 10000}},
                {"name": "order", "in": "query", "schema": {"type": "string", "enum": ["asc", "desc"]}},
                {"name": "after", "in": "query", "schema": {"type": "string"}}],
            "responses": responses(list("File"), g)},
        "post": {"summary": "Upload a file (multipart: file, purpose)",
            "requestBody": {"required": true, "content": {"multipart/form-data": {"schema": {
                "type": "object", "required": ["file", "purpose"], "properties": {
                    "file": {"type": "string", "format": "binary"},
                    "purpose": {"type": "string", "enum": ["assistants", "batch", "fine-tune", "vision", "user_data", "evals"]}}}}}},
            "responses": responses(r("File"), b)}});
    paths["/v1/files/{file_id}"] = json!({
        "parameters": [id("file_id")],
        "get": {"summary": "A file", "responses": responses(r("File"), g)},
        "delete": {"summary": "Delete a file and its chunks in every store", "responses": responses(deleted.clone(), g)}});
    let mut content = responses(json!({}), g);
    content["200"] = json!({"description": "the file's bytes", "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}});
    paths["/v1/files/{file_id}/content"] = json!({
        "parameters": [id("file_id")],
        "get": {"summary": "A file's bytes", "responses": content}});
    paths["/v1/vector_stores"] = json!({
        "get": {"summary": "Vector stores", "parameters": paging, "responses": responses(list("VectorStore"), g)},
        "post": {"summary": "Create a vector store", "requestBody": json_body(r("CreateVectorStore")),
            "responses": responses(r("VectorStore"), b)}});
    paths["/v1/vector_stores/{vector_store_id}"] = json!({
        "parameters": [id("vector_store_id")],
        "get": {"summary": "A vector store", "responses": responses(r("VectorStore"), g)},
        "post": {"summary": "Rename it or change its metadata", "requestBody": json_body(json!({"type": "object", "properties": {
            "name": {"type": "string", "nullable": true}, "metadata": r("Metadata")}})),
            "responses": responses(r("VectorStore"), b)},
        "delete": {"summary": "Delete a vector store (its files stay)", "responses": responses(deleted.clone(), g)}});
    let mut file_list_params = paging.as_array().cloned().unwrap_or_default();
    file_list_params.push(json!({"name": "filter", "in": "query", "schema": {"type": "string", "enum": ["in_progress", "completed", "failed", "cancelled"]}}));
    let mut store_files_params = file_list_params.clone();
    store_files_params.push(id("vector_store_id"));
    paths["/v1/vector_stores/{vector_store_id}/files"] = json!({
        "get": {"summary": "Files attached to a store, with their ingestion status", "parameters": store_files_params,
            "responses": responses(list("VectorStoreFile"), g)},
        "post": {"parameters": [id("vector_store_id")], "summary": "Attach a file (re-attaching re-ingests it)",
            "requestBody": json_body(json!({"type": "object", "required": ["file_id"], "properties": {
                "file_id": {"type": "string"}, "attributes": r("Attributes"), "chunking_strategy": r("ChunkingStrategy")}})),
            "responses": responses(r("VectorStoreFile"), b)}});
    paths["/v1/vector_stores/{vector_store_id}/files/{file_id}"] = json!({
        "parameters": [id("vector_store_id"), id("file_id")],
        "get": {"summary": "An attached file's status", "responses": responses(r("VectorStoreFile"), g)},
        "post": {"summary": "Replace its attributes", "requestBody": json_body(json!({"type": "object", "properties": {"attributes": r("Attributes")}})),
            "responses": responses(r("VectorStoreFile"), b)},
        "delete": {"summary": "Detach it and drop its chunks", "responses": responses(deleted, g)}});
    paths["/v1/vector_stores/{vector_store_id}/file_batches"] = json!({
        "parameters": [id("vector_store_id")],
        "post": {"summary": "Attach up to 10,000 files at once", "requestBody": json_body(json!({"type": "object", "properties": {
            "file_ids": {"type": "array", "minItems": 1, "maxItems": 10000, "items": {"type": "string"}},
            "files": {"type": "array", "minItems": 1, "maxItems": 10000, "items": {"type": "object", "required": ["file_id"], "properties": {
                "file_id": {"type": "string"}, "attributes": r("Attributes"), "chunking_strategy": r("ChunkingStrategy")}}},
            "attributes": r("Attributes"), "chunking_strategy": r("ChunkingStrategy")}})),
            "responses": responses(r("FileBatch"), b)}});
    paths["/v1/vector_stores/{vector_store_id}/file_batches/{batch_id}"] = json!({
        "parameters": [id("vector_store_id"), id("batch_id")],
        "get": {"summary": "A batch's status and counts", "responses": responses(r("FileBatch"), g)}});
    paths["/v1/vector_stores/{vector_store_id}/file_batches/{batch_id}/cancel"] = json!({
        "parameters": [id("vector_store_id"), id("batch_id")],
        "post": {"summary": "Cancel the batch's unfinished files", "responses": responses(r("FileBatch"), g)}});
    let mut batch_files_params = file_list_params;
    batch_files_params.extend([id("vector_store_id"), id("batch_id")]);
    paths["/v1/vector_stores/{vector_store_id}/file_batches/{batch_id}/files"] = json!({
        "get": {"summary": "A batch's files", "parameters": batch_files_params,
            "responses": responses(list("VectorStoreFile"), g)}});
    paths["/v1/vector_stores/{vector_store_id}/search"] = json!({
        "parameters": [id("vector_store_id")],
        "post": {"summary": "Hybrid search (dense + BM25, fused by RRF); each hit says where each leg ranked it",
            "requestBody": json_body(r("SearchRequest")),
            "responses": responses(r("SearchPage"), b)}});
}

/// The 200 of `/v1/responses` may also be the Responses event stream.
fn with_events(mut responses: Value) -> Value {
    responses["200"]["content"]["text/event-stream"] = json!({"schema": {"type": "object",
        "required": ["data"], "properties": {"data": {"type": "string", "minLength": 1}, "event": {"type": "string"}}}});
    responses["4XX"] = json!({"description": "the model's client error, passed on",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    responses
}

fn component_schemas() -> Vec<(&'static str, Value)> {
    let counts = json!({"type": "object", "required": ["in_progress", "completed", "failed", "cancelled", "total"],
        "properties": {"in_progress": {"type": "integer"}, "completed": {"type": "integer"}, "failed": {"type": "integer"},
                       "cancelled": {"type": "integer"}, "total": {"type": "integer"}}});
    let status =
        json!({"type": "string", "enum": ["in_progress", "completed", "failed", "cancelled"]});
    vec![
        (
            "File",
            json!({"type": "object", "required": ["id", "object", "bytes", "created_at", "filename", "purpose"], "properties": {
            "id": {"type": "string"}, "object": {"type": "string", "enum": ["file"]}, "bytes": {"type": "integer", "minimum": 0},
            "created_at": {"type": "integer"}, "filename": {"type": "string"}, "purpose": {"type": "string"}}}),
        ),
        (
            "Metadata",
            json!({"type": "object", "nullable": true, "maxProperties": 16,
            "additionalProperties": {"type": "string", "maxLength": 512}}),
        ),
        (
            "Attributes",
            json!({"type": "object", "nullable": true, "maxProperties": 16,
            "additionalProperties": {"oneOf": [{"type": "string", "maxLength": 512}, {"type": "number"}, {"type": "boolean"}]}}),
        ),
        (
            "ChunkingStrategy",
            json!({"nullable": true, "oneOf": [
            {"type": "object", "required": ["type"], "properties": {"type": {"type": "string", "enum": ["auto"]}}},
            {"type": "object", "required": ["type", "static"], "properties": {
                "type": {"type": "string", "enum": ["static"]},
                "static": {"type": "object", "required": ["max_chunk_size_tokens", "chunk_overlap_tokens"], "properties": {
                    "max_chunk_size_tokens": {"type": "integer", "minimum": 100, "maximum": 4096},
                    "chunk_overlap_tokens": {"type": "integer", "minimum": 0}}}}}]}),
        ),
        (
            "CreateVectorStore",
            json!({"type": "object", "properties": {
            "name": {"type": "string", "nullable": true},
            "description": {"type": "string", "nullable": true},
            "file_ids": {"type": "array", "maxItems": 500, "items": {"type": "string"}, "nullable": true},
            "metadata": {"$ref": "#/components/schemas/Metadata"},
            "chunking_strategy": {"$ref": "#/components/schemas/ChunkingStrategy"}}}),
        ),
        (
            "VectorStore",
            json!({"type": "object", "required": ["id", "object", "created_at", "name", "file_counts", "status", "usage_bytes"], "properties": {
            "id": {"type": "string"}, "object": {"type": "string", "enum": ["vector_store"]}, "created_at": {"type": "integer"},
            "name": {"type": "string"}, "usage_bytes": {"type": "integer"}, "file_counts": counts,
            "status": {"type": "string", "enum": ["in_progress", "completed", "expired"]}, "metadata": {"type": "object"}}}),
        ),
        (
            "VectorStoreFile",
            json!({"type": "object", "required": ["id", "object", "created_at", "vector_store_id", "status"], "properties": {
            "id": {"type": "string"}, "object": {"type": "string", "enum": ["vector_store.file"]}, "created_at": {"type": "integer"},
            "vector_store_id": {"type": "string"}, "status": status,
            "last_error": {"type": "object", "nullable": true, "required": ["code", "message"], "properties": {
                "code": {"type": "string"}, "message": {"type": "string"}}},
            "attributes": {"type": "object"}, "usage_bytes": {"type": "integer"}}}),
        ),
        (
            "FileBatch",
            json!({"type": "object", "required": ["id", "object", "created_at", "vector_store_id", "status", "file_counts"], "properties": {
            "id": {"type": "string"}, "object": {"type": "string", "enum": ["vector_store.files_batch"]}, "created_at": {"type": "integer"},
            "vector_store_id": {"type": "string"}, "status": status, "file_counts": counts}}),
        ),
        (
            "Filter",
            json!({"type": "object", "required": ["type"], "properties": {
            "type": {"type": "string", "enum": ["eq", "ne", "gt", "gte", "lt", "lte", "in", "nin", "and", "or"]},
            "key": {"type": "string"}, "value": {},
            "filters": {"type": "array", "items": {"$ref": "#/components/schemas/Filter"}}}}),
        ),
        (
            "SearchRequest",
            json!({"type": "object", "required": ["query"], "properties": {
            "query": {"oneOf": [{"type": "string", "minLength": 1, "maxLength": 4096},
                                {"type": "array", "minItems": 1, "maxItems": 8, "items": {"type": "string", "minLength": 1, "maxLength": 4096}}]},
            "max_num_results": {"type": "integer", "minimum": 1, "maximum": 50},
            "filters": {"$ref": "#/components/schemas/Filter"},
            "rewrite_query": {"type": "boolean"},
            "ranking_options": {"type": "object", "properties": {
                "ranker": {"type": "string"},
                "score_threshold": {"type": "number", "minimum": 0, "maximum": 1},
                "hybrid_search": {"type": "object", "properties": {
                    "embedding_weight": {"type": "number", "minimum": 0}, "text_weight": {"type": "number", "minimum": 0}}}}}}}),
        ),
        (
            "SearchPage",
            json!({"type": "object", "required": ["object", "search_query", "data", "has_more"], "properties": {
            "object": {"type": "string", "enum": ["vector_store.search_results.page"]},
            "search_query": {"type": "array", "items": {"type": "string"}},
            "has_more": {"type": "boolean"},
            "data": {"type": "array", "items": {"type": "object", "required": ["file_id", "filename", "score", "content"], "properties": {
                "file_id": {"type": "string"}, "filename": {"type": "string"}, "score": {"type": "number", "minimum": 0, "maximum": 1},
                "attributes": {"type": "object"},
                "content": {"type": "array", "items": {"type": "object", "required": ["type", "text"]}},
                "ranking": {"type": "object"}}}}}}),
        ),
        (
            "ResponseRequest",
            json!({"type": "object", "required": ["model", "input"], "properties": {
            "model": {"type": "string", "minLength": 1},
            "input": {"oneOf": [{"type": "string", "minLength": 1},
                {"type": "array", "minItems": 1, "items": {"type": "object", "required": ["role", "content"], "properties": {
                    "role": {"type": "string", "enum": ["user", "assistant", "system", "developer"]},
                    "content": {"type": "string"}}}}]},
            "instructions": {"type": "string", "nullable": true},
            "tools": {"type": "array", "items": {"type": "object", "required": ["type", "vector_store_ids"], "properties": {
                "type": {"type": "string", "enum": ["file_search"]},
                "vector_store_ids": {"type": "array", "minItems": 1, "maxItems": 8, "items": {"type": "string"}},
                "max_num_results": {"type": "integer", "minimum": 1, "maximum": 50}}}},
            "stream": {"type": "boolean", "nullable": true},
            "max_output_tokens": {"type": "integer", "minimum": 16, "nullable": true},
            "temperature": {"type": "number", "minimum": 0, "maximum": 2, "nullable": true}}}),
        ),
        (
            "Response",
            json!({"type": "object", "required": ["id", "object", "status", "output"], "properties": {
            "id": {"type": "string"}, "object": {"type": "string", "enum": ["response"]},
            "status": {"type": "string", "enum": ["completed", "failed", "in_progress"]},
            "output": {"type": "array", "items": {"type": "object", "required": ["type"]}}}}),
        ),
    ]
}
