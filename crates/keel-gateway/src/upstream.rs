//! One attempt at one target: send, wait within the time limits, and say what happened in
//! terms the fallback loop can act on.
//!
//! A streamed attempt counts as answered only once its first event has been read and
//! translated: until then nothing has reached the client, and a failure can still be retried
//! or sent to the next target.

use std::pin::Pin;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use reqwest::header::{HeaderValue, ACCEPT, CONTENT_TYPE};
use serde_json::Value;
use tokio::time::timeout_at;

use crate::provider::{ChatRequest, Provider, StreamFault, StreamTranslator, UpstreamError, Usage};
use crate::retry::told_wait;
use crate::sse::{SseEvent, SseParser};

/// Why an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    RateLimited,
    /// A 5xx status.
    Server(u16),
    Connect,
    /// No headers (or first event) within the time to first byte, or the deadline passed.
    Timeout,
    /// The connection broke (reset, closed) before an answer was read.
    Network,
    /// The upstream answered with something that is not its API's shape.
    Malformed,
    /// The upstream's stream opened with an error event.
    StreamError,
}

impl Failure {
    pub fn label(self) -> &'static str {
        match self {
            Failure::RateLimited => "rate_limited",
            Failure::Server(_) => "server_error",
            Failure::Connect => "connect_error",
            Failure::Timeout => "timeout",
            Failure::Network => "network_error",
            Failure::Malformed => "malformed_response",
            Failure::StreamError => "stream_error",
        }
    }

    /// Whether the target's health is in question (a 429 says nothing of it).
    pub fn counts_against_circuit(self) -> bool {
        self != Failure::RateLimited
    }

    /// Whether trying the same target again may help.
    pub fn retry_same_target(self) -> bool {
        match self {
            Failure::Server(status) => matches!(status, 500 | 502 | 503 | 504 | 529),
            Failure::Malformed => false,
            _ => true,
        }
    }
}

pub type ByteStream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// An upstream stream being translated into the client's.
pub struct UpstreamStream {
    body: ByteStream,
    parser: SseParser,
    translator: Box<dyn StreamTranslator>,
    events: Vec<SseEvent>,
}

/// What one read of the upstream stream gave.
pub enum Pumped {
    Frames(Vec<u8>),
    /// The upstream said the answer is complete (these frames end it).
    Done(Vec<u8>),
    /// The stream cannot go on; `frames` were translated before the break.
    Broken {
        frames: Vec<u8>,
        failure: Failure,
        error: UpstreamError,
    },
}

impl UpstreamStream {
    pub fn usage(&self) -> Usage {
        self.translator.usage()
    }

    /// Reads until there are frames for the client, the stream ends, or it breaks; no later
    /// than `until`.
    pub async fn next(&mut self, until: Instant) -> Pumped {
        let mut out = Vec::new();
        loop {
            let broken = |out, failure, code: &str, message: String| Pumped::Broken {
                frames: out,
                failure,
                error: UpstreamError {
                    code: code.into(),
                    message,
                },
            };
            let chunk = match timeout_at(until.into(), self.body.next()).await {
                Err(_) => {
                    let m = "the upstream stream stalled past the deadline".into();
                    return broken(out, Failure::Timeout, "upstream_timeout", m);
                }
                Ok(None) => {
                    let m = "the upstream closed the stream before the answer was complete";
                    return broken(out, Failure::Network, "upstream_stream_cut", m.into());
                }
                Ok(Some(Err(e))) => {
                    let m = format!("the upstream stream broke: {}", error_chain(&e));
                    return broken(out, Failure::Network, "upstream_stream_cut", m);
                }
                Ok(Some(Ok(chunk))) => chunk,
            };
            self.events.clear();
            self.parser.feed(&chunk, &mut self.events);
            for event in &self.events {
                match self.translator.translate(event, &mut out) {
                    Ok(true) => return Pumped::Done(out),
                    Ok(false) => {}
                    Err(StreamFault::Upstream(error)) => {
                        return Pumped::Broken {
                            frames: out,
                            failure: Failure::StreamError,
                            error,
                        }
                    }
                    Err(StreamFault::Malformed(m)) => {
                        return broken(out, Failure::Malformed, "upstream_malformed", m)
                    }
                }
            }
            if !out.is_empty() {
                return Pumped::Frames(out);
            }
        }
    }
}

pub enum AttemptResult {
    Complete {
        answer: Value,
        usage: Usage,
    },
    /// A stream whose first frames have been read (`done`: they were also its last).
    Streaming {
        stream: UpstreamStream,
        first: Vec<u8>,
        done: bool,
    },
    Failed {
        failure: Failure,
        /// The provider's own word on when to try again.
        told: Option<Duration>,
        detail: String,
    },
    /// A client error (4xx other than 429): not retried anywhere, passed to the client.
    Refused {
        status: u16,
        error: UpstreamError,
    },
}

pub struct Attempt<'a> {
    pub client: &'a reqwest::Client,
    pub provider: &'a dyn Provider,
    pub chat: &'a ChatRequest,
    pub body: Bytes,
    pub request_id: &'a HeaderValue,
    pub first_byte: Duration,
    pub deadline: Instant,
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

fn failed(failure: Failure, told: Option<Duration>, detail: impl Into<String>) -> AttemptResult {
    AttemptResult::Failed {
        failure,
        told,
        detail: detail.into(),
    }
}

impl Attempt<'_> {
    pub async fn run(self) -> AttemptResult {
        let first_byte_at = (Instant::now() + self.first_byte).min(self.deadline);
        let mut request = self
            .client
            .post(self.provider.url())
            .header(CONTENT_TYPE, "application/json")
            .header("x-request-id", self.request_id.clone())
            .body(self.body.clone());
        request = request.header(
            ACCEPT,
            if self.chat.stream {
                "text/event-stream"
            } else {
                "application/json"
            },
        );
        for (name, value) in self.provider.headers() {
            request = request.header(name, value);
        }
        let response = match timeout_at(first_byte_at.into(), request.send()).await {
            Err(_) => return failed(Failure::Timeout, None, "no response headers in time"),
            Ok(Err(e)) => {
                let failure = if e.is_connect() {
                    Failure::Connect
                } else if e.is_timeout() {
                    Failure::Timeout
                } else {
                    Failure::Network
                };
                return failed(failure, None, error_chain(&e));
            }
            Ok(Ok(r)) => r,
        };
        let status = response.status().as_u16();
        if !response.status().is_success() {
            let told = told_wait(response.headers(), SystemTime::now());
            // The error body is read for the log and for a client error's message, briefly.
            let read_until = (Instant::now() + Duration::from_secs(2)).min(self.deadline);
            let body = timeout_at(read_until.into(), response.bytes())
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            let error = self.provider.error(status, &body);
            return match status {
                429 => failed(Failure::RateLimited, told, error.message),
                500..=599 => failed(Failure::Server(status), told, error.message),
                _ => AttemptResult::Refused { status, error },
            };
        }
        if self.chat.stream {
            let mut stream = UpstreamStream {
                body: Box::pin(response.bytes_stream()),
                parser: SseParser::default(),
                translator: self.provider.translator(self.chat),
                events: Vec::new(),
            };
            return match stream.next(first_byte_at).await {
                Pumped::Frames(first) => AttemptResult::Streaming {
                    stream,
                    first,
                    done: false,
                },
                Pumped::Done(first) => AttemptResult::Streaming {
                    stream,
                    first,
                    done: true,
                },
                Pumped::Broken { failure, error, .. } => failed(failure, None, error.message),
            };
        }
        let body = match timeout_at(self.deadline.into(), response.bytes()).await {
            Err(_) => return failed(Failure::Timeout, None, "the answer did not arrive in time"),
            Ok(Err(e)) => return failed(Failure::Network, None, error_chain(&e)),
            Ok(Ok(b)) => b,
        };
        match self.provider.completion(&body) {
            Ok((answer, usage)) => AttemptResult::Complete { answer, usage },
            Err(detail) => failed(Failure::Malformed, None, detail),
        }
    }
}
