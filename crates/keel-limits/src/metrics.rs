//! The limiter's Prometheus series.

use metrics::{describe_counter, describe_gauge};

pub mod names {
    pub const LIMITED: &str = "keel_rate_limited_requests_total";
    pub const STORE_UP: &str = "keel_rate_limit_store_up";
    pub const STORE_ERRORS: &str = "keel_rate_limit_store_errors_total";
    pub const STORE_BYPASSED: &str = "keel_rate_limit_store_bypassed_total";
}

use names::*;

pub fn describe() {
    describe_counter!(
        LIMITED,
        "Requests refused by a per-key limit, by limit (requests, tokens, spend)"
    );
    describe_gauge!(
        STORE_UP,
        "1 when the shared rate-limit store (Redis) answers"
    );
    describe_counter!(STORE_ERRORS, "Calls to the rate-limit store that failed");
    describe_counter!(
        STORE_BYPASSED,
        "Requests decided by the failure policy because the store was down, by policy"
    );
}
