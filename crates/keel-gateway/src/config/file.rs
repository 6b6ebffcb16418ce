//! The `[gateway]` table as TOML gives it, before validation, and the per-route settings
//! (timeouts, retries, the degraded answer) that a route inherits from the table's defaults.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::Deserialize;

use super::{
    invalid, ConfigError, DegradedSettings, Price, RetrySettings, RouteSettings, Timeouts,
};

#[derive(Debug, Default, Deserialize)]
pub(super) struct FileRoot {
    #[serde(default)]
    pub(super) gateway: Option<RawGateway>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGateway {
    #[serde(flatten)]
    pub(super) defaults: RawSettings,
    #[serde(default)]
    pub(super) circuit: RawCircuit,
    #[serde(default)]
    pub(super) providers: BTreeMap<String, RawProvider>,
    #[serde(default)]
    pub(super) routes: BTreeMap<String, RawRoute>,
    #[serde(default)]
    pub(super) prices: HashMap<String, Price>,
}

#[derive(Debug, Default, Clone, Deserialize)]
pub(super) struct RawSettings {
    pub(super) connect_timeout_ms: Option<u64>,
    pub(super) first_byte_timeout_ms: Option<u64>,
    pub(super) total_timeout_ms: Option<u64>,
    pub(super) max_attempts: Option<u32>,
    pub(super) backoff_base_ms: Option<u64>,
    pub(super) backoff_max_ms: Option<u64>,
    pub(super) max_retry_after_ms: Option<u64>,
    pub(super) degraded_message: Option<String>,
    pub(super) degraded_status: Option<u16>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCircuit {
    pub(super) window_ms: Option<u64>,
    pub(super) min_requests: Option<u32>,
    pub(super) failure_ratio: Option<f64>,
    pub(super) open_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProvider {
    pub(super) kind: String,
    pub(super) base_url: Option<String>,
    pub(super) api_key_env: Option<String>,
    pub(super) max_concurrency: Option<usize>,
    pub(super) queue_timeout_ms: Option<u64>,
    pub(super) stream_usage: Option<bool>,
    /// Model names clients may reach directly as `provider/model`.
    #[serde(default)]
    pub(super) models: Vec<String>,
    /// Any `provider/model` name is forwarded (its circuit and metrics keyed by the provider).
    pub(super) allow_any_model: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub(super) targets: Vec<String>,
    #[serde(flatten)]
    pub(super) settings: RawSettings,
}

pub(super) fn ms(key: &str, v: Option<u64>, default: u64) -> Result<Duration, ConfigError> {
    match v.unwrap_or(default) {
        0 => Err(invalid(key, "must be a positive number of milliseconds")),
        n => Ok(Duration::from_millis(n)),
    }
}

impl RawSettings {
    /// These settings, with every unset key taken from `base`.
    pub(super) fn over(&self, base: &RawSettings) -> RawSettings {
        macro_rules! pick {
            ($($f:ident),*) => { RawSettings { $($f: self.$f.clone().or_else(|| base.$f.clone())),* } };
        }
        pick!(
            connect_timeout_ms,
            first_byte_timeout_ms,
            total_timeout_ms,
            max_attempts,
            backoff_base_ms,
            backoff_max_ms,
            max_retry_after_ms,
            degraded_message,
            degraded_status
        )
    }

    pub(super) fn validate(&self, at: &str) -> Result<RouteSettings, ConfigError> {
        let key = |k: &str| format!("{at}.{k}");
        let timeouts = Timeouts {
            connect: ms(&key("connect_timeout_ms"), self.connect_timeout_ms, 2_000)?,
            first_byte: ms(
                &key("first_byte_timeout_ms"),
                self.first_byte_timeout_ms,
                60_000,
            )?,
            total: ms(&key("total_timeout_ms"), self.total_timeout_ms, 120_000)?,
        };
        let max_attempts = self.max_attempts.unwrap_or(3);
        if !(1..=20).contains(&max_attempts) {
            return Err(invalid(key("max_attempts"), "must be between 1 and 20"));
        }
        let retry = RetrySettings {
            max_attempts,
            backoff_base: ms(&key("backoff_base_ms"), self.backoff_base_ms, 200)?,
            backoff_max: ms(&key("backoff_max_ms"), self.backoff_max_ms, 10_000)?,
            max_retry_after: ms(&key("max_retry_after_ms"), self.max_retry_after_ms, 30_000)?,
        };
        if retry.backoff_max < retry.backoff_base {
            return Err(invalid(
                key("backoff_max_ms"),
                "must be at least backoff_base_ms",
            ));
        }
        let status = self.degraded_status.unwrap_or(200);
        if status != 200 && status != 503 {
            return Err(invalid(key("degraded_status"), "must be 200 or 503"));
        }
        let message = self.degraded_message.clone().unwrap_or_else(|| {
            "The assistant is temporarily unavailable. Please try again in a moment.".into()
        });
        Ok(RouteSettings {
            timeouts,
            retry,
            degraded: DegradedSettings { message, status },
        })
    }
}
