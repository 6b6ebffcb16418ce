//! Keel's own generative models as OpenAI-shaped answers: the request's fields checked and
//! turned into a [`GenerationRequest`], and the generator's events turned into a
//! `chat.completion` / `text_completion` body or their event streams. The router uses it for
//! `local/<name>` targets; keel-http's `/v1/completions` uses it directly.
//!
//! Every field Keel cannot honour is refused with the field named (a 422), never ignored
//! silently; fields that only matter to OpenAI's bookkeeping (`user`, `metadata`, `store`)
//! are accepted and ignored.

use std::convert::Infallible;
use std::time::Instant;

use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use keel_engine::generate::{
    ChatMessage, FinishReason, GenerateError, GenerationEvent, GenerationRequest,
    GenerationSummary, Prompt, Sampling, TextGenerator,
};
use serde_json::{json, Map, Value};

use crate::meter::RequestRecord;
use crate::provider::{unix_now, Usage};
use crate::sse::frame;
use crate::stream::{error_event, ClientStream, DONE};

/// The provider name of Keel's own models in route targets (`local/<name>`).
pub const LOCAL: &str = "local";

/// OpenAI's limit on stop sequences.
const MAX_STOPS: usize = 4;

/// A field of the request Keel cannot use: a 422 naming it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: &'static str,
    pub message: String,
}

fn bad(field: &'static str, message: impl Into<String>) -> FieldError {
    FieldError {
        field,
        message: message.into(),
    }
}

/// Which OpenAI endpoint shape a request and its answer have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Chat,
    Completion,
}

/// A checked request: what to generate and how to answer.
#[derive(Debug, Clone)]
pub struct LocalRequest {
    pub generation: GenerationRequest,
    pub stream: bool,
    pub include_usage: bool,
    pub shape: Shape,
}

fn number(body: &Map<String, Value>, field: &'static str) -> Result<Option<f64>, FieldError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .filter(|x| x.is_finite())
            .map(Some)
            .ok_or_else(|| bad(field, "must be a number")),
    }
}

fn ranged(
    body: &Map<String, Value>,
    field: &'static str,
    low: f64,
    high: f64,
) -> Result<Option<f32>, FieldError> {
    match number(body, field)? {
        Some(x) if !(low..=high).contains(&x) => {
            Err(bad(field, format!("must be between {low} and {high}")))
        }
        x => Ok(x.map(|x| x as f32)),
    }
}

fn integer(body: &Map<String, Value>, field: &'static str) -> Result<Option<i64>, FieldError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .map(Some)
            .ok_or_else(|| bad(field, "must be an integer")),
    }
}

fn boolean(body: &Map<String, Value>, field: &'static str) -> Result<bool, FieldError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(bad(field, "must be a boolean")),
    }
}

fn sampling(body: &Map<String, Value>) -> Result<Sampling, FieldError> {
    let mut s = Sampling::default();
    if let Some(t) = ranged(body, "temperature", 0.0, 2.0)? {
        s.temperature = t;
    }
    if let Some(p) = ranged(body, "top_p", 0.0, 1.0)? {
        if p == 0.0 {
            return Err(bad("top_p", "must be greater than 0"));
        }
        s.top_p = p;
    }
    if let Some(k) = integer(body, "top_k")? {
        if k < 0 {
            return Err(bad("top_k", "must be 0 (off) or more"));
        }
        s.top_k = k.min(i64::from(i32::MAX)) as i32;
    }
    if let Some(p) = ranged(body, "min_p", 0.0, 1.0)? {
        s.min_p = p;
    }
    if let Some(p) = ranged(body, "presence_penalty", -2.0, 2.0)? {
        s.presence_penalty = p;
    }
    if let Some(p) = ranged(body, "frequency_penalty", -2.0, 2.0)? {
        s.frequency_penalty = p;
    }
    if let Some(seed) = integer(body, "seed")? {
        // Any 64-bit seed is accepted; llama.cpp's samplers take 32 bits.
        s.seed = Some((seed as u64 ^ ((seed as u64) >> 32)) as u32);
    }
    match body.get("logit_bias") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            if map.len() > 300 {
                return Err(bad("logit_bias", "at most 300 entries"));
            }
            for (token, bias) in map {
                let id = token
                    .parse::<i32>()
                    .ok()
                    .filter(|id| *id >= 0)
                    .ok_or_else(|| bad("logit_bias", "keys must be token ids"))?;
                let bias = bias
                    .as_f64()
                    .filter(|b| (-100.0..=100.0).contains(b))
                    .ok_or_else(|| bad("logit_bias", "values must be numbers from -100 to 100"))?;
                s.logit_bias.push((id, bias as f32));
            }
        }
        Some(_) => return Err(bad("logit_bias", "must be an object of token id to bias")),
    }
    Ok(s)
}

fn stops(body: &Map<String, Value>) -> Result<Vec<String>, FieldError> {
    let list = match body.get("stop") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad("stop", "must be a string or an array of strings"))?,
        Some(_) => return Err(bad("stop", "must be a string or an array of strings")),
    };
    if list.len() > MAX_STOPS {
        return Err(bad("stop", format!("at most {MAX_STOPS} sequences")));
    }
    if list.iter().any(String::is_empty) {
        return Err(bad("stop", "sequences may not be empty"));
    }
    Ok(list)
}

fn max_tokens(body: &Map<String, Value>) -> Result<Option<u32>, FieldError> {
    let mut out = None;
    for field in ["max_completion_tokens", "max_tokens"] {
        if let Some(n) = integer(body, field)? {
            if n < 1 {
                return Err(bad(field, "must be at least 1"));
            }
            out = out.or(Some(n.min(i64::from(u32::MAX)) as u32));
        }
    }
    Ok(out)
}

/// A message's content as text: a string, or an array of `text` parts.
fn content(value: Option<&Value>) -> Result<String, FieldError> {
    match value {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for part in parts {
                match (part.get("type").and_then(Value::as_str), part.get("text")) {
                    (Some("text"), Some(Value::String(t))) => text.push_str(t),
                    (Some(kind), _) => {
                        return Err(bad(
                            "messages",
                            format!(
                            "content parts of type '{kind}' cannot be used by a local text model"
                        ),
                        ))
                    }
                    _ => return Err(bad("messages", "each content part needs a type")),
                }
            }
            Ok(text)
        }
        None | Some(Value::Null) => Err(bad("messages", "each message needs a content")),
        Some(_) => Err(bad(
            "messages",
            "content must be a string or an array of text parts",
        )),
    }
}

fn messages(body: &Map<String, Value>) -> Result<Vec<ChatMessage>, FieldError> {
    let Some(Value::Array(list)) = body.get("messages") else {
        return Err(bad("messages", "must be a non-empty array"));
    };
    if list.is_empty() {
        return Err(bad("messages", "must be a non-empty array"));
    }
    list.iter()
        .map(|m| {
            let role = match m.get("role").and_then(Value::as_str) {
                Some(r @ ("system" | "user" | "assistant")) => r.to_string(),
                // OpenAI's newer name for the system role.
                Some("developer") => "system".to_string(),
                Some(other) => {
                    return Err(bad(
                        "messages",
                        format!("role '{other}' is not one of system, developer, user, assistant"),
                    ))
                }
                None => return Err(bad("messages", "each message needs a role")),
            };
            Ok(ChatMessage {
                role,
                content: content(m.get("content"))?,
            })
        })
        .collect()
}

fn common(body: &Map<String, Value>) -> Result<(bool, bool), FieldError> {
    if let Some(n) = integer(body, "n")? {
        if n != 1 {
            return Err(bad(
                "n",
                "local models generate one choice per request (n = 1)",
            ));
        }
    }
    let stream = boolean(body, "stream")?;
    let include_usage = match body.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(o)) => match o.get("include_usage") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(bad("stream_options", "include_usage must be a boolean")),
        },
        Some(_) => return Err(bad("stream_options", "must be an object")),
    };
    for field in [
        "tools",
        "functions",
        "response_format",
        "logprobs",
        "echo",
        "suffix",
    ] {
        match body.get(field) {
            None | Some(Value::Null) | Some(Value::Bool(false)) => {}
            Some(_) => return Err(bad(field, "is not supported by local models")),
        }
    }
    Ok((stream, include_usage))
}

impl LocalRequest {
    /// A `chat.completions` body.
    pub fn chat(
        body: &Map<String, Value>,
        deadline: Instant,
        request_id: &str,
    ) -> Result<Self, FieldError> {
        let prompt = Prompt::Chat(messages(body)?);
        Self::build(body, prompt, Shape::Chat, None, deadline, request_id)
    }

    /// A legacy `completions` body: one prompt string in, text out.
    pub fn completion(
        body: &Map<String, Value>,
        deadline: Instant,
        request_id: &str,
    ) -> Result<Self, FieldError> {
        let prompt = match body.get("prompt") {
            Some(Value::String(p)) => p.clone(),
            Some(Value::Array(items)) if items.len() == 1 && items[0].is_string() => {
                items[0].as_str().unwrap_or_default().to_string()
            }
            Some(Value::Array(_)) => {
                return Err(bad("prompt", "local models take one prompt per request"))
            }
            _ => return Err(bad("prompt", "must be a string")),
        };
        if prompt.is_empty() {
            return Err(bad("prompt", "must not be empty"));
        }
        // The legacy endpoint's default is 16 tokens.
        let prompt = Prompt::Text(prompt);
        Self::build(
            body,
            prompt,
            Shape::Completion,
            Some(16),
            deadline,
            request_id,
        )
    }

    /// The fields both shapes share.
    fn build(
        body: &Map<String, Value>,
        prompt: Prompt,
        shape: Shape,
        default_max_tokens: Option<u32>,
        deadline: Instant,
        request_id: &str,
    ) -> Result<Self, FieldError> {
        let (stream, include_usage) = common(body)?;
        Ok(Self {
            generation: GenerationRequest {
                prompt,
                sampling: sampling(body)?,
                max_tokens: max_tokens(body)?.or(default_max_tokens),
                stop: stops(body)?,
                ignore_eos: boolean(body, "ignore_eos")?,
                deadline,
                request_id: request_id.to_string(),
            },
            stream,
            include_usage,
            shape,
        })
    }
}

/// How a local answer is labelled.
#[derive(Debug, Clone)]
pub struct Labels {
    /// The model name the answer reports (the one the client asked for).
    pub model: String,
    /// Every upstream target failed before this answer: mark it degraded.
    pub degraded: bool,
}

/// A generated answer: the whole body, or its event stream.
pub enum LocalAnswer {
    Complete { body: Value, usage: Usage },
    Stream(ClientStream),
}

fn usage_json(s: &GenerationSummary) -> Value {
    json!({
        "prompt_tokens": s.prompt_tokens,
        "completion_tokens": s.completion_tokens,
        "total_tokens": s.prompt_tokens + s.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": s.cached_tokens},
    })
}

fn finish_name(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}

/// Runs `request` on `generator`. Refusals (bad prompt, full queue, deadline) come back at
/// once as errors; a stream's later failures become an SSE `error` event.
pub async fn generate(
    generator: &dyn TextGenerator,
    request: LocalRequest,
    labels: Labels,
    mut record: RequestRecord,
) -> Result<LocalAnswer, GenerateError> {
    let started = Instant::now();
    let mut generation = match generator.generate(request.generation) {
        Ok(g) => g,
        Err(e) => {
            record.finish("local_refused");
            return Err(e);
        }
    };
    let id = match request.shape {
        Shape::Chat => format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
        Shape::Completion => format!("cmpl-{}", uuid::Uuid::new_v4().simple()),
    };
    let created = unix_now();
    if !request.stream {
        let mut text = String::new();
        let summary = loop {
            match generation.events.recv().await {
                Some(GenerationEvent::Text(t)) => {
                    record.time_to_first_token.get_or_insert(started.elapsed());
                    text.push_str(&t);
                }
                Some(GenerationEvent::Done(s)) => break s,
                Some(GenerationEvent::Failed(e)) => {
                    record.finish("local_failed");
                    return Err(e);
                }
                None => {
                    record.finish("local_failed");
                    return Err(GenerateError::Failed("the generation loop stopped".into()));
                }
            }
        };
        let usage = Usage {
            prompt_tokens: u64::from(summary.prompt_tokens),
            completion_tokens: u64::from(summary.completion_tokens),
        };
        let choice = match request.shape {
            Shape::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish_name(summary.finish),
                "logprobs": null,
            }),
            Shape::Completion => json!({
                "index": 0, "text": text, "finish_reason": finish_name(summary.finish),
                "logprobs": null,
            }),
        };
        let mut body = json!({
            "id": id,
            "object": match request.shape { Shape::Chat => "chat.completion", Shape::Completion => "text_completion" },
            "created": created,
            "model": labels.model,
            "choices": [choice],
            "usage": usage_json(&summary),
        });
        if labels.degraded {
            body["degraded"] = Value::Bool(true);
        }
        record.usage = usage;
        record.upstream_latency = Some(started.elapsed());
        record.finish(if labels.degraded {
            "degraded_local"
        } else {
            "success"
        });
        return Ok(LocalAnswer::Complete { body, usage });
    }

    let frames = StreamFrames {
        id,
        created,
        labels,
        shape: request.shape,
        include_usage: request.include_usage,
    };
    let mut first = Vec::new();
    if frames.shape == Shape::Chat {
        frame(
            &mut first,
            None,
            &frames.chunk(json!({"role": "assistant", "content": ""}), Value::Null),
        );
    }
    struct State {
        generation: keel_engine::generate::Generation,
        frames: StreamFrames,
        record: RequestRecord,
        started: Instant,
        done: bool,
    }
    let state = State {
        generation,
        frames,
        record,
        started,
        done: false,
    };
    let head = stream::once(async move { Ok::<_, Infallible>(Bytes::from(first)) });
    let body = stream::unfold(state, |mut s| async move {
        if s.done {
            return None;
        }
        let mut out = Vec::new();
        match s.generation.events.recv().await {
            Some(GenerationEvent::Text(t)) => {
                s.record
                    .time_to_first_token
                    .get_or_insert(s.started.elapsed());
                s.frames.text(&mut out, &t);
            }
            Some(GenerationEvent::Done(summary)) => {
                s.frames.end(&mut out, &summary);
                out.extend_from_slice(DONE);
                s.record.usage = Usage {
                    prompt_tokens: u64::from(summary.prompt_tokens),
                    completion_tokens: u64::from(summary.completion_tokens),
                };
                s.record.upstream_latency = Some(s.started.elapsed());
                let outcome = if s.frames.labels.degraded {
                    "degraded_local"
                } else {
                    "success"
                };
                s.record.finish(outcome);
                s.done = true;
            }
            Some(GenerationEvent::Failed(e)) => {
                let code = match e {
                    GenerateError::DeadlineExceeded => "deadline_exceeded",
                    _ => "generation_failed",
                };
                error_event(&mut out, code, &e.to_string());
                out.extend_from_slice(DONE);
                s.record.finish("local_failed");
                s.done = true;
            }
            None => {
                error_event(&mut out, "generation_failed", "the generation loop stopped");
                out.extend_from_slice(DONE);
                s.record.finish("local_failed");
                s.done = true;
            }
        }
        Some((Ok::<_, Infallible>(Bytes::from(out)), s))
    });
    Ok(LocalAnswer::Stream(Box::pin(head.chain(body))))
}

struct StreamFrames {
    id: String,
    created: u64,
    labels: Labels,
    shape: Shape,
    include_usage: bool,
}

impl StreamFrames {
    fn chunk(&self, delta: Value, finish: Value) -> String {
        let mut chunk = match self.shape {
            Shape::Chat => json!({
                "id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.labels.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}],
            }),
            Shape::Completion => json!({
                "id": self.id, "object": "text_completion", "created": self.created,
                "model": self.labels.model,
                "choices": [{"index": 0, "text": delta, "finish_reason": finish, "logprobs": null}],
            }),
        };
        if self.labels.degraded {
            chunk["degraded"] = Value::Bool(true);
        }
        chunk.to_string()
    }

    fn text(&self, out: &mut Vec<u8>, text: &str) {
        let delta = match self.shape {
            Shape::Chat => json!({"content": text}),
            Shape::Completion => Value::String(text.to_string()),
        };
        frame(out, None, &self.chunk(delta, Value::Null));
    }

    fn end(&self, out: &mut Vec<u8>, summary: &GenerationSummary) {
        let empty = match self.shape {
            Shape::Chat => json!({}),
            Shape::Completion => Value::String(String::new()),
        };
        frame(
            out,
            None,
            &self.chunk(empty, finish_name(summary.finish).into()),
        );
        if self.include_usage {
            let object = match self.shape {
                Shape::Chat => "chat.completion.chunk",
                Shape::Completion => "text_completion",
            };
            let mut chunk = json!({
                "id": self.id, "object": object, "created": self.created,
                "model": self.labels.model, "choices": [], "usage": usage_json(summary),
            });
            if self.labels.degraded {
                chunk["degraded"] = Value::Bool(true);
            }
            frame(out, None, &chunk.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: Value) -> Result<LocalRequest, FieldError> {
        let Value::Object(map) = body else { panic!() };
        LocalRequest::chat(&map, Instant::now(), "id")
    }

    fn field_of(body: Value) -> &'static str {
        parse(body).unwrap_err().field
    }

    #[test]
    fn sampling_fields_are_read_and_checked() {
        let r = parse(json!({
            "model": "m", "messages": [{"role": "user", "content": "hi"}],
            "temperature": 0, "top_p": 0.5, "top_k": 3, "min_p": 0.1, "seed": 7,
            "stop": ["a", "b"], "max_completion_tokens": 9, "logit_bias": {"5": -100},
            "stream": true, "stream_options": {"include_usage": true},
        }))
        .unwrap();
        let g = &r.generation;
        assert_eq!(g.sampling.temperature, 0.0);
        assert_eq!((g.sampling.top_k, g.sampling.seed), (3, Some(7)));
        assert_eq!(g.sampling.logit_bias, vec![(5, -100.0)]);
        assert_eq!((g.max_tokens, g.stop.len()), (Some(9), 2));
        assert!(r.stream && r.include_usage);
    }

    #[test]
    fn each_bad_field_is_named() {
        let m = json!([{"role": "user", "content": "hi"}]);
        assert_eq!(
            field_of(json!({"messages": m, "max_tokens": 0})),
            "max_tokens"
        );
        assert_eq!(
            field_of(json!({"messages": m, "temperature": 3})),
            "temperature"
        );
        assert_eq!(
            field_of(json!({"messages": m, "stop": ["a","b","c","d","e"]})),
            "stop"
        );
        assert_eq!(field_of(json!({"messages": m, "n": 2})), "n");
        assert_eq!(field_of(json!({"messages": m, "tools": []})), "tools");
        assert_eq!(field_of(json!({"messages": []})), "messages");
        assert_eq!(
            field_of(json!({"messages": [{"role": "tool", "content": "x"}]})),
            "messages"
        );
        assert_eq!(
            field_of(json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})),
            "messages"
        );
        assert_eq!(
            field_of(json!({"messages": [{"role": "user"}]})),
            "messages"
        );
    }

    #[test]
    fn text_parts_are_joined_and_developer_is_system() {
        let r = parse(json!({"messages": [
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        ]}))
        .unwrap();
        let Prompt::Chat(m) = r.generation.prompt else {
            panic!()
        };
        assert_eq!(
            (m[0].role.as_str(), m[1].content.as_str()),
            ("system", "ab")
        );
    }
}
