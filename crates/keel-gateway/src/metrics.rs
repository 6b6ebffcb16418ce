//! The gateway's metric names and their descriptions.
//!
//! Same conventions as `keel_telemetry::metrics::names` (a `keel_` prefix, the unit in the
//! name, `_total` on counters); meant to move there. Labels are bounded: route names and
//! provider/model pairs come from the configuration, except for `provider/model` and `*`
//! routes, whose model names come from clients.

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

pub mod names {
    /// Chat requests answered, by route and outcome.
    pub const REQUESTS: &str = "keel_gateway_requests_total";
    /// Upstream attempts, by provider, model and outcome.
    pub const ATTEMPTS: &str = "keel_gateway_upstream_attempts_total";
    /// 429 answers from upstreams, by provider and model.
    pub const RATE_LIMITED: &str = "keel_gateway_rate_limited_total";
    /// Time spent waiting on a provider's Retry-After, per request, by route.
    pub const RETRY_AFTER_WAIT: &str = "keel_gateway_retry_after_wait_seconds";
    /// Time of the answering attempt, by provider and model.
    pub const UPSTREAM_DURATION: &str = "keel_gateway_upstream_duration_seconds";
    /// From the request's arrival to the first streamed token, by provider and model.
    pub const TIME_TO_FIRST_TOKEN: &str = "keel_gateway_time_to_first_token_seconds";
    pub const PROMPT_TOKENS: &str = "keel_gateway_prompt_tokens_total";
    pub const COMPLETION_TOKENS: &str = "keel_gateway_completion_tokens_total";
    /// Cost in millionths of a US dollar (counters are integers), where prices are set.
    pub const COST: &str = "keel_gateway_cost_microdollars_total";
    /// Degraded answers, by route.
    pub const DEGRADED: &str = "keel_gateway_degraded_total";
    /// Targets given up for the next one in the route, by route and reason.
    pub const FALLBACKS: &str = "keel_gateway_fallbacks_total";
    /// Streams that broke after their first byte, by provider and model.
    pub const STREAM_ERRORS: &str = "keel_gateway_stream_errors_total";
    /// Circuit state per target: 0 closed, 1 open, 2 half-open.
    pub const CIRCUIT_STATE: &str = "keel_gateway_circuit_state";
    /// Requests waiting for, or holding, a provider's concurrency slot.
    pub const PROVIDER_IN_FLIGHT: &str = "keel_gateway_provider_requests_in_flight";
}

use names::*;

/// Registers the descriptions with the installed recorder.
pub fn describe() {
    describe_counter!(
        REQUESTS,
        "Gateway chat requests answered, by route and outcome"
    );
    describe_counter!(
        ATTEMPTS,
        "Upstream attempts, by provider, model and outcome"
    );
    describe_counter!(
        RATE_LIMITED,
        "429 answers from upstreams, by provider and model"
    );
    describe_histogram!(
        RETRY_AFTER_WAIT,
        Unit::Seconds,
        "Time a request waited on a provider's Retry-After, by route"
    );
    describe_histogram!(
        UPSTREAM_DURATION,
        Unit::Seconds,
        "Duration of the answering upstream attempt, by provider and model"
    );
    describe_histogram!(
        TIME_TO_FIRST_TOKEN,
        Unit::Seconds,
        "From a streamed request's arrival to its first token, by provider and model"
    );
    describe_counter!(PROMPT_TOKENS, "Prompt tokens, by provider and model");
    describe_counter!(
        COMPLETION_TOKENS,
        "Completion tokens, by provider and model"
    );
    describe_counter!(
        COST,
        "Cost in millionths of a US dollar, by provider and model"
    );
    describe_counter!(DEGRADED, "Degraded answers given, by route");
    describe_counter!(
        FALLBACKS,
        "Targets given up for the next one, by route and reason"
    );
    describe_counter!(STREAM_ERRORS, "Streams that broke after their first byte");
    describe_gauge!(
        CIRCUIT_STATE,
        "Circuit state per target: 0 closed, 1 open, 2 half-open"
    );
    describe_gauge!(
        PROVIDER_IN_FLIGHT,
        "Requests holding a provider's concurrency slot"
    );
}
