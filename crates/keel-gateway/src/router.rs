//! The fallback loop: a request walks its route's targets in order. On each target
//! ([`Gateway::try_target`]) it passes the circuit breaker, waits out any cooldown that fits
//! its deadline, takes a concurrency slot, and retries retryable failures with backoff; when
//! a target gives up, the next one is tried. When every target has failed, the route's
//! degraded answer is given.
//!
//! Everything runs inside the request's own future: when the client leaves, the future is
//! dropped, and with it every pending wait and retry.

use std::time::{Duration, Instant};

use bytes::Bytes;
use keel_engine::generate::GenerateError;
use reqwest::header::HeaderValue;
use serde_json::Value;

use crate::circuit::Admitted;
use crate::config::{RouteSettings, Target};
use crate::degraded::Degraded;
use crate::gateway::Gateway;
use crate::local::{self, Labels, LocalAnswer, LocalRequest, LOCAL};
use crate::meter::RequestRecord;
use crate::metrics::names;
use crate::provider::{ChatRequest, UpstreamError};
use crate::retry::{Decision, RetryPolicy};
use crate::stream::{client_stream, ClientStream};
use crate::upstream::{Attempt, AttemptResult, Failure};

#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// No route serves the name: OpenAI's 404 `model_not_found`.
    #[error("the model '{0}' does not exist or is not served here")]
    NoRoute(String),
    /// No target of the route can take the request's shape: a 422.
    #[error("{0}")]
    Untranslatable(String),
}

/// Which target answered, after how many attempts.
#[derive(Debug, Clone)]
pub struct Served {
    pub provider: String,
    pub model: String,
    pub attempts: u32,
    /// Answered by a local model after every upstream target failed.
    pub degraded: bool,
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
    /// A client error from the upstream (4xx other than 429), passed on with its status; or
    /// a local model's refusal (busy, not ready, past the deadline) when it was the route's
    /// only target.
    Refused {
        status: u16,
        error: UpstreamError,
        served: Served,
        /// Seconds, for a `Retry-After` header.
        retry_after: Option<u64>,
    },
    Degraded(Degraded),
}

/// What one request carries from target to target.
struct Walk<'a> {
    chat: &'a ChatRequest,
    request_id: &'a HeaderValue,
    settings: &'a RouteSettings,
    policy: RetryPolicy,
    deadline: Instant,
    record: RequestRecord,
    /// Why each target gave up, for the degraded answer and its log line.
    reasons: Vec<String>,
    /// The route's last target is being tried.
    last: bool,
    untranslatable: Vec<String>,
}

impl Walk<'_> {
    fn left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    fn give_up(&mut self, target: &Target, why: String, reason: &'static str) {
        self.reasons.push(format!("{}: {why}", target.key()));
        self.record.fallback(reason);
    }
}

/// How one target ended.
enum TargetOutcome {
    Answered(Answer),
    /// Try the next target.
    GaveUp,
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
        let mut record = RequestRecord::new(
            &route.name,
            request_id.to_str().unwrap_or_default(),
            chat.stream,
        );
        record.charge = charge;
        let mut walk = Walk {
            chat: &chat,
            request_id: &request_id,
            settings: &route.settings,
            policy: RetryPolicy::new(route.settings.retry.clone()),
            deadline: Instant::now() + route.settings.timeouts.total,
            record,
            reasons: Vec::new(),
            last: false,
            untranslatable: Vec::new(),
        };
        for (i, target) in route.targets.iter().enumerate() {
            walk.last = i + 1 == route.targets.len();
            if let TargetOutcome::Answered(answer) = self.try_target(target, &mut walk).await {
                return Ok(answer);
            }
        }

        let Walk {
            mut record,
            mut reasons,
            untranslatable,
            ..
        } = walk;
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
        let retry_after = route
            .targets
            .first()
            .and_then(|t| self.cooldowns.remaining(t.key()));
        Ok(Answer::Degraded(Degraded {
            settings: route.settings.degraded.clone(),
            reason,
            model: chat.model,
            stream: chat.stream,
            retry_after,
        }))
    }

    /// One target: attempts with retries until it answers or gives up.
    async fn try_target(&self, target: &Target, walk: &mut Walk<'_>) -> TargetOutcome {
        if target.provider == LOCAL {
            return self.try_local(target, walk).await;
        }
        let model = target.model.as_deref().unwrap_or(&walk.chat.model);
        let Some(handle) = self.providers.get(&target.provider) else {
            return TargetOutcome::GaveUp;
        };
        let body = match handle.provider.body(walk.chat, model) {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                walk.untranslatable
                    .push(format!("{}/{model}: {e}", target.provider));
                walk.record.fallback("untranslatable");
                return TargetOutcome::GaveUp;
            }
        };
        walk.record.at_target(target, model);
        walk.record.price = self
            .config
            .prices
            .get(&format!("{}/{model}", target.provider))
            .copied();
        let breaker = self.circuit(target.key());
        let mut attempts_here = 0;
        loop {
            let Some(admitted) = Admitted::new(breaker.clone()) else {
                walk.give_up(target, "circuit open".into(), "circuit_open");
                return TargetOutcome::GaveUp;
            };
            if let Some(wait) = self.cooldowns.remaining(target.key()) {
                if wait > walk.settings.retry.max_retry_after || wait >= walk.left() {
                    let why = format!("rate limited for {wait:?} more");
                    walk.give_up(target, why, "cooling_down");
                    return TargetOutcome::GaveUp;
                }
                walk.record.retry_after_wait += wait;
                tokio::time::sleep(wait).await;
            }
            let Some(permit) = handle.limiter.acquire(walk.left()).await else {
                let why = "provider at its concurrency limit".into();
                walk.give_up(target, why, "concurrency_limit");
                return TargetOutcome::GaveUp;
            };
            attempts_here += 1;
            walk.record.attempts += 1;
            let sent = Instant::now();
            let result = Attempt {
                client: handle.client(walk.settings.timeouts.connect),
                provider: handle.provider.as_ref(),
                chat: walk.chat,
                body: body.clone(),
                request_id: walk.request_id,
                first_byte: walk.settings.timeouts.first_byte,
                deadline: walk.deadline,
            }
            .run()
            .await;
            let served = Served {
                provider: target.provider.clone(),
                model: model.to_string(),
                attempts: walk.record.attempts,
                degraded: false,
            };
            let record = &mut walk.record;
            let answered = |outcome: &'static str, status: u16| {
                log_call(
                    &record.request_id,
                    target,
                    model,
                    attempts_here,
                    status,
                    sent,
                );
                attempt_metric(target, outcome);
            };
            match result {
                AttemptResult::Complete { answer, usage } => {
                    answered("ok", 200);
                    self.report_circuit(target, admitted.record(true));
                    record.upstream_latency = Some(sent.elapsed());
                    record.usage = usage;
                    record.finish("success");
                    return TargetOutcome::Answered(Answer::Complete {
                        body: answer,
                        served,
                    });
                }
                AttemptResult::Streaming {
                    stream,
                    first,
                    done,
                } => {
                    answered("ok", 200);
                    self.report_circuit(target, admitted.record(true));
                    record.time_to_first_token = Some(record.started.elapsed());
                    let record = std::mem::replace(record, RequestRecord::finished());
                    let body =
                        client_stream(stream, first, done, permit, record, sent, walk.deadline);
                    return TargetOutcome::Answered(Answer::Stream { body, served });
                }
                AttemptResult::Refused { status, error } => {
                    answered("client_error", status);
                    self.report_circuit(target, admitted.neutral());
                    record.upstream_latency = Some(sent.elapsed());
                    record.finish("upstream_client_error");
                    return TargetOutcome::Answered(Answer::Refused {
                        status,
                        error,
                        served,
                        retry_after: None,
                    });
                }
                AttemptResult::Failed {
                    failure,
                    told,
                    detail,
                } => {
                    drop(permit);
                    attempt_metric(target, failure.label());
                    let state = if failure.counts_against_circuit() {
                        admitted.record(false)
                    } else {
                        admitted.neutral()
                    };
                    self.report_circuit(target, state);
                    if failure == Failure::RateLimited {
                        record.rate_limited += 1;
                        metrics::counter!(names::RATE_LIMITED,
                            "provider" => target.provider.clone(),
                            "model" => target.model_label().to_string())
                        .increment(1);
                    }
                    if let Some(t) = told {
                        self.cooldowns.hold(target.key(), t);
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
                    if !failure.retry_same_target() {
                        walk.give_up(target, failure.label().into(), failure.label());
                        return TargetOutcome::GaveUp;
                    }
                    walk.reasons
                        .push(format!("{}: {}", target.key(), failure.label()));
                    match walk.policy.decide(attempts_here, told, walk.left()) {
                        // A told wait is served by the cooldown at the top of the loop.
                        Decision::RetryAfter(_) if told.is_some() => {}
                        Decision::RetryAfter(wait) => tokio::time::sleep(wait).await,
                        Decision::NextTarget => {
                            walk.record.fallback(failure.label());
                            return TargetOutcome::GaveUp;
                        }
                    }
                }
            }
        }
    }
}

impl Gateway {
    /// A `local/<name>` target: Keel's own model. When earlier targets failed, its answer is
    /// marked degraded; its refusals (busy, not ready) go to the client only when it is the
    /// route's only hope, else the route's static degraded answer follows.
    async fn try_local(&self, target: &Target, walk: &mut Walk<'_>) -> TargetOutcome {
        let name = target.model.as_deref().unwrap_or_default();
        let degraded = !walk.reasons.is_empty();
        let alone = walk.last && !degraded;
        let served = Served {
            provider: LOCAL.to_string(),
            model: name.to_string(),
            attempts: walk.record.attempts + 1,
            degraded,
        };
        let generator = match self.local.as_ref().map(|r| r.generator(name)) {
            Some(Ok(g)) => g,
            Some(Err(e)) => {
                if alone {
                    walk.record.finish("local_not_ready");
                    return refused(503, "model_not_ready", e.to_string(), served, None);
                }
                walk.give_up(target, e.to_string(), "local_not_ready");
                return TargetOutcome::GaveUp;
            }
            None => {
                walk.give_up(target, "no local models".into(), "local_not_ready");
                return TargetOutcome::GaveUp;
            }
        };
        let request = match LocalRequest::chat(
            &walk.chat.body,
            walk.deadline,
            walk.request_id.to_str().unwrap_or_default(),
        ) {
            Ok(r) => r,
            Err(e) => {
                walk.untranslatable.push(format!("{}: {e}", target.key()));
                walk.record.fallback("untranslatable");
                return TargetOutcome::GaveUp;
            }
        };
        walk.record.at_target(target, name);
        walk.record.attempts += 1;
        let route = walk.record.route.clone();
        let record = std::mem::replace(&mut walk.record, RequestRecord::finished());
        let labels = Labels {
            model: walk.chat.model.clone(),
            degraded,
        };
        let answer = local::generate(generator.as_ref(), request, labels, record).await;
        if degraded && answer.is_ok() {
            tracing::warn!(
                target: "keel::gateway",
                request_id = %walk.request_id.to_str().unwrap_or_default(),
                route = %route,
                reason = %walk.reasons.join("; "),
                "degraded answer from a local model"
            );
            metrics::counter!(names::DEGRADED, "route" => route.clone()).increment(1);
        }
        match answer {
            Ok(LocalAnswer::Complete { body, .. }) => {
                TargetOutcome::Answered(Answer::Complete { body, served })
            }
            Ok(LocalAnswer::Stream(body)) => {
                TargetOutcome::Answered(Answer::Stream { body, served })
            }
            Err(e) => {
                // The record went with the request (and was closed); a fresh one goes on.
                walk.record = RequestRecord::new(
                    &route,
                    walk.request_id.to_str().unwrap_or_default(),
                    walk.chat.stream,
                );
                if matches!(
                    e,
                    GenerateError::Invalid { .. } | GenerateError::PromptTooLong { .. }
                ) {
                    walk.untranslatable.push(format!("{}: {e}", target.key()));
                    return TargetOutcome::GaveUp;
                }
                let (status, code) = e.status_and_code();
                let retry = e.retry_after_secs();
                if alone {
                    walk.record.finish(code);
                    return refused(status, code, e.to_string(), served, retry);
                }
                walk.give_up(target, e.to_string(), code);
                TargetOutcome::GaveUp
            }
        }
    }
}

fn refused(
    status: u16,
    code: &str,
    message: String,
    served: Served,
    retry_after: Option<u64>,
) -> TargetOutcome {
    TargetOutcome::Answered(Answer::Refused {
        status,
        error: UpstreamError {
            code: code.to_string(),
            message,
        },
        served,
        retry_after,
    })
}

/// Upstream attempts by target (configured names only) and outcome.
fn attempt_metric(target: &Target, outcome: &'static str) {
    metrics::counter!(names::ATTEMPTS,
        "provider" => target.provider.clone(),
        "model" => target.model_label().to_string(),
        "outcome" => outcome)
    .increment(1);
}

/// The log line of an upstream call that got an answer (failed calls log a warning instead).
/// Logs carry the model the client named; only metrics must stay bounded.
fn log_call(
    request_id: &str,
    target: &Target,
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
