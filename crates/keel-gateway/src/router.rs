//! The fallback loop: a request walks its route's targets in order. On each target it passes
//! the circuit breaker, waits out any cooldown that fits its deadline, takes a concurrency
//! slot, and retries retryable failures with backoff; when a target gives up, the next one
//! is tried. When every target has failed, the route's degraded answer is given.
//!
//! Everything runs inside the request's own future: when the client leaves, the future is
//! dropped, and with it every pending wait and retry.

use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::HeaderValue;
use serde_json::Value;

use crate::circuit::Admitted;
use crate::config::{DegradedSettings, Target};
use crate::gateway::Gateway;
use crate::meter::RequestRecord;
use crate::metrics::names;
use crate::provider::{ChatRequest, UpstreamError};
use crate::retry::{Decision, RetryPolicy};
use crate::stream::{client_stream, ClientStream};
use crate::upstream::{Attempt, AttemptResult};

#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("no route serves model '{0}'")]
    NoRoute(String),
    #[error("{0}")]
    Untranslatable(String),
}

/// Which target answered, after how many attempts.
#[derive(Debug, Clone)]
pub struct Served {
    pub provider: String,
    pub model: String,
    pub attempts: u32,
}

pub struct Degraded {
    pub settings: DegradedSettings,
    pub reason: String,
    pub model: String,
    pub stream: bool,
    /// When the first target may be called again, if a provider said so.
    pub retry_after: Option<Duration>,
}

pub enum Answer {
    Complete {
        body: Value,
        served: Served,
    },
    Stream {
        body: ClientStream,
        served: Served,
    },
    /// A client error from the upstream (4xx other than 429), passed on with its status.
    Refused {
        status: u16,
        error: UpstreamError,
        served: Served,
    },
    Degraded(Degraded),
}

impl Gateway {
    pub async fn chat(
        &self,
        chat: ChatRequest,
        request_id: HeaderValue,
        charge: Option<keel_limits::Charge>,
    ) -> Result<Answer, ChatError> {
        let route = self
            .config
            .resolve(&chat.model)
            .ok_or_else(|| ChatError::NoRoute(chat.model.clone()))?;
        let settings = &route.settings;
        let deadline = Instant::now() + settings.timeouts.total;
        let policy = RetryPolicy::new(settings.retry.clone());
        let mut record = RequestRecord::new(
            &route.name,
            request_id.to_str().unwrap_or_default(),
            chat.stream,
        );
        record.charge = charge;
        let mut reasons: Vec<String> = Vec::new();
        let mut untranslatable = Vec::new();

        for target in &route.targets {
            let model = target.model.clone().unwrap_or_else(|| chat.model.clone());
            let key = format!("{}/{}", target.provider, model);
            let Some(handle) = self.providers.get(&target.provider) else {
                continue;
            };
            let body = match handle.provider.body(&chat, &model) {
                Ok(b) => Bytes::from(b),
                Err(e) => {
                    untranslatable.push(format!("{key}: {e}"));
                    record.fallback("untranslatable");
                    continue;
                }
            };
            record.provider = target.provider.clone();
            record.model = model.clone();
            record.price = self.config.prices.get(&key).copied();
            let breaker = self.circuit(&key);
            let mut attempts_here = 0;
            loop {
                let Some(admitted) = Admitted::new(breaker.clone()) else {
                    reasons.push(format!("{key}: circuit open"));
                    record.fallback("circuit_open");
                    break;
                };
                if let Some(wait) = self.cooldowns.remaining(&key) {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if wait > settings.retry.max_retry_after || wait >= left {
                        reasons.push(format!("{key}: rate limited for {wait:?} more"));
                        record.fallback("cooling_down");
                        break;
                    }
                    record.retry_after_wait += wait;
                    tokio::time::sleep(wait).await;
                }
                let left = deadline.saturating_duration_since(Instant::now());
                let Some(permit) = handle.limiter.acquire(left).await else {
                    reasons.push(format!("{key}: provider at its concurrency limit"));
                    record.fallback("concurrency_limit");
                    break;
                };
                attempts_here += 1;
                record.attempts += 1;
                let sent = Instant::now();
                let attempt = Attempt {
                    client: handle.client(settings.timeouts.connect),
                    provider: handle.provider.as_ref(),
                    chat: &chat,
                    body: body.clone(),
                    request_id: &request_id,
                    first_byte: settings.timeouts.first_byte,
                    deadline,
                };
                let result = attempt.run().await;
                let served = || Served {
                    provider: target.provider.clone(),
                    model: model.clone(),
                    attempts: record.attempts,
                };
                match result {
                    AttemptResult::Complete { answer, usage } => {
                        log_call(&record.request_id, target, &model, attempts_here, 200, sent);
                        self.attempt_metric(target, &model, "ok");
                        self.report_circuit(&key, admitted.record(true));
                        let served = served();
                        record.upstream_latency = Some(sent.elapsed());
                        record.usage = usage;
                        record.finish("success");
                        return Ok(Answer::Complete {
                            body: answer,
                            served,
                        });
                    }
                    AttemptResult::Streaming {
                        stream,
                        first,
                        done,
                    } => {
                        log_call(&record.request_id, target, &model, attempts_here, 200, sent);
                        self.attempt_metric(target, &model, "ok");
                        self.report_circuit(&key, admitted.record(true));
                        let served = served();
                        record.time_to_first_token = Some(record.started.elapsed());
                        let body =
                            client_stream(stream, first, done, permit, record, sent, deadline);
                        return Ok(Answer::Stream { body, served });
                    }
                    AttemptResult::Refused { status, error } => {
                        log_call(
                            &record.request_id,
                            target,
                            &model,
                            attempts_here,
                            status,
                            sent,
                        );
                        self.attempt_metric(target, &model, "client_error");
                        self.report_circuit(&key, admitted.neutral());
                        let served = served();
                        record.upstream_latency = Some(sent.elapsed());
                        record.finish("upstream_client_error");
                        return Ok(Answer::Refused {
                            status,
                            error,
                            served,
                        });
                    }
                    AttemptResult::Failed {
                        failure,
                        told,
                        detail,
                    } => {
                        drop(permit);
                        self.attempt_metric(target, &model, failure.label());
                        let state = if failure.counts_against_circuit() {
                            admitted.record(false)
                        } else {
                            admitted.neutral()
                        };
                        self.report_circuit(&key, state);
                        if failure == crate::upstream::Failure::RateLimited {
                            record.rate_limited += 1;
                            metrics::counter!(names::RATE_LIMITED,
                                "provider" => target.provider.clone(), "model" => model.clone())
                            .increment(1);
                        }
                        if let Some(t) = told {
                            self.cooldowns.hold(&key, t);
                        }
                        tracing::warn!(
                            target: "keel::gateway",
                            request_id = %record.request_id,
                            provider = %target.provider,
                            model = %model,
                            attempt = attempts_here,
                            failure = failure.label(),
                            retry_after_ms = told.map(|t| t.as_secs_f64() * 1e3),
                            detail = %detail,
                            "upstream attempt failed"
                        );
                        reasons.push(format!("{key}: {}", failure.label()));
                        if !failure.retry_same_target() {
                            record.fallback(failure.label());
                            break;
                        }
                        let left = deadline.saturating_duration_since(Instant::now());
                        match policy.decide(attempts_here, told, left) {
                            // A told wait is served by the cooldown at the top of the loop.
                            Decision::RetryAfter(_) if told.is_some() => {}
                            Decision::RetryAfter(wait) => tokio::time::sleep(wait).await,
                            Decision::NextTarget => {
                                record.fallback(failure.label());
                                break;
                            }
                        }
                    }
                }
            }
        }

        if record.attempts == 0 && reasons.is_empty() && !untranslatable.is_empty() {
            record.finish("untranslatable");
            return Err(ChatError::Untranslatable(untranslatable.join("; ")));
        }
        reasons.extend(untranslatable);
        let reason = if reasons.is_empty() {
            "the route has no usable target".to_string()
        } else {
            reasons.join("; ")
        };
        tracing::warn!(
            target: "keel::gateway",
            request_id = %record.request_id,
            route = %route.name,
            reason = %reason,
            "degraded answer"
        );
        metrics::counter!(names::DEGRADED, "route" => route.name.clone()).increment(1);
        record.finish("degraded");
        let retry_after = route.targets.first().and_then(|t| {
            let model = t.model.as_deref().unwrap_or(&chat.model);
            self.cooldowns.remaining(&format!("{}/{model}", t.provider))
        });
        Ok(Answer::Degraded(Degraded {
            settings: settings.degraded.clone(),
            reason,
            model: chat.model,
            stream: chat.stream,
            retry_after,
        }))
    }

    fn attempt_metric(&self, target: &Target, model: &str, outcome: &'static str) {
        metrics::counter!(names::ATTEMPTS,
            "provider" => target.provider.clone(), "model" => model.to_string(), "outcome" => outcome)
        .increment(1);
    }
}

/// The log line of an upstream call that got an answer (failed calls log a warning instead).
fn log_call(
    request_id: &str,
    target: &crate::config::Target,
    model: &str,
    attempt: u32,
    status: u16,
    sent: Instant,
) {
    tracing::info!(
        target: "keel::gateway",
        request_id,
        provider = %target.provider,
        model,
        attempt,
        status,
        latency_ms = sent.elapsed().as_secs_f64() * 1e3,
        "upstream call"
    );
}
