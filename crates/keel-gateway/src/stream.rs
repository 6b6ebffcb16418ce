//! The client's side of a streamed answer: upstream events are translated and passed on as
//! they arrive, never buffered whole. If the upstream breaks after the first byte reached
//! the client, it is too late to fall back: the client's stream ends with an SSE `error`
//! event and `[DONE]`, so that clients see an error rather than a silently short answer.

use std::convert::Infallible;
use std::pin::Pin;
use std::time::Instant;

use bytes::Bytes;
use futures_util::Stream;
use serde_json::json;
use tokio::sync::OwnedSemaphorePermit;

use crate::meter::RequestRecord;
use crate::metrics::names;
use crate::sse::frame;
use crate::upstream::{Pumped, UpstreamStream};

pub type ClientStream = Pin<Box<dyn Stream<Item = Result<Bytes, Infallible>> + Send>>;

pub const DONE: &[u8] = b"data: [DONE]\n\n";

/// The SSE error event a client receives when the stream breaks midway.
pub fn error_event(out: &mut Vec<u8>, code: &str, message: &str) {
    let body = json!({"error": {"code": code, "message": message}});
    frame(out, Some("error"), &body.to_string());
}

enum Phase {
    First(Vec<u8>, bool),
    Running,
    Finished,
}

struct State {
    upstream: UpstreamStream,
    phase: Phase,
    record: RequestRecord,
    sent: Instant,
    deadline: Instant,
    // Held until the stream ends: the provider is busy until then.
    _permit: OwnedSemaphorePermit,
}

impl State {
    fn finish(&mut self, outcome: &'static str) {
        self.phase = Phase::Finished;
        self.record.usage = self.upstream.usage();
        self.record.upstream_latency = Some(self.sent.elapsed());
        self.record.finish(outcome);
    }
}

pub fn client_stream(
    upstream: UpstreamStream,
    first: Vec<u8>,
    done: bool,
    permit: OwnedSemaphorePermit,
    record: RequestRecord,
    sent: Instant,
    deadline: Instant,
) -> ClientStream {
    let state = State {
        upstream,
        phase: Phase::First(first, done),
        record,
        sent,
        deadline,
        _permit: permit,
    };
    Box::pin(futures_util::stream::unfold(state, |mut s| async move {
        let mut out = match std::mem::replace(&mut s.phase, Phase::Running) {
            Phase::Finished => return None,
            Phase::First(mut first, done) => {
                if done {
                    first.extend_from_slice(DONE);
                    s.finish("success");
                }
                first
            }
            Phase::Running => match s.upstream.next(s.deadline).await {
                Pumped::Frames(frames) => frames,
                Pumped::Done(mut frames) => {
                    frames.extend_from_slice(DONE);
                    s.finish("success");
                    frames
                }
                Pumped::Broken {
                    mut frames,
                    failure,
                    error,
                } => {
                    tracing::warn!(
                        target: "keel::gateway",
                        request_id = %s.record.request_id,
                        provider = %s.record.provider,
                        model = %s.record.model,
                        failure = failure.label(),
                        detail = %error.message,
                        "upstream stream broke after the first byte"
                    );
                    metrics::counter!(names::STREAM_ERRORS,
                        "provider" => s.record.provider.clone(), "model" => s.record.model_label.clone())
                    .increment(1);
                    error_event(&mut frames, &error.code, &error.message);
                    frames.extend_from_slice(DONE);
                    s.finish("stream_broken");
                    frames
                }
            },
        };
        if out.is_empty() {
            out.extend_from_slice(b": keel\n\n");
        }
        Some((Ok(Bytes::from(out)), s))
    }))
}
