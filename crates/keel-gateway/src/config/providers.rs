//! Builds the validated [`GatewayConfig`] from the TOML shapes and the environment: which
//! providers exist (from the file, or the well-known ones from their variables alone), their
//! URLs and keys, the routes and their targets, the circuit policy and the prices.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use super::file::{ms, FileRoot, RawGateway};
use super::{
    invalid, CircuitSettings, ConfigError, GatewayConfig, ProviderConfig, ProviderKind,
    RouteConfig, Target,
};
use crate::local::LOCAL;

const OPENAI_DEFAULT_URL: &str = "https://api.openai.com/v1";
const ANTHROPIC_DEFAULT_URL: &str = "https://api.anthropic.com";

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

/// `provider/model`, or `provider` alone for the client's model; `local/<name>` for one of
/// Keel's own generative models.
fn parse_target(
    key: &str,
    spec: &str,
    providers: &BTreeMap<String, ProviderConfig>,
    local: &BTreeSet<String>,
) -> Result<Target, ConfigError> {
    if let Some(name) = spec.strip_prefix("local/") {
        if !local.contains(name) {
            return Err(invalid(
                key,
                format!("'{name}' is not one of Keel's local models; known: {local:?}"),
            ));
        }
        return Ok(Target::configured(LOCAL, Some(name)));
    }
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
    Ok(Target::configured(provider, model.as_deref()))
}

impl GatewayConfig {
    /// Parses the `[gateway]` table of Keel's TOML file (other tables are ignored) and adds
    /// the providers the environment names.
    pub fn from_parts(
        toml_text: Option<&str>,
        env: &HashMap<String, String>,
    ) -> Result<GatewayConfig, ConfigError> {
        Self::from_parts_with_local(toml_text, env, &[])
    }

    /// As [`Self::from_parts`], where `local` names Keel's own generative models: clients
    /// reach them by name, and routes may list them as `local/<name>` targets.
    pub fn from_parts_with_local(
        toml_text: Option<&str>,
        env: &HashMap<String, String>,
        local: &[String],
    ) -> Result<GatewayConfig, ConfigError> {
        let local: BTreeSet<String> = local.iter().cloned().collect();
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
            if name == LOCAL {
                return Err(invalid(
                    &at,
                    "the provider name 'local' is reserved for Keel's own models (local/<name>)",
                ));
            }
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
            if let Some(bad) = p
                .models
                .iter()
                .find(|m| m.is_empty() || m.contains(char::is_whitespace))
            {
                return Err(invalid(
                    format!("{at}.models"),
                    format!("model names must be non-empty, without spaces (got {bad:?})"),
                ));
            }
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
                    models: p.models.clone(),
                    allow_any_model: p.allow_any_model.unwrap_or(false),
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
                    models: Vec::new(),
                    // Set up from the environment alone, a provider forwards whatever a
                    // client names (through `*` too), keyed by the provider.
                    allow_any_model: true,
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
                .map(|(i, t)| parse_target(&format!("{at}.targets[{i}]"), t, &providers, &local))
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
                        targets: vec![Target::configured(first, None)],
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
            local,
            providers,
            routes,
            defaults,
            circuit,
            prices: raw.prices,
        })
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

[gateway.providers.lan]
kind = "openai-compatible"
base_url = "http://127.0.0.1:9000/v1/"
max_concurrency = 4
models = ["qwen"]

[gateway.providers.open]
kind = "openai-compatible"
base_url = "http://127.0.0.1:9001/v1"
allow_any_model = true

[gateway.routes.chat]
targets = ["lan/llama", "openai/gpt-4o-mini", "lan"]
degraded_status = 503

[gateway.prices."openai/gpt-4o-mini"]
input_per_mtok = 0.15
output_per_mtok = 0.6
"#;

    #[test]
    fn a_file_and_the_environment_make_one_config() {
        let c = GatewayConfig::from_parts(Some(FILE), &env(&[("OPENAI_API_KEY", "sk-x")])).unwrap();
        assert_eq!(c.providers["lan"].base_url, "http://127.0.0.1:9000/v1");
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
            c.resolve("lan/qwen").unwrap().targets[0].model.as_deref(),
            Some("qwen")
        );
        assert!(c.prices.contains_key("openai/gpt-4o-mini"));
    }

    #[test]
    fn local_models_are_reached_by_name_and_as_route_targets() {
        let file = "[gateway.routes.guarded]\ntargets = [\"openai/gpt-4o-mini\", \"local/smol\"]";
        let local = ["smol".to_string()];
        let c = GatewayConfig::from_parts_with_local(
            Some(file),
            &env(&[("OPENAI_API_KEY", "k")]),
            &local,
        )
        .unwrap();
        let keys: Vec<&str> = c.routes["guarded"]
            .targets
            .iter()
            .map(|t| t.key())
            .collect();
        assert_eq!(keys, ["openai/gpt-4o-mini", "local/smol"]);
        for name in ["smol", "local/smol"] {
            let route = c.resolve(name).unwrap();
            assert_eq!(route.targets.len(), 1);
            assert_eq!(route.targets[0].key(), "local/smol");
        }
        assert!(c.target_keys().contains("local/smol"));
        let e = GatewayConfig::from_parts_with_local(
            Some("[gateway.routes.r]\ntargets = [\"local/nope\"]"),
            &env(&[]),
            &local,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("gateway.routes.r.targets[0]") && e.contains("nope"),
            "{e}"
        );
        let e = GatewayConfig::from_parts_with_local(
            Some("[gateway.providers.local]\nkind = \"openai\"\nbase_url = \"http://x:1\""),
            &env(&[]),
            &local,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("reserved"), "{e}");
    }

    #[test]
    fn direct_provider_routes_reach_listed_models_or_any_where_allowed() {
        let c = GatewayConfig::from_parts(Some(FILE), &env(&[("OPENAI_API_KEY", "k")])).unwrap();
        // Listed: its own key. Not listed, and the provider does not forward any: only the
        // env provider's `*` route takes it, under the client's name.
        assert_eq!(c.resolve("lan/qwen").unwrap().targets[0].key(), "lan/qwen");
        assert_eq!(c.resolve("lan/llama3").unwrap().name, "*");
        let only_file = "[gateway.providers.lan]\nkind = \"openai\"\nbase_url = \"http://x:1\"\nmodels = [\"qwen\"]";
        let c2 = GatewayConfig::from_parts(Some(only_file), &env(&[])).unwrap();
        assert!(c2.resolve("lan/qwen").is_some());
        assert!(c2.resolve("lan/llama3").is_none());
        assert!(c2.resolve("nobody/qwen").is_none());
        assert!(c2.resolve("qwen").is_none());
        // Any model: asked for by name, keyed by the provider.
        let route = c.resolve("open/whatever-1").unwrap();
        assert_eq!(route.targets[0].model.as_deref(), Some("whatever-1"));
        assert_eq!(route.targets[0].key(), "open/*");
        assert_eq!(route.name, "open/*");
        assert_eq!(route.targets[0].model_label(), "*");
        // Configured route targets keep their names; a bare provider passes the model through.
        let chat = &c.routes["chat"];
        let keys: Vec<&str> = chat.targets.iter().map(|t| t.key()).collect();
        assert_eq!(keys, ["lan/llama", "openai/gpt-4o-mini", "lan/*"]);
        let all = c.target_keys();
        for key in [
            "lan/llama",
            "lan/qwen",
            "lan/*",
            "open/*",
            "openai/gpt-4o-mini",
        ] {
            assert!(all.contains(key), "{key} missing from {all:?}");
        }
    }

    #[test]
    fn the_env_default_route_forwards_any_name_keyed_by_the_provider() {
        let c = GatewayConfig::from_parts(None, &env(&[("OPENAI_API_KEY", "k")])).unwrap();
        let any = c.resolve("gpt-4o").unwrap();
        assert_eq!((any.name.as_str(), any.targets[0].key()), ("*", "openai/*"));
        let direct = c.resolve("openai/gpt-4o").unwrap();
        assert_eq!(direct.targets[0].key(), "openai/*");
        assert_eq!(direct.targets[0].model.as_deref(), Some("gpt-4o"));
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
