//! The gateway's settings: providers, routes, timeouts, retry and circuit policy, prices and
//! the degraded answer, parsed once at startup and validated.
//!
//! They come from two places. The `[gateway]` table of Keel's TOML file describes providers
//! and routes; the environment may add the two well-known providers (`OPENAI_API_KEY`,
//! `OPENAI_BASE_URL`, `ANTHROPIC_API_KEY`, `ANTHROPIC_BASE_URL`), and a provider known only
//! from the environment gets a default route (`*`: any model, passed through by name).
//! Every error names the key or variable at fault and what it accepts.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::Deserialize;

mod file;
mod providers;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
    #[error("the [gateway] table of the TOML file is malformed: {0}")]
    Toml(String),
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    /// OpenAI's API, or any server that speaks it (vLLM, Ollama, TGI).
    OpenAi,
    /// Anthropic's Messages API.
    Anthropic,
}

#[derive(Clone)]
pub struct ProviderConfig {
    pub name: String,
    pub kind: ProviderKind,
    /// Base URL without the trailing slash, e.g. `https://api.openai.com/v1`.
    pub base_url: String,
    pub api_key: Option<String>,
    /// Most requests in flight to this provider at once.
    pub max_concurrency: usize,
    /// How long a request may wait for a free slot before the next target is tried.
    pub queue_timeout: Duration,
    /// Ask OpenAI-shaped upstreams for usage in streams (`stream_options.include_usage`).
    pub stream_usage: bool,
    /// Models clients may name directly as `provider/model`, each with its own circuit.
    pub models: Vec<String>,
    /// Forward any `provider/model` name; circuit state and metrics are then the provider's.
    pub allow_any_model: bool,
}

// By hand, so that no `{:?}` (a log line, a panic message) can print the key.
impl std::fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderConfig")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "(set)"))
            .field("max_concurrency", &self.max_concurrency)
            .field("queue_timeout", &self.queue_timeout)
            .field("stream_usage", &self.stream_usage)
            .field("models", &self.models)
            .field("allow_any_model", &self.allow_any_model)
            .finish()
    }
}

/// One step of a route: a provider and the model name to ask it for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub provider: String,
    /// None: the model the client asked for, unchanged.
    pub model: Option<String>,
    /// What the target's circuit breaker, cooldown and metric labels are keyed by: names from
    /// the configuration only (`provider/model`, or `provider/*` where the client's model
    /// name passes through), so that no client can grow them.
    key: String,
}

impl Target {
    /// A target as the configuration names it.
    pub fn configured(provider: &str, model: Option<&str>) -> Self {
        Self {
            provider: provider.to_string(),
            model: model.map(str::to_string),
            key: format!("{provider}/{}", model.unwrap_or("*")),
        }
    }

    /// A client's `provider/model` on a provider that forwards any model: the model is asked
    /// for as named, but keyed by the provider alone.
    pub fn any_model(provider: &str, model: &str) -> Self {
        Self {
            provider: provider.to_string(),
            model: Some(model.to_string()),
            key: format!("{provider}/*"),
        }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// The `model` label of this target's metrics: configured, or `*`.
    pub fn model_label(&self) -> &str {
        self.key.split_once('/').map_or("*", |(_, model)| model)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Timeouts {
    pub connect: Duration,
    /// Until the response headers (and, for a stream, its first event) arrive.
    pub first_byte: Duration,
    /// The whole request, retries and waits included.
    pub total: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RetrySettings {
    /// Attempts per target, the first one included.
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// A longer `Retry-After` than this sends the request to the next target instead.
    pub max_retry_after: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DegradedSettings {
    pub message: String,
    /// 200 or 503.
    pub status: u16,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouteSettings {
    pub timeouts: Timeouts,
    pub retry: RetrySettings,
    pub degraded: DegradedSettings,
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// The model name clients ask for (`*` matches any).
    pub name: String,
    pub targets: Vec<Target>,
    pub settings: RouteSettings,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CircuitSettings {
    pub window: Duration,
    /// Outcomes needed in the window before the ratio is trusted.
    pub min_requests: u32,
    pub failure_ratio: f64,
    /// How long an open circuit refuses before one probe is let through.
    pub open_for: Duration,
}

/// US dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
}

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Keel's own generative models, reachable by name and as `local/<name>` targets.
    pub local: std::collections::BTreeSet<String>,
    pub providers: BTreeMap<String, ProviderConfig>,
    pub routes: BTreeMap<String, RouteConfig>,
    /// Settings of routes made on the fly (`provider/model` names, env default routes).
    pub defaults: RouteSettings,
    pub circuit: CircuitSettings,
    /// By `provider/model`.
    pub prices: HashMap<String, Price>,
}

impl GatewayConfig {
    /// The route for a client's model name: a configured route; else `provider/model` where
    /// the provider lists that model or forwards any; else the `*` route. None: no route
    /// serves the name (a 404 for the client).
    pub fn resolve(&self, model: &str) -> Option<RouteConfig> {
        if let Some(route) = self.routes.get(model) {
            return Some(route.clone());
        }
        let local = model.strip_prefix("local/").unwrap_or(model);
        if self.local.contains(local) {
            let target = Target::configured(crate::local::LOCAL, Some(local));
            return Some(RouteConfig {
                name: target.key().to_string(),
                targets: vec![target],
                settings: self.defaults.clone(),
            });
        }
        if let Some((name, upstream)) = model.split_once('/') {
            if let Some(provider) = self.providers.get(name).filter(|_| !upstream.is_empty()) {
                let target = if provider.models.iter().any(|m| m == upstream) {
                    Some(Target::configured(name, Some(upstream)))
                } else if provider.allow_any_model {
                    Some(Target::any_model(name, upstream))
                } else {
                    None
                };
                if let Some(target) = target {
                    return Some(RouteConfig {
                        name: target.key().to_string(),
                        targets: vec![target],
                        settings: self.defaults.clone(),
                    });
                }
            }
        }
        self.routes.get("*").cloned()
    }

    /// Every target key a request can reach: the bounded set of circuits and cooldowns.
    pub fn target_keys(&self) -> std::collections::BTreeSet<String> {
        let mut keys: std::collections::BTreeSet<String> = self
            .routes
            .values()
            .flat_map(|r| r.targets.iter().map(|t| t.key().to_string()))
            .collect();
        keys.extend(self.local.iter().map(|m| format!("local/{m}")));
        for (name, p) in &self.providers {
            keys.insert(format!("{name}/*"));
            keys.extend(p.models.iter().map(|m| format!("{name}/{m}")));
        }
        keys
    }
}
