//! The designed answer when every target of a route has failed: the route's configured text
//! (a local model later), in the shape the client asked for. The HTTP edge marks it with the
//! `x-keel-degraded: true` header; the body carries a `degraded` field. Status 200 by
//! default; 503 (with Keel's error shape and `Retry-After` when known) if the route says so.

use std::time::Duration;

use serde_json::{json, Value};

use crate::config::DegradedSettings;
use crate::provider::unix_now;
use crate::sse::frame;
use crate::stream::DONE;

pub struct Degraded {
    pub settings: DegradedSettings,
    pub reason: String,
    pub model: String,
    pub stream: bool,
    /// When the first target may be called again, if a provider said so.
    pub retry_after: Option<Duration>,
}

/// A degraded answer ready to send, in HTTP-neutral terms.
#[derive(Debug, PartialEq)]
pub enum DegradedBody {
    /// A 503 with Keel's error shape; `retry_after` in whole seconds when known.
    Unavailable {
        body: Value,
        retry_after: Option<u64>,
    },
    /// A 200 `chat.completion`.
    Completion(Value),
    /// A 200 event stream: the message as one chunk, a stop chunk and `[DONE]`.
    Stream(Vec<u8>),
}

impl Degraded {
    pub fn render(self) -> DegradedBody {
        let id = format!("keel-degraded-{}", uuid::Uuid::new_v4().simple());
        if self.settings.status == 503 {
            return DegradedBody::Unavailable {
                body: json!({
                    "error": {"code": "upstream_unavailable", "message": self.settings.message},
                    "degraded": true,
                    "degraded_reason": self.reason,
                }),
                retry_after: self
                    .retry_after
                    .map(|wait| wait.as_secs_f64().ceil().max(1.0) as u64),
            };
        }
        let created = unix_now();
        if self.stream {
            let chunk = |delta: Value, finish: Value| {
                json!({
                    "id": id, "object": "chat.completion.chunk", "created": created,
                    "model": self.model, "degraded": true,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                })
                .to_string()
            };
            let mut out = Vec::new();
            let message = json!({"role": "assistant", "content": self.settings.message});
            frame(&mut out, None, &chunk(message, Value::Null));
            frame(&mut out, None, &chunk(json!({}), "stop".into()));
            out.extend_from_slice(DONE);
            return DegradedBody::Stream(out);
        }
        DegradedBody::Completion(json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": self.settings.message},
                "finish_reason": "stop",
            }],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
            "degraded": true,
            "degraded_reason": self.reason,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn degraded(status: u16, stream: bool) -> Degraded {
        Degraded {
            settings: DegradedSettings {
                message: "later".into(),
                status,
            },
            reason: "a/b: timeout".into(),
            model: "m".into(),
            stream,
            retry_after: Some(Duration::from_millis(1_200)),
        }
    }

    #[test]
    fn a_503_route_answers_with_the_error_shape_and_a_whole_retry_after() {
        let DegradedBody::Unavailable { body, retry_after } = degraded(503, true).render() else {
            panic!("a 503 route must answer Unavailable, streamed or not");
        };
        assert_eq!(retry_after, Some(2));
        assert_eq!(body["error"]["code"], "upstream_unavailable");
        assert_eq!(body["degraded_reason"], "a/b: timeout");
    }

    #[test]
    fn a_200_route_answers_in_the_shape_asked_for() {
        let DegradedBody::Completion(body) = degraded(200, false).render() else {
            panic!("expected a completion");
        };
        assert_eq!(body["choices"][0]["message"]["content"], "later");
        assert_eq!(body["degraded"], true);
        let DegradedBody::Stream(bytes) = degraded(200, true).render() else {
            panic!("expected a stream");
        };
        let text = String::from_utf8(bytes).unwrap();
        assert_eq!(text.matches("data: ").count(), 3, "{text}");
        assert!(text.contains("\"content\":\"later\"") && text.ends_with("data: [DONE]\n\n"));
    }
}
