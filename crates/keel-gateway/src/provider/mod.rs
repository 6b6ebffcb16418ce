//! Provider adapters behind one trait: each builds its upstream request from an
//! OpenAI-shaped chat request, and turns the upstream's answers, errors and stream events
//! back into OpenAI's shapes. One file per API.

pub mod anthropic;
pub mod openai;

use std::sync::Arc;

use reqwest::header::{HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::config::{ProviderConfig, ProviderKind};
use crate::sse::SseEvent;

/// A client's chat request, as received (unknown fields kept for OpenAI-shaped upstreams).
#[derive(Debug, Clone)]
pub struct ChatRequest {
    pub body: Map<String, Value>,
    pub model: String,
    pub stream: bool,
    /// The client asked for a usage chunk at the end of its stream.
    pub include_usage: bool,
}

/// A chat request without the fields the gateway needs (a 422 for the client).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidChat(pub &'static str);

impl ChatRequest {
    /// Checks the fields the gateway itself needs.
    pub fn from_json(value: Value) -> Result<Self, InvalidChat> {
        let Value::Object(body) = value else {
            return Err(InvalidChat("the body must be a JSON object"));
        };
        let model = match body.get("model") {
            Some(Value::String(m)) if !m.is_empty() => m.clone(),
            _ => return Err(InvalidChat("\"model\" must be a non-empty string")),
        };
        match body.get("messages") {
            Some(Value::Array(m)) if !m.is_empty() => {}
            _ => return Err(InvalidChat("\"messages\" must be a non-empty array")),
        }
        let stream = match body.get("stream") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(InvalidChat("\"stream\" must be a boolean")),
        };
        let include_usage = body
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        Ok(Self {
            body,
            model,
            stream,
            include_usage,
        })
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
}

/// An upstream's error answer, in Keel's terms.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamError {
    pub code: String,
    pub message: String,
}

/// Why a request could not be put in the provider's shape (a 422 for the client).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct TranslateError(pub String);

/// Why an upstream stream cannot go on.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamFault {
    /// The upstream sent an error event.
    Upstream(UpstreamError),
    /// The upstream sent something that is not its API's shape.
    Malformed(String),
}

/// Turns one upstream stream, event by event, into OpenAI's chunk stream.
pub trait StreamTranslator: Send {
    /// Appends the client's frames for `event` to `out` (without the final `[DONE]`);
    /// Ok(true) when the upstream said the answer is complete.
    fn translate(&mut self, event: &SseEvent, out: &mut Vec<u8>) -> Result<bool, StreamFault>;
    fn usage(&self) -> Usage;
}

pub trait Provider: Send + Sync {
    fn config(&self) -> &ProviderConfig;
    /// The URL chat requests go to.
    fn url(&self) -> &str;
    /// Authentication and version headers.
    fn headers(&self) -> Vec<(HeaderName, HeaderValue)>;
    /// The upstream request body for `model`.
    fn body(&self, chat: &ChatRequest, model: &str) -> Result<Vec<u8>, TranslateError>;
    /// A complete answer in OpenAI's `chat.completion` shape, and its usage.
    fn completion(&self, body: &[u8]) -> Result<(Value, Usage), String>;
    fn error(&self, status: u16, body: &[u8]) -> UpstreamError;
    fn translator(&self, chat: &ChatRequest) -> Box<dyn StreamTranslator>;
}

pub fn build(config: ProviderConfig) -> Arc<dyn Provider> {
    match config.kind {
        ProviderKind::OpenAi => Arc::new(openai::OpenAi::new(config)),
        ProviderKind::Anthropic => Arc::new(anthropic::Anthropic::new(config)),
    }
}

/// The message of an error body that is not JSON: its start, as text.
pub fn body_excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(300)]);
    if text.trim().is_empty() {
        "(empty body)".into()
    } else {
        text.trim().to_string()
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_chat_request_needs_a_model_and_messages() {
        let ok = ChatRequest::from_json(json!({
            "model": "m", "messages": [{"role": "user", "content": "hi"}],
            "stream": true, "stream_options": {"include_usage": true}
        }))
        .unwrap();
        assert!(ok.stream && ok.include_usage);
        assert!(ChatRequest::from_json(json!({"messages": [{}]})).is_err());
        assert!(ChatRequest::from_json(json!({"model": "m", "messages": []})).is_err());
        assert!(
            ChatRequest::from_json(json!({"model": "m", "messages": [{}], "stream": 1})).is_err()
        );
        assert!(ChatRequest::from_json(json!([1])).is_err());
    }
}
