//! The Responses event stream for an answer over retrieved passages, in the order the OpenAI
//! SDK's stream accumulator expects: the response created, the search call's events, the
//! message item and its text part, text deltas with citations as they are parsed, the done
//! events, and `response.completed` holding every item that was added.
//!
//! The upstream is the gateway's chat stream (OpenAI chunks). An error before any text turns
//! the answer into the degraded one (the passages); after text it ends the stream with
//! `response.failed`. No frame ever has a top-level `error` key: the SDK raises on it.

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::response::Response;
use futures_util::StreamExt;
use keel_gateway::sse::{frame, SseEvent, SseParser};
use keel_gateway::stream::ClientStream;
use keel_rag::answer::{degraded_answer, Citation, CitationParser};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::responses::{annotation, message_item, search_call_item, usage, Turn};

pub(super) enum Source {
    Upstream(ClientStream),
    /// The model could not start: answer with the passages.
    Degraded,
}

/// Frames numbered by `sequence_number`, sent to the client's body.
struct Events {
    tx: mpsc::Sender<Bytes>,
    sequence: u64,
}

impl Events {
    /// False once the client has gone: the caller stops, dropping the upstream.
    async fn send(&mut self, kind: &str, mut data: Value) -> bool {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        let mut out = Vec::new();
        frame(&mut out, Some(kind), &data.to_string());
        self.tx.send(Bytes::from(out)).await.is_ok()
    }
}

/// The message being written: its text so far and its annotations.
struct Message<'a> {
    turn: &'a Turn,
    output_index: usize,
    text: String,
    annotations: Vec<Value>,
}

impl Message<'_> {
    async fn delta(&mut self, events: &mut Events, text: &str, citations: &[Citation]) -> bool {
        if !text.is_empty() {
            self.text.push_str(text);
            let ok = events
                .send(
                    "response.output_text.delta",
                    json!({"item_id": self.turn.message_id, "output_index": self.output_index,
                           "content_index": 0, "delta": text, "logprobs": []}),
                )
                .await;
            if !ok {
                return false;
            }
        }
        for c in citations {
            let a = annotation(c, &self.turn.passages);
            let ok = events
                .send(
                    "response.output_text.annotation.added",
                    json!({"item_id": self.turn.message_id, "output_index": self.output_index,
                           "content_index": 0, "annotation_index": self.annotations.len(),
                           "annotation": a}),
                )
                .await;
            self.annotations.push(a);
            if !ok {
                return false;
            }
        }
        true
    }
}

pub(super) fn stream_response(turn: Turn, source: Source) -> Response {
    let (tx, rx) = mpsc::channel::<Bytes>(32);
    tokio::spawn(async move {
        let mut events = Events { tx, sequence: 0 };
        run(&mut events, turn, source).await;
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    super::chat::event_stream(Body::from_stream(body))
}

/// What the upstream stream gave: text was written, or it broke with a reason.
enum Ended {
    Done(Option<Value>),
    Failed(String),
}

async fn run(events: &mut Events, turn: Turn, source: Source) {
    let started = turn.object("in_progress", Vec::new(), None, false);
    if !events
        .send("response.created", json!({"response": started}))
        .await
        || !events
            .send("response.in_progress", json!({"response": started}))
            .await
    {
        return;
    }
    let mut output: Vec<Value> = Vec::new();
    if let Some(call) = &turn.search_call {
        let id = call["id"].as_str().unwrap_or_default().to_owned();
        let query = call["queries"][0].as_str().unwrap_or_default();
        let pending = search_call_item(&id, "in_progress", query, None);
        let steps = [
            (
                "response.output_item.added",
                json!({"output_index": 0, "item": pending}),
            ),
            (
                "response.file_search_call.in_progress",
                json!({"output_index": 0, "item_id": id}),
            ),
            (
                "response.file_search_call.searching",
                json!({"output_index": 0, "item_id": id}),
            ),
            (
                "response.file_search_call.completed",
                json!({"output_index": 0, "item_id": id}),
            ),
            (
                "response.output_item.done",
                json!({"output_index": 0, "item": call}),
            ),
        ];
        for (kind, data) in steps {
            if !events.send(kind, data).await {
                return;
            }
        }
        output.push(call.clone());
    }
    let mut message = Message {
        turn: &turn,
        output_index: output.len(),
        text: String::new(),
        annotations: Vec::new(),
    };
    let opened = [
        (
            "response.output_item.added",
            json!({"output_index": message.output_index,
                   "item": message_item(&turn.message_id, "in_progress", "", Vec::new())}),
        ),
        (
            "response.content_part.added",
            json!({"item_id": turn.message_id, "output_index": message.output_index, "content_index": 0,
                   "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}}),
        ),
    ];
    for (kind, data) in opened {
        if !events.send(kind, data).await {
            return;
        }
    }

    let mut degraded = matches!(source, Source::Degraded);
    let mut upstream_usage = None;
    if let Source::Upstream(upstream) = source {
        let mut parser = CitationParser::new(turn.passages.len());
        match relay(events, &mut message, &mut parser, upstream).await {
            None => return,
            Some(Ended::Done(u)) => upstream_usage = u,
            Some(Ended::Failed(reason)) if message.text.is_empty() => {
                tracing::warn!(target: "keel::rag", reason = %reason, "answer degraded: the model failed before any text");
                degraded = true;
            }
            Some(Ended::Failed(reason)) => {
                let mut failed = turn.object("failed", output, None, false);
                failed["error"] = json!({"code": "server_error", "message": reason});
                events
                    .send("response.failed", json!({"response": failed}))
                    .await;
                return;
            }
        }
        if !degraded {
            let (tail, fallback) = parser.finish_citing(&turn.passages);
            if !message.delta(events, &tail, &fallback).await {
                return;
            }
        }
    }
    if degraded {
        let (text, citations) = degraded_answer(&turn.passages);
        if !message.delta(events, &text, &citations).await {
            return;
        }
    }
    let Message {
        output_index,
        text,
        annotations,
        ..
    } = message;
    let item = message_item(&turn.message_id, "completed", &text, annotations.clone());
    let closing = [
        (
            "response.output_text.done",
            json!({"item_id": turn.message_id, "output_index": output_index, "content_index": 0,
                   "text": text, "logprobs": []}),
        ),
        (
            "response.content_part.done",
            json!({"item_id": turn.message_id, "output_index": output_index, "content_index": 0,
                   "part": {"type": "output_text", "text": text, "annotations": annotations, "logprobs": []}}),
        ),
        (
            "response.output_item.done",
            json!({"output_index": output_index, "item": item}),
        ),
    ];
    for (kind, data) in closing {
        if !events.send(kind, data).await {
            return;
        }
    }
    output.push(item);
    let done = turn.object(
        "completed",
        output,
        Some(usage(upstream_usage.as_ref())),
        degraded,
    );
    events
        .send("response.completed", json!({"response": done}))
        .await;
}

/// Relays the upstream's text as deltas; None when the client went away.
async fn relay(
    events: &mut Events,
    message: &mut Message<'_>,
    parser: &mut CitationParser,
    mut upstream: ClientStream,
) -> Option<Ended> {
    let mut sse = SseParser::default();
    let mut frames: Vec<SseEvent> = Vec::new();
    let mut usage = None;
    while let Some(Ok(bytes)) = upstream.next().await {
        sse.feed(&bytes, &mut frames);
        for f in frames.drain(..) {
            if f.data.trim() == "[DONE]" {
                return Some(Ended::Done(usage));
            }
            let Ok(chunk) = serde_json::from_str::<Value>(&f.data) else {
                return Some(Ended::Failed("the model sent a malformed event".into()));
            };
            if let Some(e) = chunk.get("error") {
                let reason = e["message"].as_str().unwrap_or("the model failed");
                return Some(Ended::Failed(reason.to_owned()));
            }
            if let Some(u) = chunk.get("usage").filter(|u| !u.is_null()) {
                usage = Some(u.clone());
            }
            if let Some(delta) = chunk["choices"][0]["delta"]["content"].as_str() {
                let (text, cited) = parser.feed(delta);
                if !message.delta(events, &text, &cited).await {
                    return None;
                }
            }
        }
    }
    Some(Ended::Failed("the model's stream ended early".into()))
}
