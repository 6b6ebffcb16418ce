//! Anthropic's Messages API, translated both ways.
//!
//! OpenAI's system messages become `system`; `stop` becomes `stop_sequences`; `max_tokens`
//! is required by Anthropic, so it gets a default. Answers, errors and the stream's event
//! types (`message_start`, `content_block_delta`, `message_delta`, `message_stop`, `error`)
//! come back as OpenAI's `chat.completion` and `chat.completion.chunk` shapes.

use reqwest::header::{HeaderName, HeaderValue};
use serde_json::{json, Map, Value};

use super::{
    body_excerpt, unix_now, ChatRequest, Provider, StreamFault, StreamTranslator, TranslateError,
    UpstreamError, Usage,
};
use crate::config::ProviderConfig;
use crate::sse::{frame, SseEvent};

const API_VERSION: &str = "2023-06-01";
const DEFAULT_MAX_TOKENS: u64 = 4096;

pub struct Anthropic {
    config: ProviderConfig,
    url: String,
}

impl Anthropic {
    pub fn new(config: ProviderConfig) -> Self {
        let base = config.base_url.trim_end_matches("/v1");
        let url = format!("{base}/v1/messages");
        Self { config, url }
    }
}

fn finish_reason(stop_reason: Option<&str>) -> Value {
    match stop_reason {
        None => Value::Null,
        Some("max_tokens") => "length".into(),
        Some("tool_use") => "tool_calls".into(),
        Some("refusal") => "content_filter".into(),
        Some(_) => "stop".into(),
    }
}

/// OpenAI content (a string, or parts) as Anthropic content.
fn content(value: &Value, at: usize) -> Result<Value, TranslateError> {
    let parts = match value {
        Value::String(s) => return Ok(Value::String(s.clone())),
        Value::Array(parts) => parts,
        _ => {
            return Err(TranslateError(format!(
                "messages[{at}].content must be a string or an array of parts"
            )))
        }
    };
    let mut out = Vec::new();
    for part in parts {
        match part.get("type").and_then(Value::as_str) {
            Some("text") => out.push(json!({"type": "text", "text": part["text"]})),
            Some("image_url") => {
                let url = part["image_url"]["url"].as_str().unwrap_or_default();
                let source = match url
                    .strip_prefix("data:")
                    .and_then(|rest| rest.split_once(";base64,"))
                {
                    Some((media_type, data)) => {
                        json!({"type": "base64", "media_type": media_type, "data": data})
                    }
                    None => json!({"type": "url", "url": url}),
                };
                out.push(json!({"type": "image", "source": source}));
            }
            other => {
                return Err(TranslateError(format!(
                    "messages[{at}] has a content part of type {other:?}, which Anthropic targets do not take"
                )))
            }
        }
    }
    Ok(Value::Array(out))
}

fn text_of(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// The Messages API body for an OpenAI-shaped chat request.
pub fn translate_request(chat: &ChatRequest, model: &str) -> Result<Value, TranslateError> {
    let mut system = Vec::new();
    let mut messages = Vec::new();
    let empty = Vec::new();
    let input = chat.body["messages"].as_array().unwrap_or(&empty);
    for (i, m) in input.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
        let c = m.get("content").unwrap_or(&Value::Null);
        match role {
            "system" | "developer" => system.push(text_of(c)),
            "user" | "assistant" => messages.push(json!({"role": role, "content": content(c, i)?})),
            _ => {
                return Err(TranslateError(format!(
                    "messages[{i}].role {role:?} cannot be sent to an Anthropic target"
                )))
            }
        }
    }
    let b = &chat.body;
    let mut out = Map::new();
    out.insert("model".into(), model.into());
    out.insert("messages".into(), Value::Array(messages));
    let max_tokens = b
        .get("max_completion_tokens")
        .or_else(|| b.get("max_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_MAX_TOKENS);
    out.insert("max_tokens".into(), max_tokens.into());
    if !system.is_empty() {
        out.insert("system".into(), system.join("\n\n").into());
    }
    for key in ["temperature", "top_p"] {
        if let Some(v) = b.get(key).filter(|v| !v.is_null()) {
            out.insert(key.into(), v.clone());
        }
    }
    match b.get("stop") {
        Some(Value::String(s)) => {
            out.insert("stop_sequences".into(), json!([s]));
        }
        Some(Value::Array(a)) => {
            out.insert("stop_sequences".into(), Value::Array(a.clone()));
        }
        _ => {}
    }
    if let Some(Value::String(user)) = b.get("user") {
        out.insert("metadata".into(), json!({"user_id": user}));
    }
    if chat.stream {
        out.insert("stream".into(), true.into());
    }
    Ok(Value::Object(out))
}

fn usage_of(v: &Value) -> Usage {
    Usage {
        prompt_tokens: v["input_tokens"].as_u64().unwrap_or(0),
        completion_tokens: v["output_tokens"].as_u64().unwrap_or(0),
    }
}

fn usage_json(u: Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    })
}

fn parse_error(body: &[u8]) -> UpstreamError {
    let v: Option<Value> = serde_json::from_slice(body).ok();
    let error = v.as_ref().and_then(|v| v.get("error"));
    UpstreamError {
        code: error
            .and_then(|e| e["type"].as_str())
            .unwrap_or("upstream_error")
            .to_string(),
        message: error
            .and_then(|e| e["message"].as_str())
            .map(str::to_string)
            .unwrap_or_else(|| body_excerpt(body)),
    }
}

impl Provider for Anthropic {
    fn config(&self) -> &ProviderConfig {
        &self.config
    }

    fn url(&self) -> &str {
        &self.url
    }

    fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        let mut headers = vec![(
            HeaderName::from_static("anthropic-version"),
            HeaderValue::from_static(API_VERSION),
        )];
        if let Some(v) = self
            .config
            .api_key
            .as_deref()
            .and_then(|k| HeaderValue::from_str(k).ok())
        {
            headers.push((HeaderName::from_static("x-api-key"), v));
        }
        headers
    }

    fn body(&self, chat: &ChatRequest, model: &str) -> Result<Vec<u8>, TranslateError> {
        let body = translate_request(chat, model)?;
        serde_json::to_vec(&body).map_err(|e| TranslateError(e.to_string()))
    }

    fn completion(&self, body: &[u8]) -> Result<(Value, Usage), String> {
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| format!("the upstream answer is not JSON: {e}"))?;
        let Some(blocks) = v["content"].as_array() else {
            return Err("the upstream answer has no content array".into());
        };
        let text: String = blocks
            .iter()
            .filter(|b| b["type"] == "text")
            .filter_map(|b| b["text"].as_str())
            .collect();
        let usage = usage_of(&v["usage"]);
        let answer = json!({
            "id": v["id"],
            "object": "chat.completion",
            "created": unix_now(),
            "model": v["model"],
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish_reason(v["stop_reason"].as_str()),
            }],
            "usage": usage_json(usage),
        });
        Ok((answer, usage))
    }

    fn error(&self, _status: u16, body: &[u8]) -> UpstreamError {
        parse_error(body)
    }

    fn translator(&self, chat: &ChatRequest) -> Box<dyn StreamTranslator> {
        Box::new(AnthropicStream {
            include_usage: chat.include_usage,
            id: String::new(),
            model: Value::Null,
            created: unix_now(),
            usage: Usage::default(),
            finish: Value::Null,
        })
    }
}

struct AnthropicStream {
    include_usage: bool,
    id: String,
    model: Value,
    created: u64,
    usage: Usage,
    finish: Value,
}

impl AnthropicStream {
    fn chunk(&self, out: &mut Vec<u8>, delta: Value, finish: Value) {
        let mut c = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        });
        if self.include_usage {
            c["usage"] = Value::Null;
        }
        frame(out, None, &c.to_string());
    }
}

impl StreamTranslator for AnthropicStream {
    fn translate(&mut self, event: &SseEvent, out: &mut Vec<u8>) -> Result<bool, StreamFault> {
        let v: Value = serde_json::from_str(&event.data)
            .map_err(|e| StreamFault::Malformed(format!("a stream event is not JSON: {e}")))?;
        let kind = event
            .event
            .as_deref()
            .or_else(|| v["type"].as_str())
            .unwrap_or_default();
        match kind {
            "message_start" => {
                let m = &v["message"];
                self.id = m["id"].as_str().unwrap_or_default().to_string();
                self.model = m["model"].clone();
                self.usage.prompt_tokens = m["usage"]["input_tokens"].as_u64().unwrap_or(0);
                self.chunk(
                    out,
                    json!({"role": "assistant", "content": ""}),
                    Value::Null,
                );
            }
            "content_block_start" => {
                if let Some(text) = v["content_block"]["text"]
                    .as_str()
                    .filter(|t| !t.is_empty())
                {
                    self.chunk(out, json!({"content": text}), Value::Null);
                }
            }
            "content_block_delta" if v["delta"]["type"] == "text_delta" => {
                self.chunk(out, json!({"content": v["delta"]["text"]}), Value::Null);
            }
            "message_delta" => {
                self.finish = finish_reason(v["delta"]["stop_reason"].as_str());
                if let Some(n) = v["usage"]["output_tokens"].as_u64() {
                    self.usage.completion_tokens = n;
                }
            }
            "message_stop" => {
                let finish = match &self.finish {
                    Value::Null => Value::from("stop"),
                    f => f.clone(),
                };
                self.chunk(out, json!({}), finish);
                if self.include_usage {
                    let c = json!({
                        "id": self.id, "object": "chat.completion.chunk",
                        "created": self.created, "model": self.model,
                        "choices": [], "usage": usage_json(self.usage),
                    });
                    frame(out, None, &c.to_string());
                }
                return Ok(true);
            }
            "error" => {
                return Err(StreamFault::Upstream(parse_error(event.data.as_bytes())));
            }
            // ping, content_block_stop, and event types added later.
            _ => {}
        }
        Ok(false)
    }

    fn usage(&self) -> Usage {
        self.usage
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sse::SseParser;

    fn chat(v: Value) -> ChatRequest {
        ChatRequest::from_json(v).unwrap()
    }

    #[test]
    fn requests_become_messages_api_bodies() {
        let c = chat(json!({
            "model": "alias", "stop": "END", "temperature": 0.2, "max_tokens": 50,
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hi"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA"}}]},
                {"role": "assistant", "content": "hello"},
            ]
        }));
        let b = translate_request(&c, "claude-x").unwrap();
        assert_eq!(b["model"], "claude-x");
        assert_eq!(b["system"], "be brief");
        assert_eq!(b["max_tokens"], 50);
        assert_eq!(b["stop_sequences"], json!(["END"]));
        assert_eq!(b["messages"].as_array().unwrap().len(), 2);
        assert_eq!(
            b["messages"][0]["content"][1]["source"]["media_type"],
            "image/png"
        );
        let tool = chat(json!({"model": "m", "messages": [{"role": "tool", "content": "x"}]}));
        assert!(translate_request(&tool, "m").is_err());
    }

    #[test]
    fn answers_and_errors_come_back_in_openai_shape() {
        let a = Anthropic::new(ProviderConfig {
            name: "a".into(),
            kind: crate::config::ProviderKind::Anthropic,
            base_url: "http://127.0.0.1:1".into(),
            api_key: Some("k".into()),
            max_concurrency: 1,
            queue_timeout: std::time::Duration::from_millis(1),
            stream_usage: true,
            models: Vec::new(),
            allow_any_model: false,
        });
        assert_eq!(a.url(), "http://127.0.0.1:1/v1/messages");
        let (v, u) = a
            .completion(
                br#"{"id":"msg_1","type":"message","model":"claude-x","role":"assistant",
                "content":[{"type":"text","text":"Hi there"}],"stop_reason":"max_tokens",
                "usage":{"input_tokens":4,"output_tokens":2}}"#,
            )
            .unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], "Hi there");
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(v["usage"]["total_tokens"], 6);
        assert_eq!(u.completion_tokens, 2);
        let e = a.error(
            400,
            br#"{"type":"error","error":{"type":"invalid_request_error","message":"no"}}"#,
        );
        assert_eq!(
            (e.code.as_str(), e.message.as_str()),
            ("invalid_request_error", "no")
        );
    }

    #[test]
    fn stream_events_become_chunks() {
        let c = chat(json!({"model": "m", "messages": [{}], "stream": true,
                            "stream_options": {"include_usage": true}}));
        let a = Anthropic::new(ProviderConfig {
            name: "a".into(),
            kind: crate::config::ProviderKind::Anthropic,
            base_url: "http://127.0.0.1:1".into(),
            api_key: None,
            max_concurrency: 1,
            queue_timeout: std::time::Duration::from_millis(1),
            stream_usage: true,
            models: Vec::new(),
            allow_any_model: false,
        });
        let mut t = a.translator(&c);
        let upstream = concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"claude-x\",\"usage\":{\"input_tokens\":7}}}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
            "event: ping\ndata: {\"type\":\"ping\"}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hel\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"lo\"}}\n\n",
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":2}}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        );
        let mut events = Vec::new();
        SseParser::default().feed(upstream.as_bytes(), &mut events);
        let mut out = Vec::new();
        let done: Vec<bool> = events
            .iter()
            .map(|e| t.translate(e, &mut out).unwrap())
            .collect();
        assert_eq!(done.last(), Some(&true));
        let mut chunks = Vec::new();
        SseParser::default().feed(&out, &mut chunks);
        let chunks: Vec<Value> = chunks
            .iter()
            .map(|e| serde_json::from_str(&e.data).unwrap())
            .collect();
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, "Hello");
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(chunks[3]["choices"][0]["finish_reason"], "stop");
        assert_eq!(chunks[4]["usage"]["prompt_tokens"], 7);
        assert_eq!(t.usage().completion_tokens, 2);

        let err = SseEvent {
            event: Some("error".into()),
            data: r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#
                .into(),
        };
        match t.translate(&err, &mut out) {
            Err(StreamFault::Upstream(e)) => assert_eq!(e.code, "overloaded_error"),
            other => panic!("{other:?}"),
        }
    }
}
