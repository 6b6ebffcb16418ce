//! Every setting, read from the environment and validated once at startup.
//!
//! A wrong value stops the process before anything starts, with one line naming the
//! variable, the value and what is accepted. Nothing else in Keel reads the environment.
//!
//! - `vars.rs` declares each variable once (help, default, kind, secrecy, `/info` key);
//! - `env.rs` reads declared variables and makes the error a bad one gives;
//! - `models.rs` picks the models to serve; `access.rs` keys, limits, CORS, TLS and the
//!   closed-by-default gateway rule;
//! - this file puts them together into `Settings` and its `/info` view.

mod access;
mod env;
mod models;
mod vars;

#[cfg(test)]
mod drift;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use keel_engine::ModelSource;
use serde_json::json;

pub use access::{RateLimits, Tls};
pub use env::{Problem, SettingError};
pub use keel_telemetry::logging::LogFormat;
pub use vars::help_table;

use env::Env;
use vars::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Ort,
    Candle,
}

/// The RAG service's settings.
#[derive(Debug, Clone)]
pub struct RagSettings {
    pub storage_dir: PathBuf,
    /// PostgreSQL with pgvector instead of the embedded store: replicas share it.
    pub database_url: Option<access::Secret>,
    pub database_connections: u32,
    pub max_file_bytes: usize,
    pub embedding_model: Option<String>,
    pub ingest_workers: usize,
    pub ingest_lease: Duration,
    /// Serve the RAG routes open to the network without keys.
    pub allow_open: bool,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub gateway: keel_gateway::GatewayConfig,
    pub backend: BackendKind,
    pub ort_dylib_path: PathBuf,
    pub ort_precision: keel_backend_ort::Precision,
    pub host: IpAddr,
    pub port: u16,
    pub metrics_port: Option<u16>,
    pub config_file: Option<PathBuf>,
    pub models: Vec<ModelSource>,
    pub max_batch_size: usize,
    pub max_client_batch: usize,
    pub max_body_bytes: usize,
    pub max_image_bytes: usize,
    pub max_image_pixels: u64,
    pub rag: RagSettings,
    pub max_input_tokens: Option<usize>,
    pub truncate: bool,
    pub max_queue_requests: usize,
    pub max_batch_tokens: usize,
    pub max_batch_delay: Duration,
    pub max_queue_tokens: usize,
    pub max_queue_wait: Option<Duration>,
    pub request_timeout: Duration,
    pub inference_threads: usize,
    pub log_format: LogFormat,
    pub log_level: String,
    pub fail_fast: bool,
    pub otlp_endpoint: Option<String>,
    pub api_keys: keel_http::auth::ApiKeys,
    pub metrics_require_key: bool,
    pub rate_limits: RateLimits,
    pub cors: keel_http::Cors,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub tls: Option<Tls>,
    pub allow_open_gateway: bool,
    pub shutdown_grace: Duration,
    pub shutdown_timeout: Duration,
    pub llm: keel_backend_llama::LlamaOptions,
}

/// A port: the declaration bounds it to 0..=65535.
fn port(n: u64) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

impl Settings {
    pub fn from_env() -> Result<Self, SettingError> {
        Self::from_vars(
            &std::env::vars().collect(),
            std::io::IsTerminal::is_terminal(&std::io::stdout()),
        )
    }

    pub fn from_vars(
        vars: &HashMap<String, String>,
        stdout_is_terminal: bool,
    ) -> Result<Self, SettingError> {
        let env = Env::new(vars);
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let log_format = match env.choice(&LOG_FORMAT)? {
            None if stdout_is_terminal => LogFormat::Pretty,
            Some("pretty") => LogFormat::Pretty,
            _ => LogFormat::Json,
        };
        let log_level = env.text(&LOG_LEVEL).unwrap_or_default().to_string();
        if tracing_subscriber::EnvFilter::try_new(&log_level).is_err() {
            return Err(env.error(
                &LOG_LEVEL,
                "error, warn, info, debug, trace, or a tracing filter directive",
            ));
        }
        let config_file = models::read_config_file(&env)?;
        let backend = match env.choice(&BACKEND)? {
            Some("candle") => BackendKind::Candle,
            _ => BackendKind::Ort,
        };
        let ort_precision = match env.choice(&ORT_PRECISION)? {
            Some("int8") => keel_backend_ort::Precision::Int8,
            _ => keel_backend_ort::Precision::Fp32,
        };
        let host = env.address(&HOST)?;
        let api_keys = access::api_keys(&env)?;
        let models = models::models(
            &env,
            config_file.as_ref().map(|(f, t)| (f.as_path(), t.as_str())),
        )?;
        let local: Vec<String> = models
            .iter()
            .filter(|m| keel_engine::generate::is_generator_path(&m.path))
            .map(|m| m.name.clone())
            .collect();
        let gateway = gateway(vars, config_file.as_ref().map(|(_, t)| t.as_str()), &local)?;
        let settings = Self {
            backend,
            ort_dylib_path: PathBuf::from(env.text(&ORT_DYLIB_PATH).unwrap_or_default()),
            ort_precision,
            host,
            port: port(env.number(&PORT)?),
            metrics_port: env.optional_number(&METRICS_PORT)?.map(port),
            models,
            config_file: config_file.map(|(file, _)| file),
            gateway,
            max_batch_size: env.count(&MAX_BATCH_SIZE)?,
            max_client_batch: env.count(&MAX_CLIENT_BATCH)?,
            max_body_bytes: env.count(&MAX_BODY_BYTES)?,
            max_image_bytes: env.count(&MAX_IMAGE_BYTES)?,
            max_image_pixels: env.number(&MAX_IMAGE_PIXELS)?,
            rag: RagSettings {
                storage_dir: PathBuf::from(env.text(&PERSISTENT_STORAGE_DIR).unwrap_or("./data")),
                database_url: access::database_url(&env)?,
                database_connections: env.count(&RAG_DATABASE_CONNECTIONS)? as u32,
                max_file_bytes: env.count(&MAX_FILE_BYTES)?,
                embedding_model: env.text(&RAG_EMBEDDING_MODEL).map(str::to_owned),
                ingest_workers: env.count(&RAG_INGEST_WORKERS)?,
                ingest_lease: env.millis(&RAG_INGEST_LEASE_MS)?,
                allow_open: env.flag(&KEEL_ALLOW_OPEN_RAG)?,
            },
            max_input_tokens: env.optional_number(&MAX_INPUT_TOKENS)?.map(|n| n as usize),
            truncate: env.flag(&TRUNCATE)?,
            max_queue_requests: env.count(&MAX_QUEUE_REQUESTS)?,
            max_batch_tokens: env.count(&MAX_BATCH_TOKENS)?,
            max_batch_delay: Duration::from_micros(env.number(&MAX_BATCH_DELAY_US)?),
            max_queue_tokens: env.count(&MAX_QUEUE_TOKENS)?,
            max_queue_wait: Some(env.millis(&MAX_QUEUE_WAIT_MS)?).filter(|d| !d.is_zero()),
            request_timeout: env.millis(&REQUEST_TIMEOUT_MS)?,
            inference_threads: env
                .optional_number(&INFERENCE_THREADS)?
                .map_or(cpus, |n| n as usize),
            log_format,
            log_level,
            fail_fast: env.flag(&KEEL_FAIL_FAST)?,
            otlp_endpoint: match env.text(&OTEL_EXPORTER_OTLP_ENDPOINT) {
                None => None,
                Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
                    Some(url.to_string())
                }
                Some(_) => {
                    return Err(
                        env.error(&OTEL_EXPORTER_OTLP_ENDPOINT, "an http:// or https:// URL")
                    )
                }
            },
            rate_limits: access::rate_limits(&env, &api_keys)?,
            cors: access::cors(&env)?,
            api_keys,
            metrics_require_key: env.flag(&METRICS_REQUIRE_KEY)?,
            max_connections: env.count(&MAX_CONNECTIONS)?,
            header_read_timeout: env.millis(&HEADER_READ_TIMEOUT_MS)?,
            body_read_timeout: env.millis(&BODY_READ_TIMEOUT_MS)?,
            tls: access::tls(&env)?,
            allow_open_gateway: env.flag(&KEEL_ALLOW_OPEN_GATEWAY)?,
            shutdown_grace: env.millis(&SHUTDOWN_GRACE_MS)?,
            shutdown_timeout: env.millis(&SHUTDOWN_TIMEOUT_MS)?,
            llm: keel_backend_llama::LlamaOptions {
                slots: env.number(&LLM_SLOTS)? as u32,
                context_per_slot: env.number(&LLM_CONTEXT)? as u32,
                threads: env
                    .optional_number(&LLM_THREADS)?
                    .map_or(cpus, |n| n as usize) as u32,
                step_tokens: env.number(&LLM_STEP_TOKENS)? as u32,
                max_waiting: env.number(&LLM_MAX_WAITING)? as usize,
                prefix_cache: env.flag(&LLM_PREFIX_CACHE)?,
            },
        };
        // Last, so that a wrong value is reported as such before this rule about several.
        let providers: Vec<&str> = settings
            .gateway
            .providers
            .keys()
            .map(String::as_str)
            .collect();
        access::check_open_gateway(
            &providers,
            &settings.api_keys,
            settings.host,
            settings.allow_open_gateway,
        )?;
        Ok(settings)
    }

    /// What `/info` shows: the values under the keys `vars.rs` declares, no secrets (only
    /// whether they are set, or how many there are).
    pub fn public_view(&self) -> serde_json::Value {
        let values = self.shown_values();
        let view: serde_json::Map<String, serde_json::Value> = ALL
            .iter()
            .filter_map(|var| var.show.key())
            .filter_map(|key| Some((key.to_string(), values.get(key)?.clone())))
            .collect();
        serde_json::Value::Object(view)
    }

    /// Every value `/info` may show, by key; a test checks these keys against the declared.
    fn shown_values(&self) -> serde_json::Value {
        let mut values = json!({
            "backend": match self.backend { BackendKind::Ort => "ort", BackendKind::Candle => "candle" },
            "ort_precision": match self.ort_precision {
                keel_backend_ort::Precision::Fp32 => "fp32",
                keel_backend_ort::Precision::Int8 => "int8",
            },
            "ort_dylib_path": self.ort_dylib_path,
            "host": self.host.to_string(),
            "port": self.port,
            "metrics_port": self.metrics_port,
            "config_file": self.config_file,
            "max_batch_size": self.max_batch_size,
            "max_client_batch": self.max_client_batch,
            "max_body_bytes": self.max_body_bytes,
            "max_input_tokens": self.max_input_tokens,
            "truncate": self.truncate,
            "max_queue_requests": self.max_queue_requests,
            "max_batch_tokens": self.max_batch_tokens,
            "max_batch_delay_us": self.max_batch_delay.as_micros() as u64,
            "max_queue_tokens": self.max_queue_tokens,
            "max_queue_wait_ms": self.max_queue_wait.map(|d| d.as_millis() as u64),
            "request_timeout_ms": self.request_timeout.as_millis() as u64,
            "inference_threads": self.inference_threads,
            "log_format": match self.log_format { LogFormat::Json => "json", LogFormat::Pretty => "pretty" },
            "log_level": self.log_level,
            "fail_fast": self.fail_fast,
            // The URL may carry credentials; say only whether export is on.
            "otlp_export": self.otlp_endpoint.is_some(),
            "api_keys": self.api_keys.len(),
            "metrics_require_key": self.metrics_require_key,
            "rate_limit_rpm": self.rate_limits.defaults.requests_per_minute,
            "rate_limit_tpm": self.rate_limits.defaults.tokens_per_minute,
            "budget_usd_per_day": self.rate_limits.defaults.budget_usd_per_day,
            // The URL may hold a password; say only where the meters live.
            "rate_limit_store": match (self.rate_limits.enabled(), &self.rate_limits.redis_url) {
                (false, _) => "off",
                (true, None) => "memory",
                (true, Some(_)) => "redis",
            },
            "rate_limit_failure": self.rate_limits.failure.as_str(),
            "redis_timeout_ms": self.rate_limits.redis_timeout.as_millis() as u64,
            "cors_allow_origins": match &self.cors {
                keel_http::Cors::Off => json!(null),
                keel_http::Cors::AnyOrigin => json!("*"),
                keel_http::Cors::Origins(list) => json!(list.iter().map(|v| v.to_str().unwrap_or_default()).collect::<Vec<_>>()),
            },
            "max_connections": self.max_connections,
            "header_read_timeout_ms": self.header_read_timeout.as_millis() as u64,
            "body_read_timeout_ms": self.body_read_timeout.as_millis() as u64,
            "tls": self.tls.is_some(),
            // Provider names only: their keys are secret.
            "gateway_providers": self.gateway.providers.keys().collect::<Vec<_>>(),
            "allow_open_gateway": self.allow_open_gateway,
            "shutdown_grace_ms": self.shutdown_grace.as_millis() as u64,
            "shutdown_timeout_ms": self.shutdown_timeout.as_millis() as u64,
        });
        // Apart: one json! of every key would pass serde_json's macro recursion limit.
        let more = json!({
            "llm_slots": self.llm.slots,
            "llm_context": self.llm.context_per_slot,
            "llm_threads": self.llm.threads,
            "llm_step_tokens": self.llm.step_tokens,
            "llm_max_waiting": self.llm.max_waiting,
            "llm_prefix_cache": self.llm.prefix_cache,
            "max_image_bytes": self.max_image_bytes,
            "max_image_pixels": self.max_image_pixels,
            "persistent_storage_dir": self.rag.storage_dir.display().to_string(),
            "rag_store": if self.rag.database_url.is_some() { "postgres" } else { "embedded" },
            "rag_database_connections": self.rag.database_connections,
            "max_file_bytes": self.rag.max_file_bytes,
            "rag_embedding_model": self.rag.embedding_model,
            "rag_ingest_workers": self.rag.ingest_workers,
            "rag_ingest_lease_ms": self.rag.ingest_lease.as_millis() as u64,
            "allow_open_rag": self.rag.allow_open,
        });
        if let (Some(all), serde_json::Value::Object(more)) = (values.as_object_mut(), more) {
            all.extend(more);
        }
        values
    }
}

/// The gateway's configuration: KEEL_CONFIG's `[gateway]` table and the provider variables
/// (keel-gateway reads the declared OPENAI_*/ANTHROPIC_* variables, and any variable a
/// provider's `api_key_env` names, from the map).
fn gateway(
    vars: &HashMap<String, String>,
    toml_text: Option<&str>,
    local: &[String],
) -> Result<keel_gateway::GatewayConfig, SettingError> {
    keel_gateway::GatewayConfig::from_parts_with_local(toml_text, vars, local).map_err(|e| {
        let message = e.to_string();
        // The variable the message is about, when it names one; else the file's.
        let variable = ALL
            .iter()
            .find(|v| message.starts_with(&format!("{}:", v.name)))
            .map_or(KEEL_CONFIG.name, |v| v.name);
        SettingError {
            variable,
            problem: Problem::Gateway(message),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Result<Settings, SettingError> {
        let vars = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_vars(&vars, false)
    }

    #[test]
    fn no_debug_print_or_public_view_shows_a_secret() {
        let secrets = [
            ("KEEL_API_KEYS", "sk-client-secret"),
            ("OPENAI_API_KEY", "sk-openai-secret"),
            ("ANTHROPIC_API_KEY", "sk-ant-secret"),
            ("REDIS_URL", "redis://:redis-secret@127.0.0.1:6379"),
            (
                "DATABASE_URL",
                "postgres://keel:pg-secret@127.0.0.1:5432/keel",
            ),
        ];
        for var in ALL.iter().filter(|v| v.secret) {
            assert!(
                secrets.iter().any(|(name, _)| *name == var.name),
                "{} is secret: add it to this test",
                var.name
            );
        }
        let mut pairs = secrets.to_vec();
        pairs.push(("RATE_LIMIT_RPM", "10"));
        let s = settings(&pairs).unwrap();
        let shown = format!("{s:?} {:#?} {}", s, s.public_view());
        for secret in [
            "sk-client-secret",
            "sk-openai-secret",
            "sk-ant-secret",
            "redis-secret",
            "pg-secret",
        ] {
            assert!(!shown.contains(secret), "{secret} leaked");
        }
    }

    #[test]
    fn the_public_view_has_exactly_the_declared_keys() {
        let s = settings(&[]).unwrap();
        let declared: std::collections::BTreeSet<&str> =
            ALL.iter().filter_map(|v| v.show.key()).collect();
        for view in [s.shown_values(), s.public_view()] {
            let shown: std::collections::BTreeSet<&str> = view
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            assert_eq!(shown, declared);
        }
    }

    #[test]
    fn the_public_view_keeps_its_keys_and_values() {
        let view = settings(&[
            ("KEEL_API_KEYS", "a,b"),
            ("MAX_QUEUE_WAIT_MS", "250"),
            ("CORS_ALLOW_ORIGINS", "*"),
            ("OPENAI_API_KEY", "sk-x"),
        ])
        .unwrap()
        .public_view();
        assert_eq!(view["port"], 8080);
        assert_eq!(view["host"], "0.0.0.0");
        assert_eq!(view["api_keys"], 2);
        assert_eq!(view["max_queue_wait_ms"], 250);
        assert_eq!(view["max_input_tokens"], serde_json::Value::Null);
        assert_eq!(view["cors_allow_origins"], "*");
        assert_eq!(view["rate_limit_store"], "off");
        assert_eq!(view["backend"], "ort");
        assert_eq!(view["gateway_providers"], json!(["openai"]));
        assert_eq!(view["request_timeout_ms"], 30_000);
    }

    #[test]
    fn defaults_serve_the_default_models_on_8080() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.port, 8080);
        assert_eq!(s.models.len(), 4);
        assert_eq!(s.models[0].name, "all-MiniLM-L6-v2");
        assert_eq!(s.models[2].name, "efficientnet-lite0");
        // The GGUF is a local generative model, which the gateway can route to.
        assert_eq!(s.models[3].name, "smollm2-135m-instruct");
        assert!(s.gateway.local.contains("smollm2-135m-instruct"));
        assert_eq!((s.llm.slots, s.llm.context_per_slot), (8, 2048));
        assert_eq!(s.log_format, LogFormat::Json);
        assert!(s.truncate);
        assert_eq!(s.max_input_tokens, None);
        assert_eq!(s.max_queue_wait, None);
        assert_eq!(
            (s.max_image_pixels, s.max_image_bytes),
            (40_000_000, 20 << 20)
        );
        assert_eq!(s.request_timeout, Duration::from_secs(30));
        assert!(s.inference_threads >= 1);
        assert!(!s.allow_open_gateway);
        assert!(s.gateway.providers.is_empty());
    }

    #[test]
    fn every_choice_option_is_understood() {
        for var in ALL {
            if let Kind::Choice { options, .. } = &var.kind {
                for option in *options {
                    settings(&[(var.name, option)])
                        .unwrap_or_else(|e| panic!("{}={option}: {e}", var.name));
                }
            }
        }
        let s = settings(&[("BACKEND", "candle"), ("ORT_PRECISION", "int8")]).unwrap();
        assert_eq!(s.backend, BackendKind::Candle);
        assert_eq!(s.ort_precision, keel_backend_ort::Precision::Int8);
        assert_eq!(
            settings(&[("LOG_FORMAT", "pretty")]).unwrap().log_format,
            LogFormat::Pretty
        );
        assert_eq!(
            settings(&[("RATE_LIMIT_FAILURE", "closed")])
                .unwrap()
                .rate_limits
                .failure,
            keel_limits::FailurePolicy::Closed
        );
    }

    #[test]
    fn bad_values_name_the_variable_and_what_is_accepted() {
        let e = settings(&[("PORT", "80a")]).unwrap_err();
        assert_eq!(e.variable, "PORT");
        assert_eq!(
            e.to_string(),
            "invalid setting PORT=\"80a\": expected an integer from 0 to 65535"
        );
        for (variable, value) in [
            ("MAX_BATCH_SIZE", "0"),
            ("TRUNCATE", "maybe"),
            ("LOG_FORMAT", "xml"),
            ("LOG_LEVEL", "loud["),
            ("HOST", "localhost:1"),
            ("MODELS", "a=/x,a=/y"),
            ("MODELS", "noequals"),
            ("REQUEST_TIMEOUT_MS", "0"),
            ("RATE_LIMIT_RPM", "0"),
            ("BUDGET_USD_PER_DAY", "-1"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318"),
            ("CORS_ALLOW_ORIGINS", "https://a.example/path"),
            ("KEEL_ALLOW_OPEN_GATEWAY", "sure"),
        ] {
            assert_eq!(
                settings(&[(variable, value)]).unwrap_err().variable,
                variable,
                "{variable}={value}"
            );
        }
    }

    #[test]
    fn a_bad_redis_url_is_named_but_not_repeated() {
        let e = settings(&[("REDIS_URL", "http://:pw-secret@x")]).unwrap_err();
        assert_eq!(e.variable, "REDIS_URL");
        assert!(!e.to_string().contains("pw-secret"), "{e}");
    }

    #[test]
    fn a_bad_gateway_variable_is_named() {
        let e =
            settings(&[("OPENAI_API_KEY", "sk-x"), ("OPENAI_BASE_URL", "not a url")]).unwrap_err();
        assert_eq!(e.variable, "OPENAI_BASE_URL");
        assert!(matches!(e.problem, Problem::Gateway(_)));
        assert!(!e.to_string().contains("sk-x"), "{e}");
    }

    #[test]
    fn model_sources_are_exclusive() {
        let e = settings(&[("MODEL_PATH", "/m/x"), ("MODELS", "a=/b")]).unwrap_err();
        assert_eq!(e.variable, "MODELS");
        let s = settings(&[("MODEL_PATH", "/m/my-model")]).unwrap();
        assert_eq!(s.models[0].name, "my-model");
        let s = settings(&[("MODELS", " a=/x , b=/y ")]).unwrap();
        assert_eq!(
            s.models.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
    }

    #[test]
    fn config_file_paths_are_relative_to_the_file() {
        let dir = std::env::temp_dir().join(format!("keel-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("keel.toml");
        std::fs::write(&file, "[[models]]\nname = \"e\"\npath = \"models/e\"\n").unwrap();
        let s = settings(&[("KEEL_CONFIG", file.to_str().unwrap())]).unwrap();
        assert_eq!(s.models[0].path, dir.join("models/e"));
        assert_eq!(s.public_view()["config_file"], file.to_str().unwrap());
        std::fs::write(&file, "[[models]]\nname = \"e\"\n").unwrap();
        assert_eq!(
            settings(&[("KEEL_CONFIG", file.to_str().unwrap())])
                .unwrap_err()
                .variable,
            "KEEL_CONFIG"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    // Closed by default: a gateway on a public address needs API keys.

    #[test]
    fn an_open_gateway_on_a_public_address_is_refused() {
        let e = settings(&[("OPENAI_API_KEY", "sk-owner-secret")]).unwrap_err();
        assert_eq!(e.variable, "KEEL_API_KEYS");
        assert!(matches!(e.problem, Problem::Refused(_)));
        let line = e.to_string();
        assert!(
            !line.contains('\n') && !line.contains("sk-owner-secret"),
            "{line}"
        );
        for named in [
            "KEEL_API_KEYS",
            "0.0.0.0",
            "HOST",
            "KEEL_ALLOW_OPEN_GATEWAY=true",
        ] {
            assert!(line.contains(named), "{named} missing from: {line}");
        }
        // Any public address, and a base URL alone also makes a provider.
        let e = settings(&[
            ("ANTHROPIC_BASE_URL", "http://10.0.0.2"),
            ("HOST", "10.0.0.1"),
        ]);
        assert_eq!(e.unwrap_err().variable, "KEEL_API_KEYS");
    }

    #[test]
    fn an_open_gateway_starts_with_keys() {
        settings(&[("OPENAI_API_KEY", "sk-x"), ("KEEL_API_KEYS", "client")]).unwrap();
        let dir = std::env::temp_dir().join(format!("keel-keyfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("keys");
        std::fs::write(&file, format!("{}\n", "ab".repeat(32))).unwrap();
        settings(&[
            ("OPENAI_API_KEY", "sk-x"),
            ("KEEL_API_KEYS_FILE", file.to_str().unwrap()),
        ])
        .unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_open_gateway_starts_on_loopback() {
        for host in ["127.0.0.1", "::1"] {
            let s = settings(&[("OPENAI_API_KEY", "sk-x"), ("HOST", host)]).unwrap();
            assert!(s.api_keys.is_empty() && !s.gateway.providers.is_empty());
        }
    }

    #[test]
    fn an_open_gateway_starts_when_the_owner_says_so() {
        let s = settings(&[
            ("OPENAI_API_KEY", "sk-x"),
            ("KEEL_ALLOW_OPEN_GATEWAY", "true"),
        ])
        .unwrap();
        assert!(s.allow_open_gateway);
        assert_eq!(s.public_view()["allow_open_gateway"], true);
    }

    #[test]
    fn local_models_stay_open_without_keys() {
        let s = settings(&[("HOST", "0.0.0.0")]).unwrap();
        assert!(s.api_keys.is_empty() && s.gateway.providers.is_empty());
    }
}
