//! Every environment variable Keel reads, declared once.
//!
//! A declaration holds the name, the help text, whether the value is secret, its kind (what
//! is accepted, and the default) and how `/info` shows it. `keel --help`, the README's
//! settings table (checked by the tests in `drift.rs`), the parsers in `env.rs` and the
//! `/info` view all read these declarations, so a default printed in the help is the default
//! the parser uses. Code reads a variable through `Env`, which takes a `&'static Var`: a
//! variable that is not declared here cannot be read.

use std::net::{IpAddr, Ipv4Addr};

/// One environment variable.
#[derive(Debug)]
pub struct Var {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    /// Never logged, shown on `/info` or repeated in an error message.
    pub secret: bool,
    pub show: Show,
}

/// What a variable holds when it is unset.
#[derive(Debug, Clone, Copy)]
pub enum Fallback<T> {
    /// This value, as if it had been set.
    Value(T),
    /// Nothing: the feature is off or unlimited.
    None,
    /// Worked out at startup; the text says how (for the help).
    Computed(&'static str),
}

/// What a variable accepts and what it is when unset.
#[derive(Debug)]
pub enum Kind {
    /// A whole number from `min` to `max`; `unit` names what it counts in error messages.
    Number {
        default: Fallback<u64>,
        min: u64,
        max: u64,
        unit: &'static str,
    },
    /// A positive decimal number up to `max`, or unset (no limit).
    Decimal { max: f64, unit: &'static str },
    /// true/false (also 1/0, yes/no, on/off).
    Flag { default: bool },
    /// One of `options`, case-insensitive.
    Choice {
        default: Fallback<&'static str>,
        options: &'static [&'static str],
    },
    /// An IP address.
    Address { default: IpAddr },
    /// Text that the code reading it checks (paths, lists, URLs, keys, filters).
    Text { default: Fallback<&'static str> },
}

/// How `/info` shows a variable: the view's keys are exactly the keys declared here (a test
/// checks both ways), and a secret is never shown as its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    /// Its value, under this key.
    Value(&'static str),
    /// Only a summary that gives nothing away (a count, a yes/no, a name), under this key.
    Summary(&'static str),
    /// In another part of `/info` (the models list).
    Elsewhere,
}

impl Show {
    pub fn key(self) -> Option<&'static str> {
        match self {
            Show::Value(k) | Show::Summary(k) => Some(k),
            Show::Elsewhere => None,
        }
    }
}

impl Var {
    /// The default as the help and the README print it.
    pub fn default_text(&self) -> String {
        fn fallback<T: ToString>(f: &Fallback<T>) -> String {
            match f {
                Fallback::Value(v) => v.to_string(),
                Fallback::None => "unset".into(),
                Fallback::Computed(how) => how.to_string(),
            }
        }
        match &self.kind {
            Kind::Number { default, .. } => fallback(default),
            Kind::Choice { default, .. } | Kind::Text { default } => fallback(default),
            Kind::Decimal { .. } => "unset".into(),
            Kind::Flag { default } => default.to_string(),
            Kind::Address { default } => default.to_string(),
        }
    }

    /// What a value must look like, for error messages; None for text, which the code
    /// reading it describes.
    pub fn accepted(&self) -> Option<String> {
        let or_unset = |optional: bool| if optional { ", or unset" } else { "" };
        Some(match &self.kind {
            Kind::Number {
                default,
                min,
                max,
                unit,
            } => {
                let optional = !matches!(default, Fallback::Value(_));
                let range = if *max == u64::MAX {
                    format!("a whole number of {unit}")
                } else {
                    format!("an integer from {min} to {max}")
                };
                format!("{range}{}", or_unset(optional))
            }
            Kind::Decimal { max, unit } => {
                format!("a positive number of {unit} up to {max}, or unset")
            }
            Kind::Flag { .. } => "true or false".into(),
            Kind::Choice { default, options } => {
                let optional = !matches!(default, Fallback::Value(_));
                let list = match options {
                    [] => String::new(),
                    [one] => one.to_string(),
                    [init @ .., last] => format!("{} or {last}", init.join(", ")),
                };
                format!("{list}{}", or_unset(optional))
            }
            Kind::Address { .. } => "an IP address such as 0.0.0.0 or 127.0.0.1".into(),
            Kind::Text { .. } => return None,
        })
    }
}

/// Declares each variable as a `static` named as the variable, and `ALL`, every one of them
/// in help order. The name comes from the identifier, so it is written once.
macro_rules! declare {
    ($($name:ident { $($field:ident: $value:expr),* $(,)? })*) => {
        $(pub static $name: Var = Var { name: stringify!($name), $($field: $value),* };)*
        /// Every variable, in the order `--help` and the README list them.
        pub static ALL: &[&Var] = &[$(&$name),*];
    };
}

use Fallback::{Computed, None as Unset, Value};
use Show::{Elsewhere, Summary, Value as Shown};

const ANY_MS: u64 = u64::MAX;
const AN_HOUR_MS: u64 = 3_600_000;

declare! {
    PORT {
        help: "TCP port to listen on (0 picks a free port)",
        kind: Kind::Number { default: Value(8080), min: 0, max: 65_535, unit: "" },
        secret: false, show: Shown("port"),
    }
    HOST {
        help: "address to listen on; with a gateway provider and no API keys it must be \
               loopback (see KEEL_ALLOW_OPEN_GATEWAY)",
        kind: Kind::Address { default: IpAddr::V4(Ipv4Addr::UNSPECIFIED) },
        secret: false, show: Shown("host"),
    }
    METRICS_PORT {
        help: "serve /metrics on this port instead of PORT (keeps it off the public listener)",
        kind: Kind::Number { default: Unset, min: 0, max: 65_535, unit: "" },
        secret: false, show: Shown("metrics_port"),
    }
    MODEL_PATH {
        help: "one model folder to serve (its folder name is its model name)",
        kind: Kind::Text { default: Unset },
        secret: false, show: Elsewhere,
    }
    MODELS {
        help: "models to serve as name=path pairs, comma-separated",
        kind: Kind::Text { default: Unset },
        secret: false, show: Elsewhere,
    }
    KEEL_CONFIG {
        help: "TOML file with [[models]] entries (name, path; paths relative to the file) \
               and a [gateway] table",
        kind: Kind::Text { default: Unset },
        secret: false, show: Shown("config_file"),
    }
    BACKEND {
        help: "inference backend: ort (ONNX Runtime, fastest on CPU) or candle (pure Rust)",
        kind: Kind::Choice { default: Value("ort"), options: &["ort", "candle"] },
        secret: false, show: Shown("backend"),
    }
    ORT_DYLIB_PATH {
        help: "ONNX Runtime shared library, loaded at startup (make run fetches it)",
        kind: Kind::Text { default: Value("models/onnxruntime/libonnxruntime.so") },
        secret: false, show: Shown("ort_dylib_path"),
    }
    ORT_PRECISION {
        help: "fp32, or int8 (dynamic per-channel quantization: ~2x faster, cosine ~0.99 to fp32)",
        kind: Kind::Choice { default: Value("fp32"), options: &["fp32", "int8"] },
        secret: false, show: Shown("ort_precision"),
    }
    MAX_BATCH_SIZE {
        help: "most inputs in one inference batch",
        kind: Kind::Number { default: Value(32), min: 1, max: 4096, unit: "inputs" },
        secret: false, show: Shown("max_batch_size"),
    }
    MAX_CLIENT_BATCH {
        help: "most inputs in one request",
        kind: Kind::Number { default: Value(256), min: 1, max: 100_000, unit: "inputs" },
        secret: false, show: Shown("max_client_batch"),
    }
    MAX_BODY_BYTES {
        help: "largest request body in bytes",
        kind: Kind::Number { default: Value(2_097_152), min: 1, max: 1 << 30, unit: "bytes" },
        secret: false, show: Shown("max_body_bytes"),
    }
    MAX_IMAGE_BYTES {
        help: "largest image upload in bytes (a raw body or a whole multipart form; JSON \
               bodies, base64 images included, stay under MAX_BODY_BYTES)",
        kind: Kind::Number { default: Value(20_971_520), min: 1, max: 1 << 30, unit: "bytes" },
        secret: false, show: Shown("max_image_bytes"),
    }
    MAX_IMAGE_PIXELS {
        help: "largest decoded image in pixels (width x height), checked from the header \
               before decoding",
        kind: Kind::Number {
            default: Value(40_000_000), min: 1, max: 1 << 32, unit: "pixels",
        },
        secret: false, show: Shown("max_image_pixels"),
    }
    MAX_INPUT_TOKENS {
        help: "lower cap on tokens per input",
        kind: Kind::Number {
            default: Computed("the model's own limit"), min: 1, max: 1_000_000, unit: "tokens",
        },
        secret: false, show: Shown("max_input_tokens"),
    }
    TRUNCATE {
        help: "truncate inputs past the limit (false: answer 422 instead)",
        kind: Kind::Flag { default: true },
        secret: false, show: Shown("truncate"),
    }
    MAX_BATCH_TOKENS {
        help: "most padded tokens in one inference batch",
        kind: Kind::Number { default: Value(16_384), min: 1, max: 1 << 24, unit: "tokens" },
        secret: false, show: Shown("max_batch_tokens"),
    }
    MAX_BATCH_DELAY_US {
        help: "wait up to this long for a fuller batch (0: take what is queued, never idle)",
        kind: Kind::Number { default: Value(0), min: 0, max: u64::MAX, unit: "microseconds" },
        secret: false, show: Shown("max_batch_delay_us"),
    }
    MAX_QUEUE_REQUESTS {
        help: "requests waiting per model before 429",
        kind: Kind::Number { default: Value(1024), min: 1, max: 1_000_000, unit: "requests" },
        secret: false, show: Shown("max_queue_requests"),
    }
    MAX_QUEUE_TOKENS {
        help: "tokens waiting per model before 429",
        kind: Kind::Number { default: Value(131_072), min: 1, max: 1 << 30, unit: "tokens" },
        secret: false, show: Shown("max_queue_tokens"),
    }
    MAX_QUEUE_WAIT_MS {
        help: "refuse (429) a request whose predicted queue wait is longer; 0: refuse only \
               those that would miss their deadline",
        kind: Kind::Number { default: Value(0), min: 0, max: ANY_MS, unit: "milliseconds" },
        secret: false, show: Shown("max_queue_wait_ms"),
    }
    REQUEST_TIMEOUT_MS {
        help: "a request's deadline; a client may ask for less with X-Request-Timeout-Ms",
        kind: Kind::Number {
            default: Value(30_000), min: 1, max: AN_HOUR_MS, unit: "milliseconds",
        },
        secret: false, show: Shown("request_timeout_ms"),
    }
    INFERENCE_THREADS {
        help: "size of the one inference thread pool all models share (ort: ONNX Runtime's global intra-op pool, spinning only when it leaves a core free; candle: rayon's pool)",
        kind: Kind::Number { default: Computed("CPU count"), min: 1, max: 1024, unit: "threads" },
        secret: false, show: Shown("inference_threads"),
    }
    LLM_SLOTS {
        help: "local generative models (.gguf): requests generated at once, each in its own \
               sequence slot of one shared batch",
        kind: Kind::Number { default: Value(8), min: 1, max: 256, unit: "requests" },
        secret: false, show: Shown("llm_slots"),
    }
    LLM_CONTEXT {
        help: "local generative models: tokens (prompt and answer) one request may hold; the \
               KV cache holds LLM_SLOTS times this (capped by the model's trained context)",
        kind: Kind::Number { default: Value(2048), min: 64, max: 1 << 20, unit: "tokens" },
        secret: false, show: Shown("llm_context"),
    }
    LLM_THREADS {
        help: "local generative models: llama.cpp's compute threads",
        kind: Kind::Number { default: Computed("CPU count"), min: 1, max: 1024, unit: "threads" },
        secret: false, show: Shown("llm_threads"),
    }
    LLM_STEP_TOKENS {
        help: "local generative models: most tokens in one decode step (running requests' next \
               tokens first, then chunks of new prompts)",
        kind: Kind::Number { default: Value(512), min: 16, max: 65_536, unit: "tokens" },
        secret: false, show: Shown("llm_step_tokens"),
    }
    LLM_MAX_WAITING {
        help: "local generative models: requests waiting for a free slot before 429",
        kind: Kind::Number { default: Value(64), min: 0, max: 100_000, unit: "requests" },
        secret: false, show: Shown("llm_max_waiting"),
    }
    LLM_PREFIX_CACHE {
        help: "local generative models: reuse the KV cache of the longest cached prefix of a \
               prompt (a shared system prompt is computed once per slot)",
        kind: Kind::Flag { default: true },
        secret: false, show: Shown("llm_prefix_cache"),
    }
    LOG_FORMAT {
        help: "json or pretty",
        kind: Kind::Choice {
            default: Computed("json when stdout is not a terminal, else pretty"),
            options: &["json", "pretty"],
        },
        secret: false, show: Shown("log_format"),
    }
    LOG_LEVEL {
        help: "error, warn, info, debug, trace, or a tracing filter",
        kind: Kind::Text { default: Value("info") },
        secret: false, show: Shown("log_level"),
    }
    KEEL_API_KEYS {
        help: "accepted API keys, comma-separated; kept only as SHA-256 hashes; unset: no key \
               needed",
        kind: Kind::Text { default: Unset },
        secret: true, show: Summary("api_keys"),
    }
    KEEL_API_KEYS_FILE {
        help: "file of SHA-256 hashes of accepted keys, one hex hash a line (keel hash-key \
               prints one), optionally followed by a name and rpm=N tpm=N budget_usd=X",
        kind: Kind::Text { default: Unset },
        secret: false, show: Summary("api_keys"),
    }
    RATE_LIMIT_RPM {
        help: "requests per minute per API key (all clients together without keys); unset: \
               unlimited",
        kind: Kind::Number { default: Unset, min: 1, max: 1_000_000_000, unit: "requests" },
        secret: false, show: Shown("rate_limit_rpm"),
    }
    RATE_LIMIT_TPM {
        help: "input and output tokens per minute per API key; unset: unlimited",
        kind: Kind::Number { default: Unset, min: 1, max: 1_000_000_000, unit: "tokens" },
        secret: false, show: Shown("rate_limit_tpm"),
    }
    BUDGET_USD_PER_DAY {
        help: "upstream spend per API key per day, in US dollars (needs [gateway.prices]); \
               unset: unlimited",
        kind: Kind::Decimal { max: 1e9, unit: "US dollars" },
        secret: false, show: Shown("budget_usd_per_day"),
    }
    REDIS_URL {
        help: "share the per-key limits across replicas through this Redis \
               (redis://[:password@]host:port)",
        kind: Kind::Text { default: Unset },
        secret: true, show: Summary("rate_limit_store"),
    }
    RATE_LIMIT_FAILURE {
        help: "when Redis cannot be reached: open (serve unlimited) or closed (503, and /ready 503)",
        kind: Kind::Choice { default: Value("open"), options: &["open", "closed"] },
        secret: false, show: Shown("rate_limit_failure"),
    }
    REDIS_TIMEOUT_MS {
        help: "longest wait for Redis on a request before the failure policy applies",
        kind: Kind::Number { default: Value(100), min: 1, max: 60_000, unit: "milliseconds" },
        secret: false, show: Shown("redis_timeout_ms"),
    }
    METRICS_REQUIRE_KEY {
        help: "with keys set, /metrics needs one too (/health and /ready never do)",
        kind: Kind::Flag { default: false },
        secret: false, show: Shown("metrics_require_key"),
    }
    MAX_CONNECTIONS {
        help: "most client connections at once; past it, 503 too_many_connections",
        kind: Kind::Number {
            default: Value(1024), min: 1, max: 1_000_000, unit: "connections",
        },
        secret: false, show: Shown("max_connections"),
    }
    HEADER_READ_TIMEOUT_MS {
        help: "time a client gets to send its headers (and finish TLS)",
        kind: Kind::Number {
            default: Value(10_000), min: 1, max: AN_HOUR_MS, unit: "milliseconds",
        },
        secret: false, show: Shown("header_read_timeout_ms"),
    }
    BODY_READ_TIMEOUT_MS {
        help: "time a client gets to send its body; past it, 408",
        kind: Kind::Number {
            default: Value(30_000), min: 1, max: AN_HOUR_MS, unit: "milliseconds",
        },
        secret: false, show: Shown("body_read_timeout_ms"),
    }
    CORS_ALLOW_ORIGINS {
        help: "browser origins allowed to call the API: * or comma-separated \
               http(s)://host[:port]; unset: none",
        kind: Kind::Text { default: Unset },
        secret: false, show: Shown("cors_allow_origins"),
    }
    TLS_CERT_PATH {
        help: "PEM certificate chain; with TLS_KEY_PATH, serve HTTPS",
        kind: Kind::Text { default: Unset },
        secret: false, show: Summary("tls"),
    }
    TLS_KEY_PATH {
        help: "PEM private key; with TLS_CERT_PATH, serve HTTPS",
        kind: Kind::Text { default: Unset },
        secret: false, show: Summary("tls"),
    }
    OPENAI_API_KEY {
        help: "gateway provider openai: its API key (read by the gateway)",
        kind: Kind::Text { default: Unset },
        secret: true, show: Summary("gateway_providers"),
    }
    OPENAI_BASE_URL {
        help: "gateway provider openai: its URL (default https://api.openai.com/v1)",
        kind: Kind::Text { default: Unset },
        secret: false, show: Summary("gateway_providers"),
    }
    ANTHROPIC_API_KEY {
        help: "gateway provider anthropic: its API key (read by the gateway)",
        kind: Kind::Text { default: Unset },
        secret: true, show: Summary("gateway_providers"),
    }
    ANTHROPIC_BASE_URL {
        help: "gateway provider anthropic: its URL (default https://api.anthropic.com)",
        kind: Kind::Text { default: Unset },
        secret: false, show: Summary("gateway_providers"),
    }
    KEEL_ALLOW_OPEN_GATEWAY {
        help: "start even though gateway providers are configured, no API keys are set and \
               HOST is not loopback (anyone who reaches the port spends the provider keys)",
        kind: Kind::Flag { default: false },
        secret: false, show: Shown("allow_open_gateway"),
    }
    PERSISTENT_STORAGE_DIR {
        help: "where the RAG store keeps uploaded files, its SQLite database and indexes \
               (a PaaS's persistent volume)",
        kind: Kind::Text { default: Value("./data") },
        secret: false, show: Shown("persistent_storage_dir"),
    }
    DATABASE_URL {
        help: "keep the RAG store in this PostgreSQL with pgvector (postgres://user:password@host:port/db), \
               shared by every replica; unset: the embedded store under PERSISTENT_STORAGE_DIR",
        kind: Kind::Text { default: Unset },
        secret: true, show: Summary("rag_store"),
    }
    RAG_DATABASE_CONNECTIONS {
        help: "most connections this replica opens to DATABASE_URL",
        kind: Kind::Number { default: Value(8), min: 1, max: 1000, unit: "" },
        secret: false, show: Shown("rag_database_connections"),
    }
    MAX_FILE_BYTES {
        help: "largest file upload to /v1/files (413 file_too_large past it)",
        kind: Kind::Number { default: Value(33_554_432), min: 1, max: 1 << 31, unit: "bytes" },
        secret: false, show: Shown("max_file_bytes"),
    }
    RAG_EMBEDDING_MODEL {
        help: "the embedding model that embeds RAG chunks and queries; unset: the first \
               embedding model",
        kind: Kind::Text { default: Unset },
        secret: false, show: Shown("rag_embedding_model"),
    }
    RAG_INGEST_WORKERS {
        help: "files ingested at once (extraction, chunking and embedding in the background)",
        kind: Kind::Number { default: Value(2), min: 1, max: 64, unit: "files" },
        secret: false, show: Shown("rag_ingest_workers"),
    }
    RAG_INGEST_LEASE_MS {
        help: "how long a worker holds a file it is ingesting before another (in any replica \
               sharing DATABASE_URL) may take it: what a replica killed mid-file delays that file",
        kind: Kind::Number { default: Value(60_000), min: 1_000, max: 3_600_000, unit: "ms" },
        secret: false, show: Shown("rag_ingest_lease_ms"),
    }
    KEEL_ALLOW_OPEN_RAG {
        help: "serve the files and vector-store routes with no API keys set on a HOST that is \
               not loopback (anyone who reaches the port reads and writes the documents)",
        kind: Kind::Flag { default: false },
        secret: false, show: Shown("allow_open_rag"),
    }
    SHUTDOWN_GRACE_MS {
        help: "after SIGTERM, keep accepting this long while /ready says draining",
        kind: Kind::Number { default: Value(1000), min: 0, max: ANY_MS, unit: "milliseconds" },
        secret: false, show: Shown("shutdown_grace_ms"),
    }
    SHUTDOWN_TIMEOUT_MS {
        help: "then wait at most this long for in-flight requests",
        kind: Kind::Number {
            default: Value(30_000), min: 0, max: ANY_MS, unit: "milliseconds",
        },
        secret: false, show: Shown("shutdown_timeout_ms"),
    }
    OTEL_EXPORTER_OTLP_ENDPOINT {
        help: "OTLP/HTTP collector base URL; when set, traces are exported",
        kind: Kind::Text { default: Unset },
        secret: false, show: Summary("otlp_export"),
    }
    KEEL_FAIL_FAST {
        help: "exit (status 1) when a model fails to load, instead of reporting it on /ready",
        kind: Kind::Flag { default: false },
        secret: false, show: Shown("fail_fast"),
    }
}

/// Served when no model is configured: what `make run` fetches.
pub const DEFAULT_MODELS: &str = "all-MiniLM-L6-v2=models/all-MiniLM-L6-v2,\
     sentiment-minilm-l6=models/sentiment-minilm-l6,\
     efficientnet-lite0=models/efficientnet-lite0,\
     smollm2-135m-instruct=models/SmolLM2-135M-Instruct.Q4_1.gguf";

/// The settings table for `--help`.
pub fn help_table() -> String {
    let width = ALL.iter().map(|v| v.name.len()).max().unwrap_or(0);
    let mut out = String::from("Settings (environment variables):\n");
    for var in ALL {
        let secret = if var.secret {
            " (secret: never logged or shown)"
        } else {
            ""
        };
        out.push_str(&format!(
            "  {:width$}  {}{secret} [default: {}]\n",
            var.name,
            var.help,
            var.default_text()
        ));
    }
    out.push_str(&format!(
        "\nWith none of {}, {}, {} set, Keel serves {DEFAULT_MODELS}.\n\
         A wrong value exits with status 2 and a line naming the variable.",
        MODEL_PATH.name, MODELS.name, KEEL_CONFIG.name
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_look_like_environment_variables() {
        let mut seen = std::collections::HashSet::new();
        for var in ALL {
            assert!(seen.insert(var.name), "{} declared twice", var.name);
            assert!(
                var.name
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'),
                "{}",
                var.name
            );
        }
    }

    #[test]
    fn a_secret_is_never_shown_as_its_value() {
        for var in ALL.iter().filter(|v| v.secret) {
            assert!(
                !matches!(var.show, Show::Value(_)),
                "{} is secret but /info would show it",
                var.name
            );
        }
    }

    #[test]
    fn every_default_is_within_what_its_variable_accepts() {
        for var in ALL {
            match &var.kind {
                Kind::Number {
                    default, min, max, ..
                } => {
                    assert!(min <= max, "{}", var.name);
                    if let Fallback::Value(d) = default {
                        assert!((min..=max).contains(&d), "{}", var.name);
                    }
                }
                Kind::Choice { default, options } => {
                    assert!(options.len() >= 2, "{}", var.name);
                    if let Fallback::Value(d) = default {
                        assert!(options.contains(d), "{}", var.name);
                    }
                }
                Kind::Decimal { max, .. } => assert!(*max > 0.0, "{}", var.name),
                Kind::Flag { .. } | Kind::Address { .. } | Kind::Text { .. } => {}
            }
        }
    }

    #[test]
    fn help_prints_each_variable_with_its_declared_default() {
        let help = help_table();
        for var in ALL {
            let line = help
                .lines()
                .find(|l| l.split_whitespace().next() == Some(var.name))
                .unwrap_or_else(|| panic!("{} missing from --help", var.name));
            assert!(
                line.ends_with(&format!("[default: {}]", var.default_text())),
                "{line}"
            );
        }
        assert!(help.contains("  PORT ") && help.contains("[default: 8080]"));
        assert!(help.contains("[default: the model's own limit]"));
    }

    #[test]
    fn accepted_values_are_spelled_out() {
        assert_eq!(
            PORT.accepted().unwrap(),
            "an integer from 0 to 65535",
            "tests/integration/test_settings.py expects this text"
        );
        assert_eq!(
            RATE_LIMIT_RPM.accepted().unwrap(),
            "an integer from 1 to 1000000000, or unset"
        );
        assert_eq!(
            SHUTDOWN_GRACE_MS.accepted().unwrap(),
            "a whole number of milliseconds"
        );
        assert_eq!(BACKEND.accepted().unwrap(), "ort or candle");
        assert_eq!(LOG_FORMAT.accepted().unwrap(), "json or pretty, or unset");
        assert_eq!(KEEL_API_KEYS.accepted(), None);
    }
}
