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
            .finish()
    }
}

/// One step of a route: a provider and the model name to ask it for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub provider: String,
    /// None: the model the client asked for, unchanged.
    pub model: Option<String>,
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
    pub providers: BTreeMap<String, ProviderConfig>,
    pub routes: BTreeMap<String, RouteConfig>,
    /// Settings of routes made on the fly (`provider/model` names, env default routes).
    pub defaults: RouteSettings,
    pub circuit: CircuitSettings,
    /// By `provider/model`.
    pub prices: HashMap<String, Price>,
}

// ---- The TOML shape, before validation. ----

#[derive(Debug, Default, Deserialize)]
struct FileRoot {
    #[serde(default)]
    gateway: Option<RawGateway>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    #[serde(flatten)]
    defaults: RawSettings,
    #[serde(default)]
    circuit: RawCircuit,
    #[serde(default)]
    providers: BTreeMap<String, RawProvider>,
    #[serde(default)]
    routes: BTreeMap<String, RawRoute>,
    #[serde(default)]
    prices: HashMap<String, Price>,
}

#[derive(Debug, Default, Clone, Deserialize)]
struct RawSettings {
    connect_timeout_ms: Option<u64>,
    first_byte_timeout_ms: Option<u64>,
    total_timeout_ms: Option<u64>,
    max_attempts: Option<u32>,
    backoff_base_ms: Option<u64>,
    backoff_max_ms: Option<u64>,
    max_retry_after_ms: Option<u64>,
    degraded_message: Option<String>,
    degraded_status: Option<u16>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCircuit {
    window_ms: Option<u64>,
    min_requests: Option<u32>,
    failure_ratio: Option<f64>,
    open_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    kind: String,
    base_url: Option<String>,
    api_key_env: Option<String>,
    max_concurrency: Option<usize>,
    queue_timeout_ms: Option<u64>,
    stream_usage: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    targets: Vec<String>,
    #[serde(flatten)]
    settings: RawSettings,
}

const OPENAI_DEFAULT_URL: &str = "https://api.openai.com/v1";
const ANTHROPIC_DEFAULT_URL: &str = "https://api.anthropic.com";

fn ms(key: &str, v: Option<u64>, default: u64) -> Result<Duration, ConfigError> {
    match v.unwrap_or(default) {
        0 => Err(invalid(key, "must be a positive number of milliseconds")),
        n => Ok(Duration::from_millis(n)),
    }
}

impl RawSettings {
    /// These settings, with every unset key taken from `base`.
    fn over(&self, base: &RawSettings) -> RawSettings {
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

    fn validate(&self, at: &str) -> Result<RouteSettings, ConfigError> {
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

fn parse_kind(key: &str, kind: &str) -> Result<ProviderKind, ConfigError> {
    match kind {
        "openai" | "openai-compatible" => Ok(ProviderKind::OpenAi),
        "anthropic" => Ok(ProviderKind::Anthropic),
        _ => Err(invalid(
            key,
            "must be \"openai\", \"openai-compatible\" or \"anthropic\"",
        )),
    }
}

fn check_url(key: &str, url: &str) -> Result<String, ConfigError> {
    let url = url.trim_end_matches('/');
    if (url.starts_with("http://") || url.starts_with("https://")) && url.len() > 8 {
        Ok(url.to_string())
    } else {
        Err(invalid(key, "must be an http:// or https:// URL"))
    }
}

/// `provider/model`, or `provider` alone for the client's model.
fn parse_target(
    key: &str,
    spec: &str,
    providers: &BTreeMap<String, ProviderConfig>,
) -> Result<Target, ConfigError> {
    let (provider, model) = match spec.split_once('/') {
        Some((p, m)) if !m.is_empty() => (p, Some(m.to_string())),
        Some(_) => {
            return Err(invalid(
                key,
                "a target is \"provider/model\" or \"provider\"",
            ))
        }
        None => (spec, None),
    };
    if !providers.contains_key(provider) {
        let known: Vec<&str> = providers.keys().map(String::as_str).collect();
        return Err(invalid(
            key,
            format!("unknown provider '{provider}'; known: {known:?}"),
        ));
    }
    Ok(Target {
        provider: provider.to_string(),
        model,
    })
}

impl GatewayConfig {
    /// Parses the `[gateway]` table of Keel's TOML file (other tables are ignored) and adds
    /// the providers the environment names.
    pub fn from_parts(
        toml_text: Option<&str>,
        env: &HashMap<String, String>,
    ) -> Result<GatewayConfig, ConfigError> {
        let raw = match toml_text {
            Some(text) => toml::from_str::<FileRoot>(text)
                .map_err(|e| ConfigError::Toml(e.to_string()))?
                .gateway
                .unwrap_or_default(),
            None => RawGateway::default(),
        };
        let env_get = |k: &str| env.get(k).filter(|v| !v.trim().is_empty()).cloned();

        let mut providers = BTreeMap::new();
        for (name, p) in &raw.providers {
            let at = format!("gateway.providers.{name}");
            if name.contains('/') || name == "*" {
                return Err(invalid(
                    &at,
                    "a provider name may not contain '/' or be '*'",
                ));
            }
            let kind = parse_kind(&format!("{at}.kind"), &p.kind)?;
            let (url_var, key_var) = match (name.as_str(), kind) {
                ("openai", _) => (Some("OPENAI_BASE_URL"), Some("OPENAI_API_KEY")),
                ("anthropic", _) => (Some("ANTHROPIC_BASE_URL"), Some("ANTHROPIC_API_KEY")),
                _ => (None, None),
            };
            let base_url = match (&p.base_url, url_var.and_then(env_get)) {
                (Some(u), _) => check_url(&format!("{at}.base_url"), u)?,
                (None, Some(u)) => check_url(url_var.unwrap_or_default(), &u)?,
                (None, None) if name == "openai" => OPENAI_DEFAULT_URL.into(),
                (None, None) if name == "anthropic" => ANTHROPIC_DEFAULT_URL.into(),
                (None, None) => return Err(invalid(format!("{at}.base_url"), "is required")),
            };
            let api_key = match &p.api_key_env {
                Some(var) => Some(env_get(var).ok_or_else(|| {
                    invalid(var, format!("is named by {at}.api_key_env but is not set"))
                })?),
                None => key_var.and_then(env_get),
            };
            let max_concurrency = p.max_concurrency.unwrap_or(256);
            if max_concurrency == 0 {
                return Err(invalid(
                    format!("{at}.max_concurrency"),
                    "must be at least 1",
                ));
            }
            providers.insert(
                name.clone(),
                ProviderConfig {
                    name: name.clone(),
                    kind,
                    base_url,
                    api_key,
                    max_concurrency,
                    queue_timeout: ms(&format!("{at}.queue_timeout_ms"), p.queue_timeout_ms, 250)?,
                    stream_usage: p.stream_usage.unwrap_or(true),
                },
            );
        }

        // The well-known providers, from the environment alone.
        let mut env_only = Vec::new();
        for (name, kind, key_var, url_var, default_url) in [
            (
                "openai",
                ProviderKind::OpenAi,
                "OPENAI_API_KEY",
                "OPENAI_BASE_URL",
                OPENAI_DEFAULT_URL,
            ),
            (
                "anthropic",
                ProviderKind::Anthropic,
                "ANTHROPIC_API_KEY",
                "ANTHROPIC_BASE_URL",
                ANTHROPIC_DEFAULT_URL,
            ),
        ] {
            let (key, url) = (env_get(key_var), env_get(url_var));
            if providers.contains_key(name) || (key.is_none() && url.is_none()) {
                continue;
            }
            let base_url = match url {
                Some(u) => check_url(url_var, &u)?,
                None => default_url.to_string(),
            };
            providers.insert(
                name.to_string(),
                ProviderConfig {
                    name: name.to_string(),
                    kind,
                    base_url,
                    api_key: key,
                    max_concurrency: 256,
                    queue_timeout: Duration::from_millis(250),
                    stream_usage: true,
                },
            );
            env_only.push(name);
        }

        let defaults_raw = raw.defaults.clone();
        let defaults = defaults_raw.validate("gateway")?;
        let mut routes = BTreeMap::new();
        for (name, r) in &raw.routes {
            let at = format!("gateway.routes.{name}");
            if r.targets.is_empty() {
                return Err(invalid(
                    format!("{at}.targets"),
                    "must name at least one target",
                ));
            }
            let targets = r
                .targets
                .iter()
                .enumerate()
                .map(|(i, t)| parse_target(&format!("{at}.targets[{i}]"), t, &providers))
                .collect::<Result<Vec<_>, _>>()?;
            let settings = r.settings.over(&defaults_raw).validate(&at)?;
            routes.insert(
                name.clone(),
                RouteConfig {
                    name: name.clone(),
                    targets,
                    settings,
                },
            );
        }
        if !routes.contains_key("*") {
            if let Some(first) = env_only.first() {
                routes.insert(
                    "*".into(),
                    RouteConfig {
                        name: "*".into(),
                        targets: vec![Target {
                            provider: first.to_string(),
                            model: None,
                        }],
                        settings: defaults.clone(),
                    },
                );
            }
        }

        let c = &raw.circuit;
        let circuit = CircuitSettings {
            window: ms("gateway.circuit.window_ms", c.window_ms, 30_000)?,
            min_requests: c.min_requests.unwrap_or(10).max(1),
            failure_ratio: c.failure_ratio.unwrap_or(0.5),
            open_for: ms("gateway.circuit.open_ms", c.open_ms, 15_000)?,
        };
        if !(circuit.failure_ratio > 0.0 && circuit.failure_ratio <= 1.0) {
            return Err(invalid(
                "gateway.circuit.failure_ratio",
                "must be in (0, 1]",
            ));
        }
        for (key, price) in &raw.prices {
            if price.input_per_mtok < 0.0 || price.output_per_mtok < 0.0 {
                return Err(invalid(
                    format!("gateway.prices.{key}"),
                    "prices may not be negative",
                ));
            }
        }
        Ok(GatewayConfig {
            providers,
            routes,
            defaults,
            circuit,
            prices: raw.prices,
        })
    }

    /// The route for a client's model name: a configured route, else `provider/model` for a
    /// known provider, else the `*` route.
    pub fn resolve(&self, model: &str) -> Option<RouteConfig> {
        if let Some(route) = self.routes.get(model) {
            return Some(route.clone());
        }
        if let Some((provider, upstream)) = model.split_once('/') {
            if self.providers.contains_key(provider) && !upstream.is_empty() {
                return Some(RouteConfig {
                    name: format!("{provider}/*"),
                    targets: vec![Target {
                        provider: provider.to_string(),
                        model: Some(upstream.to_string()),
                    }],
                    settings: self.defaults.clone(),
                });
            }
        }
        self.routes.get("*").cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const FILE: &str = r#"
[[models]]
name = "ignored"
path = "elsewhere"

[gateway]
total_timeout_ms = 5000
max_attempts = 2

[gateway.providers.local]
kind = "openai-compatible"
base_url = "http://127.0.0.1:9000/v1/"
max_concurrency = 4

[gateway.routes.chat]
targets = ["local/llama", "openai/gpt-4o-mini", "local"]
degraded_status = 503

[gateway.prices."openai/gpt-4o-mini"]
input_per_mtok = 0.15
output_per_mtok = 0.6
"#;

    #[test]
    fn a_file_and_the_environment_make_one_config() {
        let c = GatewayConfig::from_parts(Some(FILE), &env(&[("OPENAI_API_KEY", "sk-x")])).unwrap();
        assert_eq!(c.providers["local"].base_url, "http://127.0.0.1:9000/v1");
        assert_eq!(c.providers["openai"].api_key.as_deref(), Some("sk-x"));
        let chat = &c.routes["chat"];
        assert_eq!(chat.targets.len(), 3);
        assert_eq!(chat.targets[2].model, None);
        assert_eq!(chat.settings.retry.max_attempts, 2);
        assert_eq!(chat.settings.timeouts.total, Duration::from_millis(5000));
        assert_eq!(chat.settings.degraded.status, 503);
        // An env-only provider gets the default route.
        assert_eq!(c.resolve("anything").unwrap().targets[0].provider, "openai");
        assert_eq!(
            c.resolve("local/qwen").unwrap().targets[0].model.as_deref(),
            Some("qwen")
        );
        assert!(c.prices.contains_key("openai/gpt-4o-mini"));
    }

    #[test]
    fn without_providers_nothing_resolves() {
        let c = GatewayConfig::from_parts(None, &env(&[])).unwrap();
        assert!(c.resolve("gpt-4o").is_none());
        let c = GatewayConfig::from_parts(None, &env(&[("ANTHROPIC_API_KEY", "k")])).unwrap();
        assert_eq!(c.providers["anthropic"].kind, ProviderKind::Anthropic);
        assert_eq!(
            c.resolve("claude").unwrap().targets[0].provider,
            "anthropic"
        );
    }

    #[test]
    fn errors_name_the_key_and_what_is_accepted() {
        let bad = |text: &str, env_pairs: &[(&str, &str)]| {
            GatewayConfig::from_parts(Some(text), &env(env_pairs))
                .unwrap_err()
                .to_string()
        };
        let e = bad("[gateway.routes.r]\ntargets = [\"nope/m\"]", &[]);
        assert!(
            e.contains("gateway.routes.r.targets[0]") && e.contains("nope"),
            "{e}"
        );
        let e = bad("[gateway]\ndegraded_status = 500", &[]);
        assert!(
            e.contains("gateway.degraded_status") && e.contains("200 or 503"),
            "{e}"
        );
        let e = bad(
            "[gateway.providers.p]\nkind = \"bedrock\"\nbase_url = \"http://x:1\"",
            &[],
        );
        assert!(e.contains("gateway.providers.p.kind"), "{e}");
        let e = bad("[gateway.providers.p]\nkind = \"openai\"", &[]);
        assert!(e.contains("gateway.providers.p.base_url"), "{e}");
        let e = bad("", &[("OPENAI_BASE_URL", "localhost:8000")]);
        assert!(e.starts_with("OPENAI_BASE_URL"), "{e}");
        let e = bad(
            "[gateway.providers.p]\nkind = \"openai\"\nbase_url = \"http://x:1\"\napi_key_env = \"P_KEY\"",
            &[],
        );
        assert!(e.starts_with("P_KEY"), "{e}");
        let e = bad("[gateway]\nmax_attempts = 0", &[]);
        assert!(e.contains("max_attempts"), "{e}");
        let e = bad("[gateway]\nretries = 3", &[]);
        assert!(e.contains("retries"), "{e}");
        let e = bad("[gateway.circuit]\nfailure_ratio = 1.5", &[]);
        assert!(e.contains("failure_ratio"), "{e}");
    }
}
