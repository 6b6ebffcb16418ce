//! `POST /v1/responses` with the `file_search` tool: retrieve from the caller's vector
//! stores, then answer through the gateway (a gateway route or a local model, resolved as
//! `/v1/chat/completions` resolves it), with `[n]` markers turned into `file_citation`
//! annotations (`keel_rag::answer`).
//!
//! When no model can answer (every target failed, the local model is down or not loaded),
//! the answer is the retrieved passages themselves, marked degraded (`x-keel-degraded` and
//! `keel.degraded`), never a 500. A client error from the model (4xx, 429) is passed on.
//! Streaming sends the Responses event stream (`responses_stream.rs`).

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json, Router};
use keel_gateway::{Answer, ChatRequest, Gateway, Served};
use keel_limits::Caller;
use keel_rag::answer::{degraded_answer, system_prompt, Citation, CitationParser, Passage};
use keel_retrieval::Hit;
use serde_json::{json, Map, Value};

use super::chat::{served_headers, DEGRADED};
use super::rag::rag;
use super::responses_stream::{stream_response, Source};
use super::vector_stores::{search_options, SearchOptions};
use crate::error::ApiError;
use crate::json::{body_error, check_json_content_type, parse_json};
use crate::middleware::{request_id, RequestId};
use crate::AppState;

/// Prompt budget for gateway routes, whose context is not known here: about 3,000 tokens.
const GATEWAY_PROMPT_CHARS: usize = 12_000;
/// Tokens kept free for the answer when the request sets no `max_output_tokens`.
const DEFAULT_ANSWER_TOKENS: u32 = 256;
/// Vector stores one `file_search` tool may name (OpenAI's limit).
const MAX_TOOL_STORES: usize = 8;

const RETRIEVE_MS: HeaderName = HeaderName::from_static("x-keel-retrieve-ms");
const GENERATE_MS: HeaderName = HeaderName::from_static("x-keel-generate-ms");

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/responses", post(create_response))
}

/// A checked request.
pub(super) struct Parsed {
    pub model: String,
    /// The conversation as chat messages (`role`, `content` strings).
    pub messages: Vec<Value>,
    /// The last user message: what `file_search` searches for.
    pub query: Option<String>,
    pub instructions: Option<String>,
    pub search: Option<ToolSearch>,
    pub include_results: bool,
    pub stream: bool,
    pub max_output_tokens: Option<u32>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    /// Echoed in the response object.
    pub echo: Map<String, Value>,
}

pub(super) struct ToolSearch {
    pub store_ids: Vec<String>,
    pub options: SearchOptions,
}

fn parse(headers: &HeaderMap, body: Result<Bytes, BytesRejection>) -> Result<Parsed, ApiError> {
    check_json_content_type(headers)?;
    let body = body.map_err(|rejection| body_error(&rejection))?;
    let Value::Object(body) = parse_json::<Value>(&body)? else {
        return Err(ApiError::invalid("the body must be a JSON object"));
    };
    for field in ["previous_response_id", "conversation", "prompt"] {
        if body.get(field).is_some_and(|v| !v.is_null()) {
            return Err(ApiError::invalid(format!(
                "{field}: not supported: Keel keeps no conversation state, send the whole input"
            )));
        }
    }
    if body.get("background").and_then(Value::as_bool) == Some(true) {
        return Err(ApiError::invalid("background: not supported"));
    }
    let model = match body.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        _ => return Err(ApiError::invalid("model: must be a non-empty string")),
    };
    let instructions = optional_string(&body, "instructions")?;
    let messages = input_messages(body.get("input"))?;
    let query = messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .and_then(|m| m["content"].as_str())
        .map(str::to_owned);
    let tool_choice = body.get("tool_choice").cloned().unwrap_or(json!("auto"));
    let run_tools = match &tool_choice {
        Value::String(s) if s == "none" => false,
        Value::String(s) if s == "auto" || s == "required" => true,
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("file_search") => true,
        _ => return Err(ApiError::invalid(
            "tool_choice: must be \"auto\", \"required\", \"none\" or {\"type\": \"file_search\"}",
        )),
    };
    let search = match body.get("tools").filter(|t| !t.is_null()) {
        None => None,
        Some(Value::Array(tools)) => file_search_tool(tools)?,
        Some(_) => return Err(ApiError::invalid("tools: must be a list")),
    };
    if search.is_none() && tool_choice != json!("auto") && tool_choice != json!("none") {
        return Err(ApiError::invalid(
            "tool_choice: asks for file_search, but tools has no file_search tool",
        ));
    }
    let search = search.filter(|_| run_tools);
    if search.is_some() && query.as_deref().is_none_or(|q| q.trim().is_empty()) {
        return Err(ApiError::invalid(
            "input: file_search needs a user message with text to search for",
        ));
    }
    let include_results = match body.get("include").filter(|v| !v.is_null()) {
        None => false,
        Some(Value::Array(items)) => items
            .iter()
            .any(|i| i.as_str() == Some("file_search_call.results")),
        Some(_) => return Err(ApiError::invalid("include: must be a list of strings")),
    };
    let stream = match body.get("stream").filter(|v| !v.is_null()) {
        None => false,
        Some(v) => v
            .as_bool()
            .ok_or_else(|| ApiError::invalid("stream: must be true or false"))?,
    };
    let max_output_tokens = match body.get("max_output_tokens").filter(|v| !v.is_null()) {
        None => None,
        Some(v) => Some(
            v.as_u64()
                .filter(|n| (16..=1_000_000).contains(n))
                .ok_or_else(|| {
                    ApiError::invalid("max_output_tokens: must be a whole number of at least 16")
                })? as u32,
        ),
    };
    let temperature = optional_number(&body, "temperature", 0.0, 2.0)?;
    let top_p = optional_number(&body, "top_p", 0.0, 1.0)?;
    let metadata = match body.get("metadata").filter(|v| !v.is_null()) {
        None => json!({}),
        Some(m @ Value::Object(_)) => m.clone(),
        Some(_) => return Err(ApiError::invalid("metadata: must be an object")),
    };
    let mut echo = Map::new();
    echo.insert("model".into(), json!(model));
    echo.insert("instructions".into(), json!(instructions));
    echo.insert("metadata".into(), metadata);
    echo.insert("temperature".into(), json!(temperature));
    echo.insert("top_p".into(), json!(top_p));
    echo.insert("max_output_tokens".into(), json!(max_output_tokens));
    echo.insert("tool_choice".into(), tool_choice);
    echo.insert(
        "tools".into(),
        body.get("tools").cloned().unwrap_or(json!([])),
    );
    Ok(Parsed {
        model,
        messages,
        query,
        instructions,
        search,
        include_results,
        stream,
        max_output_tokens,
        temperature,
        top_p,
        echo,
    })
}

fn optional_string(body: &Map<String, Value>, field: &str) -> Result<Option<String>, ApiError> {
    match body.get(field).filter(|v| !v.is_null()) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::invalid(format!("{field}: must be a string"))),
    }
}

fn optional_number(
    body: &Map<String, Value>,
    field: &str,
    min: f64,
    max: f64,
) -> Result<Option<f64>, ApiError> {
    match body.get(field).filter(|v| !v.is_null()) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .filter(|n| (min..=max).contains(n))
            .map(Some)
            .ok_or_else(|| {
                ApiError::invalid(format!("{field}: must be a number from {min} to {max}"))
            }),
    }
}

/// `input` as chat messages: a string is one user message; a list holds messages whose
/// content is a string or `input_text` / `output_text` parts.
fn input_messages(input: Option<&Value>) -> Result<Vec<Value>, ApiError> {
    let items = match input {
        Some(Value::String(s)) if !s.trim().is_empty() => {
            return Ok(vec![json!({"role": "user", "content": s})])
        }
        Some(Value::Array(items)) if !items.is_empty() => items,
        _ => {
            return Err(ApiError::invalid(
                "input: must be a non-empty string or a non-empty list of messages",
            ))
        }
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let kind = item
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("message");
            if kind != "message" {
                return Err(ApiError::invalid(format!(
                    "input[{i}].type: '{kind}' is not supported: only messages"
                )));
            }
            let role = match item.get("role").and_then(Value::as_str) {
                Some(r @ ("user" | "assistant" | "system")) => r,
                Some("developer") => "system",
                _ => {
                    return Err(ApiError::invalid(format!(
                        "input[{i}].role: must be user, assistant, system or developer"
                    )))
                }
            };
            let text = match item.get("content") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => parts
                    .iter()
                    .enumerate()
                    .map(|(j, p)| match p.get("type").and_then(Value::as_str) {
                        Some("input_text" | "output_text") => p
                            .get("text")
                            .and_then(Value::as_str)
                            .map(str::to_owned)
                            .ok_or_else(|| {
                                ApiError::invalid(format!(
                                    "input[{i}].content[{j}].text: must be a string"
                                ))
                            }),
                        other => Err(ApiError::invalid(format!(
                            "input[{i}].content[{j}].type: {} is not supported: only text",
                            other.map_or("a missing type".to_owned(), |t| format!("'{t}'"))
                        ))),
                    })
                    .collect::<Result<Vec<_>, _>>()?
                    .join("\n"),
                _ => {
                    return Err(ApiError::invalid(format!(
                        "input[{i}].content: must be a string or a list of text parts"
                    )))
                }
            };
            Ok(json!({"role": role, "content": text}))
        })
        .collect()
}

/// The one `file_search` tool, checked; any other tool type is refused by name.
fn file_search_tool(tools: &[Value]) -> Result<Option<ToolSearch>, ApiError> {
    let mut found = None;
    for (i, tool) in tools.iter().enumerate() {
        let kind = tool.get("type").and_then(Value::as_str).unwrap_or("");
        if kind != "file_search" {
            return Err(ApiError::invalid(format!(
                "tools[{i}].type: '{kind}' is not supported: Keel serves only file_search"
            )));
        }
        if found.is_some() {
            return Err(ApiError::invalid(format!(
                "tools[{i}]: only one file_search tool"
            )));
        }
        let prefix = format!("tools[{i}].");
        let store_ids: Vec<String> = match tool.get("vector_store_ids") {
            Some(Value::Array(ids)) if (1..=MAX_TOOL_STORES).contains(&ids.len()) => ids
                .iter()
                .map(|id| id.as_str().map(str::to_owned))
                .collect::<Option<_>>()
                .ok_or_else(|| {
                    ApiError::invalid(format!("{prefix}vector_store_ids: must be strings"))
                })?,
            _ => {
                return Err(ApiError::invalid(format!(
                    "{prefix}vector_store_ids: 1 to {MAX_TOOL_STORES} vector store ids"
                )))
            }
        };
        let options = search_options(
            tool.get("max_num_results"),
            tool.get("filters"),
            tool.get("ranking_options"),
            &prefix,
        )?;
        found = Some(ToolSearch { store_ids, options });
    }
    Ok(found)
}

/// What was retrieved for an answer.
pub(super) struct Retrieved {
    pub hits: Vec<Hit>,
    pub passages: Vec<Passage>,
    pub millis: u64,
}

async fn retrieve(
    state: &AppState,
    caller: Option<Extension<Caller>>,
    search: &ToolSearch,
    query: &str,
) -> Result<Retrieved, ApiError> {
    let started = Instant::now();
    let rag = rag(state, caller)?;
    let mut hits: Vec<Hit> = Vec::new();
    for store_id in &search.store_ids {
        let request = search
            .options
            .request(store_id.clone(), vec![query.to_owned()]);
        hits.extend(rag.rag.search(&rag.owner, request).await?);
    }
    hits.sort_by(|a, b| b.score.total_cmp(&a.score));
    hits.truncate(search.options.max_results);
    let passages = hits
        .iter()
        .map(|h| Passage {
            file_id: h.chunk.file_id.clone(),
            filename: h.chunk.filename.clone(),
            text: h.chunk.text.clone(),
            score: h.score,
        })
        .collect();
    let millis = started.elapsed().as_millis() as u64;
    metrics::histogram!("keel_rag_answer_seconds", "phase" => "retrieve")
        .record(millis as f64 / 1000.0);
    Ok(Retrieved {
        hits,
        passages,
        millis,
    })
}

/// How many characters of passages fit the model's context: a local model's window less
/// the answer and the question (about 3 characters a token, on the safe side), or a fixed
/// budget for a gateway route.
fn prompt_budget(state: &AppState, p: &Parsed) -> usize {
    let local = p.model.strip_prefix("local/").unwrap_or(&p.model);
    match state.registry.generator(local) {
        Ok(g) => {
            let question: usize = p
                .messages
                .iter()
                .filter_map(|m| m["content"].as_str())
                .map(|s| s.chars().count() / 3 + 8)
                .sum();
            let reserved =
                p.max_output_tokens.unwrap_or(DEFAULT_ANSWER_TOKENS) as usize + question + 128;
            (g.context_per_request() as usize)
                .saturating_sub(reserved)
                .max(100)
                * 3
        }
        Err(_) => GATEWAY_PROMPT_CHARS,
    }
}

fn chat_body(p: &Parsed, system: Option<String>) -> Value {
    let mut messages = Vec::with_capacity(p.messages.len() + 1);
    if let Some(s) = system {
        messages.push(json!({"role": "system", "content": s}));
    }
    messages.extend(p.messages.iter().cloned());
    let mut body = json!({"model": p.model, "messages": messages, "stream": p.stream});
    if p.stream {
        body["stream_options"] = json!({"include_usage": true});
    }
    if let Some(n) = p.max_output_tokens {
        body["max_tokens"] = json!(n);
    }
    if let Some(t) = p.temperature {
        body["temperature"] = json!(t);
    }
    if let Some(t) = p.top_p {
        body["top_p"] = json!(t);
    }
    body
}

/// The gateway's answer, asked with as many passages as fit; a model that still finds the
/// prompt too long is asked once more with half of them.
async fn ask(
    gateway: &Gateway,
    p: &Parsed,
    passages: &[Passage],
    budget: usize,
    id: &HeaderValue,
    charge: Option<keel_limits::Charge>,
) -> Result<(Answer, usize), ApiError> {
    let mut budget = budget;
    loop {
        let (system, used) = match (&p.search, passages.is_empty()) {
            (Some(_), false) => {
                let (s, used) = system_prompt(p.instructions.as_deref(), passages, budget);
                (Some(s), used)
            }
            _ => (p.instructions.clone(), 0),
        };
        let chat = ChatRequest::from_json(chat_body(p, system))
            .map_err(|e| ApiError::invalid(e.to_string()))?;
        let answer = gateway.chat(chat, id.clone(), charge.clone()).await?;
        match &answer {
            Answer::Refused { error, .. } if error.code == "prompt_too_long" && used > 1 => {
                budget /= 2;
            }
            _ => return Ok((answer, used)),
        }
    }
}

pub(super) fn annotation(c: &Citation, passages: &[Passage]) -> Value {
    let p = &passages[c.passage];
    json!({"type": "file_citation", "file_id": p.file_id, "filename": p.filename, "index": c.index})
}

pub(super) fn search_call_item(
    id: &str,
    status: &str,
    query: &str,
    results: Option<Vec<Value>>,
) -> Value {
    json!({"type": "file_search_call", "id": id, "status": status, "queries": [query], "results": results})
}

pub(super) fn message_item(id: &str, status: &str, text: &str, annotations: Vec<Value>) -> Value {
    let content = if status == "in_progress" {
        json!([])
    } else {
        json!([{"type": "output_text", "text": text, "annotations": annotations, "logprobs": []}])
    };
    json!({"type": "message", "id": id, "role": "assistant", "status": status, "content": content})
}

/// The `results` of a search call, when `include` asks for them.
pub(super) fn results(hits: &[Hit]) -> Vec<Value> {
    hits.iter()
        .map(|h| {
            json!({
                "file_id": h.chunk.file_id, "filename": h.chunk.filename, "score": h.score,
                "text": h.chunk.text, "attributes": h.chunk.attributes,
            })
        })
        .collect()
}

/// One turn's identity and what it found, shared by both answer shapes.
pub(super) struct Turn {
    pub id: String,
    pub created_at: i64,
    pub message_id: String,
    /// The completed search call, if a search ran.
    pub search_call: Option<Value>,
    pub passages: Vec<Passage>,
    pub echo: Map<String, Value>,
    pub retrieve_ms: u64,
}

impl Turn {
    pub fn object(
        &self,
        status: &str,
        output: Vec<Value>,
        usage: Option<Value>,
        degraded: bool,
    ) -> Value {
        let mut o = self.echo.clone();
        for (k, v) in [
            ("id", json!(self.id)),
            ("object", json!("response")),
            ("created_at", json!(self.created_at)),
            ("status", json!(status)),
            ("error", Value::Null),
            ("incomplete_details", Value::Null),
            ("parallel_tool_calls", json!(true)),
            ("store", json!(false)),
            ("text", json!({"format": {"type": "text"}})),
            ("truncation", json!("disabled")),
            ("previous_response_id", Value::Null),
            ("output", json!(output)),
            ("usage", usage.unwrap_or(Value::Null)),
            (
                "keel",
                json!({"degraded": degraded, "retrieve_ms": self.retrieve_ms}),
            ),
        ] {
            o.insert(k.into(), v);
        }
        Value::Object(o)
    }
}

pub(super) fn usage(upstream: Option<&Value>) -> Value {
    let n = |k: &str| upstream.and_then(|u| u[k].as_u64()).unwrap_or(0);
    let (i, o) = (n("prompt_tokens"), n("completion_tokens"));
    json!({
        "input_tokens": i, "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": o, "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": i + o,
    })
}

/// The citations of a whole answer: the model's markers, or the best files when it cited
/// none.
pub(super) fn cite(text: &str, passages: &[Passage]) -> (String, Vec<Citation>) {
    let mut parser = CitationParser::new(passages.len());
    let (mut out, _) = parser.feed(text);
    out.push_str(&parser.finish_citing(passages).0);
    (out, parser.citations().to_vec())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

async fn create_response(
    State(state): State<AppState>,
    headers: HeaderMap,
    id: Option<Extension<RequestId>>,
    caller: Option<Extension<Caller>>,
    charge: Option<Extension<keel_limits::Charge>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request_id = id.map_or_else(|| request_id(&headers), |Extension(RequestId(id))| id);
    let p = parse(&headers, body)?;
    let gateway = state.gateway.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "model_not_found",
            format!("the model '{}' is not served here", p.model),
        )
    })?;
    let retrieved = match (&p.search, &p.query) {
        (Some(search), Some(query)) => Some(retrieve(&state, caller, search, query).await?),
        _ => None,
    };
    let query = p.query.clone().unwrap_or_default();
    let (hits, passages, retrieve_ms) = match retrieved {
        Some(r) => (Some(r.hits), r.passages, r.millis),
        None => (None, Vec::new(), 0),
    };
    let search_call = hits.as_ref().map(|hits| {
        search_call_item(
            &format!("fs_{}", uuid::Uuid::now_v7().simple()),
            "completed",
            &query,
            p.include_results.then(|| results(hits)),
        )
    });
    let turn = Turn {
        id: format!("resp_{}", uuid::Uuid::now_v7().simple()),
        created_at: unix_now(),
        message_id: format!("msg_{}", uuid::Uuid::now_v7().simple()),
        search_call,
        passages,
        echo: p.echo.clone(),
        retrieve_ms,
    };

    let generate_started = Instant::now();
    let budget = prompt_budget(&state, &p);
    let (answer, _) = ask(
        &gateway,
        &p,
        &turn.passages,
        budget,
        &request_id,
        charge.map(|Extension(c)| c),
    )
    .await?;
    let generated = |served: Option<&Served>, degraded: bool| {
        let ms = generate_started.elapsed().as_millis() as u64;
        metrics::histogram!("keel_rag_answer_seconds", "phase" => "generate")
            .record(ms as f64 / 1000.0);
        tracing::info!(
            target: "keel::rag",
            request_id = request_id.to_str().unwrap_or_default(),
            model = %p.model,
            provider = served.map(|s| s.provider.as_str()).unwrap_or(""),
            passages = turn.passages.len(),
            retrieve_ms = turn.retrieve_ms,
            generate_ms = ms,
            degraded,
            stream = p.stream,
            "answer"
        );
        ms
    };
    let (text, upstream_usage, served) = match answer {
        Answer::Complete { body, served } => {
            let text = body["choices"][0]["message"]["content"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            (Some(text), body.get("usage").cloned(), Some(served))
        }
        Answer::Stream { body, served } => {
            generated(Some(&served), false);
            let mut r = stream_response(turn, Source::Upstream(body));
            served_headers(&mut r, &served);
            return Ok(r);
        }
        // A client error is the client's to fix; 429 tells it to slow down.
        Answer::Refused {
            status,
            error,
            retry_after,
            ..
        } if status < 500 => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
            let mut e = ApiError::new(status, error.code, error.message);
            e.retry_after = retry_after.map(|s| s.min(u64::from(u32::MAX)) as u32);
            return Err(e);
        }
        Answer::Refused { .. } | Answer::Degraded(_) => (None, None, None),
    };
    let degraded = text.is_none();
    let generate_ms = generated(served.as_ref(), degraded);
    if p.stream {
        // Only a degraded answer reaches here streaming: the model never started.
        let mut r = stream_response(turn, Source::Degraded);
        r.headers_mut()
            .insert(DEGRADED, HeaderValue::from_static("true"));
        return Ok(r);
    }
    let (text, citations) = match text {
        Some(t) => cite(&t, &turn.passages),
        None => degraded_answer(&turn.passages),
    };
    let annotations = citations
        .iter()
        .map(|c| annotation(c, &turn.passages))
        .collect();
    let mut output: Vec<Value> = turn.search_call.iter().cloned().collect();
    output.push(message_item(
        &turn.message_id,
        "completed",
        &text,
        annotations,
    ));
    let mut body = turn.object(
        "completed",
        output,
        Some(usage(upstream_usage.as_ref())),
        degraded,
    );
    body["keel"]["generate_ms"] = json!(generate_ms);
    let mut r = Json(body).into_response();
    if let Some(served) = &served {
        served_headers(&mut r, served);
    }
    let h = r.headers_mut();
    if degraded {
        h.insert(DEGRADED, HeaderValue::from_static("true"));
    }
    h.insert(RETRIEVE_MS, HeaderValue::from(turn.retrieve_ms));
    h.insert(GENERATE_MS, HeaderValue::from(generate_ms));
    Ok(r)
}
