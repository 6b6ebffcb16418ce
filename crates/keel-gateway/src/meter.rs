//! What one gateway request did, logged and metered once when it ends: provider, model,
//! attempts, 429s, Retry-After waits, upstream latency, time to first token, tokens and
//! cost. A streamed request ends when its stream does, or when the client leaves.

use std::time::{Duration, Instant};

use crate::config::{Price, Target};
use crate::metrics::names;
use crate::provider::Usage;

#[derive(Debug)]
pub struct RequestRecord {
    pub route: String,
    pub request_id: String,
    pub stream: bool,
    pub started: Instant,
    /// The target that answered, or the last one tried.
    pub provider: String,
    /// The model asked of the upstream (logged; may be any name a client chose).
    pub model: String,
    /// The target's bounded `model` label for metrics (configured, or `*`).
    pub model_label: String,
    pub attempts: u32,
    pub rate_limited: u32,
    pub retry_after_wait: Duration,
    pub upstream_latency: Option<Duration>,
    pub time_to_first_token: Option<Duration>,
    pub usage: Usage,
    pub price: Option<Price>,
    pub fallbacks: u32,
    /// Settles the tokens and cost against the caller's limits when the request ends.
    pub charge: Option<keel_limits::Charge>,
    finished: bool,
}

impl RequestRecord {
    pub fn new(route: &str, request_id: &str, stream: bool) -> Self {
        Self {
            route: route.to_string(),
            request_id: request_id.to_string(),
            stream,
            started: Instant::now(),
            provider: String::new(),
            model: String::new(),
            model_label: String::new(),
            attempts: 0,
            rate_limited: 0,
            retry_after_wait: Duration::ZERO,
            upstream_latency: None,
            time_to_first_token: None,
            usage: Usage::default(),
            price: None,
            fallbacks: 0,
            charge: None,
            finished: false,
        }
    }

    /// A record that has already been accounted for: it logs and meters nothing.
    pub fn finished() -> Self {
        let mut r = Self::new("", "", false);
        r.finished = true;
        r
    }

    /// The request moves on to `target`, asking it for `model`.
    pub fn at_target(&mut self, target: &Target, model: &str) {
        self.provider.clone_from(&target.provider);
        self.model = model.to_string();
        self.model_label = target.model_label().to_string();
    }

    pub fn cost_usd(&self) -> Option<f64> {
        self.price.map(|p| {
            (self.usage.prompt_tokens as f64 * p.input_per_mtok
                + self.usage.completion_tokens as f64 * p.output_per_mtok)
                / 1e6
        })
    }

    pub fn fallback(&mut self, reason: &'static str) {
        self.fallbacks += 1;
        metrics::counter!(names::FALLBACKS, "route" => self.route.clone(), "reason" => reason)
            .increment(1);
    }

    /// Logs and meters the request; later calls do nothing.
    pub fn finish(&mut self, outcome: &'static str) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1e3);
        let cost = self.cost_usd();
        tracing::info!(
            target: "keel::gateway",
            route = %self.route,
            request_id = %self.request_id,
            provider = %self.provider,
            model = %self.model,
            stream = self.stream,
            outcome,
            attempts = self.attempts,
            fallbacks = self.fallbacks,
            rate_limited = self.rate_limited,
            retry_after_wait_ms = self.retry_after_wait.as_secs_f64() * 1e3,
            upstream_ms = ms(self.upstream_latency),
            time_to_first_token_ms = ms(self.time_to_first_token),
            prompt_tokens = self.usage.prompt_tokens,
            completion_tokens = self.usage.completion_tokens,
            cost_usd = cost,
            total_ms = self.started.elapsed().as_secs_f64() * 1e3,
            "gateway"
        );
        metrics::counter!(names::REQUESTS, "route" => self.route.clone(), "outcome" => outcome)
            .increment(1);
        if let Some(charge) = self.charge.take() {
            charge.usage(
                self.usage.prompt_tokens + self.usage.completion_tokens,
                cost,
            );
        }
        if self.retry_after_wait > Duration::ZERO {
            metrics::histogram!(names::RETRY_AFTER_WAIT, "route" => self.route.clone())
                .record(self.retry_after_wait.as_secs_f64());
        }
        if self.provider.is_empty() {
            return;
        }
        let labels = [
            ("provider", self.provider.clone()),
            ("model", self.model_label.clone()),
        ];
        if let Some(d) = self.upstream_latency {
            metrics::histogram!(names::UPSTREAM_DURATION, &labels).record(d.as_secs_f64());
        }
        if let Some(d) = self.time_to_first_token {
            metrics::histogram!(names::TIME_TO_FIRST_TOKEN, &labels).record(d.as_secs_f64());
        }
        metrics::counter!(names::PROMPT_TOKENS, &labels).increment(self.usage.prompt_tokens);
        metrics::counter!(names::COMPLETION_TOKENS, &labels)
            .increment(self.usage.completion_tokens);
        if let Some(cost) = cost {
            metrics::counter!(names::COST, &labels).increment((cost * 1e6).round() as u64);
        }
    }
}

impl Drop for RequestRecord {
    fn drop(&mut self) {
        // A request dropped unfinished is one whose client left.
        self.finish("client_disconnected");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_from_prices_per_million_tokens() {
        let mut r = RequestRecord::new("r", "id", false);
        assert_eq!(r.cost_usd(), None);
        r.price = Some(Price {
            input_per_mtok: 0.15,
            output_per_mtok: 0.6,
        });
        r.usage = Usage {
            prompt_tokens: 1_000_000,
            completion_tokens: 500_000,
        };
        assert!((r.cost_usd().unwrap() - 0.45).abs() < 1e-9);
        r.finish("success");
    }
}
