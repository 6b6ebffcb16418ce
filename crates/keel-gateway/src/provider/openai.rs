//! OpenAI's Chat Completions API, and every server that speaks it (vLLM, Ollama, TGI).
//!
//! Requests pass through with the model name replaced; answers and stream chunks pass
//! through unchanged, read only to check their shape and to count tokens.

use reqwest::header::{HeaderName, HeaderValue, AUTHORIZATION};
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    body_excerpt, ChatRequest, Provider, StreamFault, StreamTranslator, TranslateError,
    UpstreamError, Usage,
};
use crate::config::ProviderConfig;
use crate::sse::{frame, SseEvent};

pub struct OpenAi {
    config: ProviderConfig,
    url: String,
}

impl OpenAi {
    pub fn new(config: ProviderConfig) -> Self {
        let url = format!("{}/chat/completions", config.base_url);
        Self { config, url }
    }
}

/// What a stream chunk is read for.
#[derive(Deserialize)]
struct ChunkPeek {
    #[serde(default)]
    choices: Option<Vec<IgnoredAny>>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<Value>,
}

/// Reads OpenAI's error body (`{"error": {"message", "type", "code"}}`).
pub fn parse_error(body: &[u8]) -> UpstreamError {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    let field = |k: &str| {
        error
            .and_then(|e| e.get(k))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let message = match error {
        Some(Value::String(s)) => Some(s.clone()),
        _ => field("message"),
    };
    UpstreamError {
        code: field("code")
            .or_else(|| field("type"))
            .unwrap_or_else(|| "upstream_error".into()),
        message: message.unwrap_or_else(|| body_excerpt(body)),
    }
}

impl Provider for OpenAi {
    fn config(&self) -> &ProviderConfig {
        &self.config
    }

    fn url(&self) -> &str {
        &self.url
    }

    fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        let mut headers = Vec::new();
        if let Some(key) = &self.config.api_key {
            if let Ok(v) = HeaderValue::from_str(&format!("Bearer {key}")) {
                headers.push((AUTHORIZATION, v));
            }
        }
        headers
    }

    fn body(&self, chat: &ChatRequest, model: &str) -> Result<Vec<u8>, TranslateError> {
        let mut body = chat.body.clone();
        body.insert("model".into(), Value::String(model.to_string()));
        if chat.stream && self.config.stream_usage && !chat.include_usage {
            // Ask for usage so that the gateway can count tokens; the usage-only chunk is
            // removed again before the client sees it.
            let options = body.entry("stream_options").or_insert_with(|| json!({}));
            if let Value::Object(o) = options {
                o.insert("include_usage".into(), Value::Bool(true));
            }
        }
        serde_json::to_vec(&body).map_err(|e| TranslateError(e.to_string()))
    }

    fn completion(&self, body: &[u8]) -> Result<(Value, Usage), String> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| format!("the upstream answer is not JSON: {e}"))?;
        if value["choices"].as_array().is_none_or(|c| c.is_empty()) {
            return Err("the upstream answer is not a chat completion with choices".into());
        }
        let usage = match value.get("usage") {
            None | Some(Value::Null) => Usage::default(),
            Some(u) => Usage::deserialize(u)
                .map_err(|e| format!("the upstream answer's usage is malformed: {e}"))?,
        };
        Ok((value, usage))
    }

    fn error(&self, _status: u16, body: &[u8]) -> UpstreamError {
        parse_error(body)
    }

    fn translator(&self, chat: &ChatRequest) -> Box<dyn StreamTranslator> {
        Box::new(OpenAiStream {
            client_wants_usage: chat.include_usage,
            usage: Usage::default(),
        })
    }
}

struct OpenAiStream {
    client_wants_usage: bool,
    usage: Usage,
}

impl StreamTranslator for OpenAiStream {
    fn translate(&mut self, event: &SseEvent, out: &mut Vec<u8>) -> Result<bool, StreamFault> {
        let data = event.data.trim();
        if data == "[DONE]" {
            return Ok(true);
        }
        let peek: ChunkPeek = serde_json::from_str(data)
            .map_err(|e| StreamFault::Malformed(format!("a stream chunk is not JSON: {e}")))?;
        if let Some(error) = peek.error {
            return Err(StreamFault::Upstream(parse_error(
                json!({ "error": error }).to_string().as_bytes(),
            )));
        }
        let usage_only = peek.choices.as_ref().is_some_and(Vec::is_empty);
        if let Some(usage) = peek.usage {
            self.usage = usage;
            if usage_only && !self.client_wants_usage {
                return Ok(false);
            }
        }
        frame(out, None, data);
        Ok(false)
    }

    fn usage(&self) -> Usage {
        self.usage
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProviderKind;
    use std::time::Duration;

    fn provider() -> OpenAi {
        OpenAi::new(ProviderConfig {
            name: "p".into(),
            kind: ProviderKind::OpenAi,
            base_url: "http://127.0.0.1:1/v1".into(),
            api_key: Some("k".into()),
            max_concurrency: 1,
            queue_timeout: Duration::from_millis(1),
            stream_usage: true,
            models: Vec::new(),
            allow_any_model: false,
        })
    }

    fn chat(v: Value) -> ChatRequest {
        ChatRequest::from_json(v).unwrap()
    }

    #[test]
    fn the_body_names_the_target_model_and_asks_for_stream_usage() {
        let p = provider();
        let c = chat(
            json!({"model": "alias", "messages": [{"role": "user", "content": "x"}],
                            "stream": true, "seed": 7}),
        );
        let body: Value = serde_json::from_slice(&p.body(&c, "real").unwrap()).unwrap();
        assert_eq!(body["model"], "real");
        assert_eq!(body["seed"], 7);
        assert_eq!(body["stream_options"]["include_usage"], true);
        assert_eq!(p.url(), "http://127.0.0.1:1/v1/chat/completions");
    }

    #[test]
    fn stream_chunks_pass_and_the_usage_chunk_is_hidden_unless_asked() {
        let p = provider();
        let c = chat(json!({"model": "m", "messages": [{}], "stream": true}));
        let mut t = p.translator(&c);
        let mut out = Vec::new();
        let ev = |d: &str| SseEvent {
            event: None,
            data: d.into(),
        };
        assert!(!t
            .translate(&ev(r#"{"choices":[{"delta":{"content":"hi"}}]}"#), &mut out)
            .unwrap());
        assert_eq!(
            out,
            b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n"
        );
        out.clear();
        t.translate(
            &ev(r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":5}}"#),
            &mut out,
        )
        .unwrap();
        assert!(out.is_empty());
        assert_eq!(t.usage().completion_tokens, 5);
        assert!(t.translate(&ev("[DONE]"), &mut out).unwrap());
        assert!(matches!(
            t.translate(&ev("{not json"), &mut out),
            Err(StreamFault::Malformed(_))
        ));
        assert!(matches!(
            t.translate(&ev(r#"{"error":{"message":"boom"}}"#), &mut out),
            Err(StreamFault::Upstream(_))
        ));
    }

    #[test]
    fn errors_and_malformed_answers() {
        let p = provider();
        let e = p.error(
            400,
            br#"{"error":{"message":"bad","type":"invalid_request_error","code":null}}"#,
        );
        assert_eq!(e.code, "invalid_request_error");
        assert_eq!(e.message, "bad");
        assert_eq!(p.error(502, b"<html>").message, "<html>");
        assert!(p.completion(b"{\"choices\": [").is_err());
        assert!(p.completion(b"{\"choices\": []}").is_err());
        let (_, usage) = p
            .completion(br#"{"choices":[{}],"usage":{"prompt_tokens":1,"completion_tokens":2}}"#)
            .unwrap();
        assert_eq!(usage.prompt_tokens, 1);
    }
}
