//! Every setting, read from the environment and validated once at startup.
//!
//! A wrong value stops the process before anything starts, with one line naming the
//! variable, the value and what is accepted. Nothing else in Keel reads the environment.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use keel_engine::ModelSource;
use keel_http::server::TlsAcceptor;
use serde::Deserialize;
use serde_json::json;

/// Name, default, meaning: the table `--help` prints and the README mirrors.
pub const SETTINGS: &[(&str, &str, &str)] = &[
    (
        "PORT",
        "8080",
        "TCP port to listen on (0 picks a free port)",
    ),
    ("HOST", "0.0.0.0", "address to listen on"),
    (
        "METRICS_PORT",
        "",
        "serve /metrics on this port instead of PORT (keeps it off the public listener)",
    ),
    (
        "MODEL_PATH",
        "",
        "one model folder to serve (its folder name is its model name)",
    ),
    (
        "MODELS",
        "",
        "models to serve as name=path pairs, comma-separated",
    ),
    (
        "KEEL_CONFIG",
        "",
        "TOML file with [[models]] entries (name, path); paths relative to the file",
    ),
    (
        "BACKEND",
        "ort",
        "inference backend: ort (ONNX Runtime, fastest on CPU) or candle (pure Rust)",
    ),
    (
        "ORT_DYLIB_PATH",
        "models/onnxruntime/libonnxruntime.so",
        "ONNX Runtime shared library, loaded at startup (make run fetches it)",
    ),
    (
        "ORT_PRECISION",
        "fp32",
        "fp32, or int8 (dynamic per-channel quantization: ~2x faster, cosine ~0.99 to fp32)",
    ),
    ("MAX_BATCH_SIZE", "32", "most inputs in one inference batch"),
    ("MAX_CLIENT_BATCH", "256", "most inputs in one request"),
    ("MAX_BODY_BYTES", "2097152", "largest request body in bytes"),
    (
        "MAX_INPUT_TOKENS",
        "model's own limit",
        "lower cap on tokens per input",
    ),
    (
        "TRUNCATE",
        "true",
        "truncate inputs past the limit (false: answer 422 instead)",
    ),
    (
        "MAX_QUEUE_REQUESTS",
        "1024",
        "requests waiting per model before 429",
    ),
    (
        "MAX_QUEUE_WAIT_MS",
        "0",
        "refuse (429) a request whose predicted queue wait is longer; 0: only when it would miss its deadline",
    ),
    (
        "INFERENCE_THREADS",
        "CPU count",
        "threads the inference backend uses",
    ),
    (
        "LOG_FORMAT",
        "json if stdout is not a terminal, else pretty",
        "json or pretty",
    ),
    (
        "LOG_LEVEL",
        "info",
        "error, warn, info, debug, trace, or a tracing filter",
    ),
    (
        "RATE_LIMIT_RPM",
        "",
        "requests per minute per API key (all clients together without keys); unset: unlimited",
    ),
    (
        "RATE_LIMIT_TPM",
        "",
        "input and output tokens per minute per API key; unset: unlimited",
    ),
    (
        "BUDGET_USD_PER_DAY",
        "",
        "upstream spend per API key per day, in US dollars (needs [gateway.prices]); unset: unlimited",
    ),
    (
        "REDIS_URL",
        "",
        "share the per-key limits across replicas through this Redis (redis://[:password@]host:port)",
    ),
    (
        "RATE_LIMIT_FAILURE",
        "open",
        "when Redis cannot be reached: open (serve unlimited) or closed (503, and /ready 503)",
    ),
    (
        "REDIS_TIMEOUT_MS",
        "100",
        "longest wait for Redis on a request before the failure policy applies",
    ),
    (
        "CORS_ALLOW_ORIGINS",
        "",
        "browser origins allowed to call the API: * or comma-separated http(s)://host[:port]; unset: none",
    ),
    (
        "KEEL_FAIL_FAST",
        "false",
        "exit (status 1) when a model fails to load, instead of reporting it on /ready",
    ),
];

/// Served when no model is configured: what `make run` fetches.
pub const DEFAULT_MODELS: &str =
    "all-MiniLM-L6-v2=models/all-MiniLM-L6-v2,sentiment-minilm-l6=models/sentiment-minilm-l6";

pub use keel_telemetry::logging::LogFormat;

/// The TLS acceptor built from TLS_CERT_PATH and TLS_KEY_PATH (no Debug of its own).
#[derive(Clone)]
pub struct Tls(pub TlsAcceptor);

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Tls(..)")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Ort,
    Candle,
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
    pub models: Vec<ModelSource>,
    pub max_batch_size: usize,
    pub max_client_batch: usize,
    pub max_body_bytes: usize,
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
    pub rate_limits: RateLimits,
    pub cors: keel_http::Cors,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub tls: Option<Tls>,
    pub shutdown_grace: Duration,
    pub shutdown_timeout: Duration,
}

/// A value that must never be printed: Debug shows only that it is set.
#[derive(Clone)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Per-key limits: the defaults for every key (overridable per key in KEEL_API_KEYS_FILE)
/// and where the meters live.
#[derive(Debug, Clone)]
pub struct RateLimits {
    pub defaults: keel_limits::KeyLimits,
    /// Whether any key has a limit of its own.
    pub per_key: bool,
    pub redis_url: Option<Secret>,
    pub failure: keel_limits::FailurePolicy,
    pub redis_timeout: Duration,
}

impl RateLimits {
    pub fn enabled(&self) -> bool {
        self.per_key || !self.defaults.is_unlimited()
    }
}

/// A setting with a value Keel cannot use.
#[derive(Debug, PartialEq)]
pub struct SettingError {
    pub variable: &'static str,
    pub value: String,
    pub accepted: String,
}

impl fmt::Display for SettingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid setting {}={:?}: expected {}",
            self.variable, self.value, self.accepted
        )
    }
}

impl std::error::Error for SettingError {}

struct Env<'a> {
    vars: &'a HashMap<String, String>,
}

impl Env<'_> {
    /// The value, or None when unset or blank (an empty variable means "use the default").
    fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .get(name)
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
    }

    fn error(&self, variable: &'static str, accepted: impl Into<String>) -> SettingError {
        SettingError {
            variable,
            value: self.vars.get(variable).cloned().unwrap_or_default(),
            accepted: accepted.into(),
        }
    }

    fn parse<T: std::str::FromStr>(
        &self,
        name: &'static str,
        default: T,
        accepted: &str,
    ) -> Result<T, SettingError> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| self.error(name, accepted)),
        }
    }

    fn count(&self, name: &'static str, default: usize, max: usize) -> Result<usize, SettingError> {
        let accepted = format!("an integer from 1 to {max}");
        let n: usize = self.parse(name, default, &accepted)?;
        if n == 0 || n > max {
            return Err(self.error(name, accepted));
        }
        Ok(n)
    }

    fn flag(&self, name: &'static str, default: bool) -> Result<bool, SettingError> {
        match self.get(name).map(str::to_ascii_lowercase).as_deref() {
            None => Ok(default),
            Some("true" | "1" | "yes" | "on") => Ok(true),
            Some("false" | "0" | "no" | "off") => Ok(false),
            Some(_) => Err(self.error(name, "true or false")),
        }
    }
}

/// Keel's TOML file: `[[models]]` here, and a `[gateway]` table read by keel-gateway.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    models: Vec<ConfigModel>,
    #[allow(dead_code)]
    gateway: Option<toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigModel {
    name: String,
    path: PathBuf,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '/'))
}

fn check_unique(
    env: &Env,
    variable: &'static str,
    models: &[ModelSource],
) -> Result<(), SettingError> {
    let mut seen = HashSet::new();
    for m in models {
        if !seen.insert(&m.name) {
            return Err(env.error(
                variable,
                format!("distinct model names (\"{}\" appears twice)", m.name),
            ));
        }
    }
    Ok(())
}

fn parse_model_list(
    env: &Env,
    variable: &'static str,
    list: &str,
) -> Result<Vec<ModelSource>, SettingError> {
    let accepted = "name=path pairs separated by commas, names of letters, digits and -_.:/";
    let models = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((name, path)) if valid_name(name.trim()) && !path.trim().is_empty() => {
                Ok(ModelSource {
                    name: name.trim().to_string(),
                    path: PathBuf::from(path.trim()),
                })
            }
            _ => Err(env.error(variable, accepted)),
        })
        .collect::<Result<Vec<_>, _>>()?;
    if models.is_empty() {
        return Err(env.error(variable, accepted));
    }
    check_unique(env, variable, &models)?;
    Ok(models)
}

/// The models of the TOML file named by KEEL_CONFIG (none if it has no `[[models]]`).
fn config_file_models(
    env: &Env,
    file: &Path,
    text: &str,
) -> Result<Vec<ModelSource>, SettingError> {
    let config: ConfigFile = toml::from_str(text).map_err(|e| {
        env.error(
            "KEEL_CONFIG",
            format!(
                "a TOML file of [[models]] (name, path) and an optional [gateway] table ({})",
                e.message()
            ),
        )
    })?;
    let base = file.parent().unwrap_or(Path::new("."));
    let models: Vec<ModelSource> = config
        .models
        .into_iter()
        .map(|m| {
            if !valid_name(&m.name) {
                return Err(env.error(
                    "KEEL_CONFIG",
                    format!(
                        "model names of letters, digits and -_.:/ (got \"{}\")",
                        m.name
                    ),
                ));
            }
            Ok(ModelSource {
                name: m.name,
                path: base.join(m.path),
            })
        })
        .collect::<Result<_, _>>()?;
    check_unique(env, "KEEL_CONFIG", &models)?;
    Ok(models)
}

fn models(env: &Env, config: Option<(&Path, &str)>) -> Result<Vec<ModelSource>, SettingError> {
    let file_models = match config {
        Some((file, text)) => config_file_models(env, file, text)?,
        None => Vec::new(),
    };
    let mut given: Vec<&'static str> = ["MODEL_PATH", "MODELS"]
        .into_iter()
        .filter(|v| env.get(v).is_some())
        .collect();
    if !file_models.is_empty() {
        given.insert(0, "KEEL_CONFIG");
    }
    if given.len() > 1 {
        return Err(env.error(
            given[1],
            format!(
                "only one of MODEL_PATH, MODELS and KEEL_CONFIG's [[models]] (also set: {})",
                given[0]
            ),
        ));
    }
    match given.first().copied() {
        Some("KEEL_CONFIG") => Ok(file_models),
        Some("MODEL_PATH") => {
            let path = PathBuf::from(env.get("MODEL_PATH").unwrap_or_default());
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .filter(|n| valid_name(n))
                .ok_or_else(|| {
                    env.error("MODEL_PATH", "a folder whose name is a valid model name")
                })?
                .to_string();
            Ok(vec![ModelSource { name, path }])
        }
        Some(_) => parse_model_list(env, "MODELS", env.get("MODELS").unwrap_or_default()),
        None => parse_model_list(env, "MODELS", DEFAULT_MODELS),
    }
}

fn api_keys(env: &Env) -> Result<keel_http::auth::ApiKeys, SettingError> {
    use keel_http::auth::{hash_key, ApiKeys, KeyEntry};
    let mut entries: Vec<KeyEntry> = env
        .get("KEEL_API_KEYS")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(|k| KeyEntry::new(hash_key(k), keel_limits::KeyLimits::default()))
        .collect();
    if let Some(path) = env.get("KEEL_API_KEYS_FILE") {
        let text = std::fs::read_to_string(path)
            .map_err(|e| env.error("KEEL_API_KEYS_FILE", format!("a readable file ({e})")))?;
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            entries.push(key_file_line(line).ok_or_else(|| {
                env.error(
                    "KEEL_API_KEYS_FILE",
                    "lines of 64 hex digits (SHA-256 of a key), then optionally a name and \
                     rpm=N, tpm=N, budget_usd=X",
                )
            })?);
        }
    }
    // Never echo keys back: the error names the variable, not its value.
    Ok(ApiKeys::new(
        entries,
        env.flag("METRICS_REQUIRE_KEY", false)?,
    ))
}

/// "HASH [name] [rpm=N] [tpm=N] [budget_usd=X]": a key and the limits of its own.
fn key_file_line(line: &str) -> Option<keel_http::auth::KeyEntry> {
    let mut words = line.split_whitespace();
    let hash = keel_http::auth::parse_hash(words.next()?)?;
    let mut limits = keel_limits::KeyLimits::default();
    for word in words {
        match word.split_once('=') {
            None => continue, // the key's name, for people reading the file
            Some(("rpm", n)) => {
                limits.requests_per_minute = Some(n.parse().ok().filter(|n| *n > 0)?)
            }
            Some(("tpm", n)) => limits.tokens_per_minute = Some(n.parse().ok().filter(|n| *n > 0)?),
            Some(("budget_usd", x)) => {
                limits.budget_usd_per_day =
                    Some(x.parse().ok().filter(|x: &f64| x.is_finite() && *x > 0.0)?)
            }
            Some(_) => return None,
        }
    }
    Some(keel_http::auth::KeyEntry::new(hash, limits))
}

fn rate_limits(env: &Env, keys: &keel_http::auth::ApiKeys) -> Result<RateLimits, SettingError> {
    let positive = |name: &'static str| -> Result<Option<u64>, SettingError> {
        match env.get(name) {
            None => Ok(None),
            Some(v) => v
                .parse::<u64>()
                .ok()
                .filter(|n| (1..=1_000_000_000).contains(n))
                .map(Some)
                .ok_or_else(|| env.error(name, "an integer from 1 to 1000000000, or unset")),
        }
    };
    let budget = match env.get("BUDGET_USD_PER_DAY") {
        None => None,
        Some(v) => Some(
            v.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x > 0.0 && *x <= 1e9)
                .ok_or_else(|| {
                    env.error(
                        "BUDGET_USD_PER_DAY",
                        "a positive number of US dollars, or unset",
                    )
                })?,
        ),
    };
    // The message never repeats the URL: it may hold a password.
    let bad_redis_url = |accepted: &str| SettingError {
        variable: "REDIS_URL",
        value: "(hidden)".into(),
        accepted: accepted.into(),
    };
    let redis_url = match env.get("REDIS_URL") {
        None => None,
        Some(url)
            if url.starts_with("redis://")
                || url.starts_with("rediss://")
                || url.starts_with("unix://") =>
        {
            if keel_limits::redis_store::RedisStore::new(url, Duration::from_millis(100)).is_err() {
                return Err(bad_redis_url("a valid redis:// URL"));
            }
            Some(Secret(url.to_string()))
        }
        Some(_) => return Err(bad_redis_url("a redis://, rediss:// or unix:// URL")),
    };
    Ok(RateLimits {
        defaults: keel_limits::KeyLimits {
            requests_per_minute: positive("RATE_LIMIT_RPM")?.map(|n| n as u32),
            tokens_per_minute: positive("RATE_LIMIT_TPM")?,
            budget_usd_per_day: budget,
        },
        per_key: keys.has_own_limits(),
        redis_url,
        failure: match env
            .get("RATE_LIMIT_FAILURE")
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("open") => keel_limits::FailurePolicy::Open,
            Some("closed") => keel_limits::FailurePolicy::Closed,
            Some(_) => return Err(env.error("RATE_LIMIT_FAILURE", "open or closed")),
        },
        redis_timeout: Duration::from_millis(env.count("REDIS_TIMEOUT_MS", 100, 60_000)? as u64),
    })
}

fn cors(env: &Env) -> Result<keel_http::Cors, SettingError> {
    let Some(value) = env.get("CORS_ALLOW_ORIGINS") else {
        return Ok(keel_http::Cors::Off);
    };
    if value == "*" {
        return Ok(keel_http::Cors::AnyOrigin);
    }
    let accepted = "* or comma-separated origins such as https://app.example.com";
    value
        .split(',')
        .map(str::trim)
        .map(|origin| {
            // An origin is a scheme and a host, with no path: what browsers send.
            let host = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"));
            match host {
                Some(h) if !h.is_empty() && !h.contains('/') => {
                    axum::http::HeaderValue::from_str(origin)
                        .map_err(|_| env.error("CORS_ALLOW_ORIGINS", accepted))
                }
                _ => Err(env.error("CORS_ALLOW_ORIGINS", accepted)),
            }
        })
        .collect::<Result<Vec<_>, _>>()
        .map(keel_http::Cors::Origins)
}

fn tls(env: &Env) -> Result<Option<Tls>, SettingError> {
    match (env.get("TLS_CERT_PATH"), env.get("TLS_KEY_PATH")) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => keel_http::server::tls_acceptor(Path::new(cert), Path::new(key))
            .map(|acceptor| Some(Tls(acceptor)))
            .map_err(|e| {
                env.error(
                    "TLS_CERT_PATH",
                    format!("a PEM certificate chain matching TLS_KEY_PATH ({e})"),
                )
            }),
        (Some(_), None) => Err(env.error(
            "TLS_KEY_PATH",
            "a PEM private key path, since TLS_CERT_PATH is set",
        )),
        (None, Some(_)) => Err(env.error(
            "TLS_CERT_PATH",
            "a PEM certificate path, since TLS_KEY_PATH is set",
        )),
    }
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
        let env = Env { vars };
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let log_format = match env
            .get("LOG_FORMAT")
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None if stdout_is_terminal => LogFormat::Pretty,
            None => LogFormat::Json,
            Some("json") => LogFormat::Json,
            Some("pretty") => LogFormat::Pretty,
            Some(_) => return Err(env.error("LOG_FORMAT", "json or pretty")),
        };
        let log_level = env.get("LOG_LEVEL").unwrap_or("info").to_string();
        if tracing_subscriber::EnvFilter::try_new(&log_level).is_err() {
            return Err(env.error(
                "LOG_LEVEL",
                "error, warn, info, debug, trace, or a tracing filter directive",
            ));
        }
        let max_input_tokens = match env.get("MAX_INPUT_TOKENS") {
            None => None,
            Some(_) => Some(env.count("MAX_INPUT_TOKENS", 512, 1_000_000)?),
        };
        let config_file = match env.get("KEEL_CONFIG") {
            None => None,
            Some(path) => {
                let file = PathBuf::from(path);
                let text = std::fs::read_to_string(&file)
                    .map_err(|e| env.error("KEEL_CONFIG", format!("a readable TOML file ({e})")))?;
                Some((file, text))
            }
        };
        let backend = match env.get("BACKEND").map(str::to_ascii_lowercase).as_deref() {
            None | Some("ort") => BackendKind::Ort,
            Some("candle") => BackendKind::Candle,
            Some(_) => return Err(env.error("BACKEND", "ort or candle")),
        };
        let ort_precision = match env
            .get("ORT_PRECISION")
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("fp32") => keel_backend_ort::Precision::Fp32,
            Some("int8") => keel_backend_ort::Precision::Int8,
            Some(_) => return Err(env.error("ORT_PRECISION", "fp32 or int8")),
        };
        let api_keys = api_keys(&env)?;
        Ok(Self {
            backend,
            ort_dylib_path: PathBuf::from(
                env.get("ORT_DYLIB_PATH")
                    .unwrap_or("models/onnxruntime/libonnxruntime.so"),
            ),
            ort_precision,
            host: env.parse(
                "HOST",
                IpAddr::from([0, 0, 0, 0]),
                "an IP address such as 0.0.0.0 or 127.0.0.1",
            )?,
            port: env.parse("PORT", 8080, "an integer from 0 to 65535")?,
            metrics_port: match env.get("METRICS_PORT") {
                None => None,
                Some(_) => Some(env.parse("METRICS_PORT", 0, "an integer from 0 to 65535")?),
            },
            models: models(
                &env,
                config_file.as_ref().map(|(f, t)| (f.as_path(), t.as_str())),
            )?,
            gateway: keel_gateway::GatewayConfig::from_parts(
                config_file.as_ref().map(|(_, t)| t.as_str()),
                vars,
            )
            .map_err(|e| SettingError {
                variable: if config_file.is_some() {
                    "KEEL_CONFIG"
                } else {
                    "OPENAI_BASE_URL/ANTHROPIC_BASE_URL"
                },
                value: e.to_string(),
                accepted: "a valid gateway configuration (see the README's gateway section)".into(),
            })?,
            max_batch_size: env.count("MAX_BATCH_SIZE", 32, 4096)?,
            max_client_batch: env.count("MAX_CLIENT_BATCH", 256, 100_000)?,
            max_body_bytes: env.count("MAX_BODY_BYTES", 2 * 1024 * 1024, 1 << 30)?,
            max_input_tokens,
            truncate: env.flag("TRUNCATE", true)?,
            max_queue_requests: env.count("MAX_QUEUE_REQUESTS", 1024, 1_000_000)?,
            max_batch_tokens: env.count("MAX_BATCH_TOKENS", 16384, 1 << 24)?,
            max_batch_delay: Duration::from_micros(env.parse(
                "MAX_BATCH_DELAY_US",
                0,
                "a whole number of microseconds",
            )?),
            max_queue_tokens: env.count("MAX_QUEUE_TOKENS", 131_072, 1 << 30)?,
            max_queue_wait: match env.parse(
                "MAX_QUEUE_WAIT_MS",
                0,
                "a whole number of milliseconds (0: only the request's deadline bounds the wait)",
            )? {
                0 => None,
                ms => Some(Duration::from_millis(ms)),
            },
            request_timeout: Duration::from_millis(env.count(
                "REQUEST_TIMEOUT_MS",
                30_000,
                3_600_000,
            )? as u64),
            inference_threads: env.count("INFERENCE_THREADS", cpus, 1024)?,
            log_format,
            log_level,
            fail_fast: env.flag("KEEL_FAIL_FAST", false)?,
            otlp_endpoint: match env.get("OTEL_EXPORTER_OTLP_ENDPOINT") {
                None => None,
                Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
                    Some(url.to_string())
                }
                Some(_) => {
                    return Err(
                        env.error("OTEL_EXPORTER_OTLP_ENDPOINT", "an http:// or https:// URL")
                    )
                }
            },
            rate_limits: rate_limits(&env, &api_keys)?,
            cors: cors(&env)?,
            api_keys,
            max_connections: env.count("MAX_CONNECTIONS", 1024, 1_000_000)?,
            header_read_timeout: Duration::from_millis(env.count(
                "HEADER_READ_TIMEOUT_MS",
                10_000,
                3_600_000,
            )? as u64),
            body_read_timeout: Duration::from_millis(env.count(
                "BODY_READ_TIMEOUT_MS",
                30_000,
                3_600_000,
            )? as u64),
            tls: tls(&env)?,
            shutdown_grace: Duration::from_millis(env.parse(
                "SHUTDOWN_GRACE_MS",
                1000,
                "a whole number of milliseconds",
            )?),
            shutdown_timeout: Duration::from_millis(env.parse(
                "SHUTDOWN_TIMEOUT_MS",
                30_000,
                "a whole number of milliseconds",
            )?),
        })
    }

    /// What `/info` shows: every setting, no secrets (Keel has none yet, and model paths
    /// are not secret).
    pub fn public_view(&self) -> serde_json::Value {
        json!({
            "backend": match self.backend { BackendKind::Ort => "ort", BackendKind::Candle => "candle" },
            "ort_precision": match self.ort_precision {
                keel_backend_ort::Precision::Fp32 => "fp32",
                keel_backend_ort::Precision::Int8 => "int8",
            },
            "host": self.host.to_string(),
            "port": self.port,
            "metrics_port": self.metrics_port,
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
            "cors_allow_origins": match &self.cors {
                keel_http::Cors::Off => json!(null),
                keel_http::Cors::AnyOrigin => json!("*"),
                keel_http::Cors::Origins(list) => json!(list.iter().map(|v| v.to_str().unwrap_or_default()).collect::<Vec<_>>()),
            },
            "max_connections": self.max_connections,
            "header_read_timeout_ms": self.header_read_timeout.as_millis() as u64,
            "body_read_timeout_ms": self.body_read_timeout.as_millis() as u64,
            "tls": self.tls.is_some(),
            "shutdown_grace_ms": self.shutdown_grace.as_millis() as u64,
            "shutdown_timeout_ms": self.shutdown_timeout.as_millis() as u64,
        })
    }
}

/// The settings table for `--help`.
pub fn help_table() -> String {
    let width = SETTINGS.iter().map(|(n, _, _)| n.len()).max().unwrap_or(0);
    let mut out = String::from("Settings (environment variables):\n");
    for (name, default, meaning) in SETTINGS {
        let default = if default.is_empty() { "unset" } else { default };
        out.push_str(&format!(
            "  {name:width$}  {meaning} [default: {default}]\n"
        ));
    }
    out.push_str(&format!(
        "\nWith none of MODEL_PATH, MODELS, KEEL_CONFIG set, Keel serves {DEFAULT_MODELS}.\n\
         A wrong value exits with status 2 and a line naming the variable."
    ));
    out
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
        let s = settings(&[
            ("KEEL_API_KEYS", "sk-client-secret"),
            ("OPENAI_API_KEY", "sk-openai-secret"),
            ("ANTHROPIC_API_KEY", "sk-ant-secret"),
            ("REDIS_URL", "redis://:redis-secret@127.0.0.1:6379"),
            ("RATE_LIMIT_RPM", "10"),
        ])
        .unwrap();
        let shown = format!("{s:?} {:#?} {}", s, s.public_view());
        for secret in [
            "sk-client-secret",
            "sk-openai-secret",
            "sk-ant-secret",
            "redis-secret",
        ] {
            assert!(!shown.contains(secret), "{secret} leaked");
        }
    }

    #[test]
    fn defaults_serve_the_default_models_on_8080() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.port, 8080);
        assert_eq!(s.models.len(), 2);
        assert_eq!(s.models[0].name, "all-MiniLM-L6-v2");
        assert_eq!(s.log_format, LogFormat::Json);
        assert!(s.truncate);
        assert_eq!(s.max_input_tokens, None);
    }

    #[test]
    fn bad_values_name_the_variable_and_what_is_accepted() {
        let e = settings(&[("PORT", "80a")]).unwrap_err();
        assert_eq!(e.variable, "PORT");
        assert_eq!(
            e.to_string(),
            "invalid setting PORT=\"80a\": expected an integer from 0 to 65535"
        );
        assert_eq!(
            settings(&[("MAX_BATCH_SIZE", "0")]).unwrap_err().variable,
            "MAX_BATCH_SIZE"
        );
        assert_eq!(
            settings(&[("TRUNCATE", "maybe")]).unwrap_err().variable,
            "TRUNCATE"
        );
        assert_eq!(
            settings(&[("LOG_FORMAT", "xml")]).unwrap_err().variable,
            "LOG_FORMAT"
        );
        assert_eq!(
            settings(&[("HOST", "localhost:1")]).unwrap_err().variable,
            "HOST"
        );
        assert_eq!(
            settings(&[("MODELS", "a=/x,a=/y")]).unwrap_err().variable,
            "MODELS"
        );
        assert_eq!(
            settings(&[("MODELS", "noequals")]).unwrap_err().variable,
            "MODELS"
        );
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
        std::fs::write(&file, "[[models]]\nname = \"e\"\n").unwrap();
        assert_eq!(
            settings(&[("KEEL_CONFIG", file.to_str().unwrap())])
                .unwrap_err()
                .variable,
            "KEEL_CONFIG"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn help_lists_every_setting_with_its_default() {
        let help = help_table();
        for (name, _, _) in SETTINGS {
            assert!(help.contains(name), "{name} missing from --help");
        }
        assert!(help.contains("[default: 8080]"));
    }
}
