//! Who may call Keel and how much: API keys and the key file, per-key limits and where
//! their meters live, CORS, TLS, and the rule that keeps a gateway closed by default.

use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use keel_http::auth::{hash_key, ApiKeys, KeyEntry};
use keel_http::server::TlsAcceptor;

use super::env::{Env, Problem, SettingError};
use super::vars::*;

/// A value that must never be printed: Debug shows only that it is set.
#[derive(Clone)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// The TLS acceptor built from TLS_CERT_PATH and TLS_KEY_PATH (no Debug of its own).
#[derive(Clone)]
pub struct Tls(pub TlsAcceptor);

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Tls(..)")
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

pub fn api_keys(env: &Env) -> Result<ApiKeys, SettingError> {
    let mut entries: Vec<KeyEntry> = env
        .text(&KEEL_API_KEYS)
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(|k| KeyEntry::new(hash_key(k), keel_limits::KeyLimits::default()))
        .collect();
    if let Some(path) = env.text(&KEEL_API_KEYS_FILE) {
        let text = std::fs::read_to_string(path)
            .map_err(|e| env.error(&KEEL_API_KEYS_FILE, format!("a readable file ({e})")))?;
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            entries.push(key_file_line(line).ok_or_else(|| {
                env.error(
                    &KEEL_API_KEYS_FILE,
                    "lines of 64 hex digits (SHA-256 of a key), then optionally a name and \
                     rpm=N, tpm=N, budget_usd=X",
                )
            })?);
        }
    }
    Ok(ApiKeys::new(entries, env.flag(&METRICS_REQUIRE_KEY)?))
}

/// "HASH [name] [rpm=N] [tpm=N] [budget_usd=X]": a key and the limits of its own.
fn key_file_line(line: &str) -> Option<KeyEntry> {
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
    Some(KeyEntry::new(hash, limits))
}

/// DATABASE_URL, checked for its scheme here; the connection is tried at startup, where a
/// failure names the setting without repeating the URL (it carries the password).
pub fn database_url(env: &Env) -> Result<Option<Secret>, SettingError> {
    match env.text(&DATABASE_URL) {
        None => Ok(None),
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            Ok(Some(Secret(url.to_string())))
        }
        Some(_) => Err(env.error(&DATABASE_URL, "a postgres:// or postgresql:// URL")),
    }
}

pub fn rate_limits(env: &Env, keys: &ApiKeys) -> Result<RateLimits, SettingError> {
    let redis_url = match env.text(&REDIS_URL) {
        None => None,
        Some(url)
            if url.starts_with("redis://")
                || url.starts_with("rediss://")
                || url.starts_with("unix://") =>
        {
            if keel_limits::redis_store::RedisStore::new(url, Duration::from_millis(100)).is_err() {
                return Err(env.error(&REDIS_URL, "a valid redis:// URL"));
            }
            Some(Secret(url.to_string()))
        }
        Some(_) => {
            return Err(env.error(&REDIS_URL, "a redis://, rediss:// or unix:// URL"));
        }
    };
    let rpm = env.optional_number(&RATE_LIMIT_RPM)?;
    Ok(RateLimits {
        defaults: keel_limits::KeyLimits {
            // The declaration caps it at 10^9, well inside u32.
            requests_per_minute: rpm.map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
            tokens_per_minute: env.optional_number(&RATE_LIMIT_TPM)?,
            budget_usd_per_day: env.decimal(&BUDGET_USD_PER_DAY)?,
        },
        per_key: keys.has_own_limits(),
        redis_url,
        failure: match env.choice(&RATE_LIMIT_FAILURE)? {
            Some("closed") => keel_limits::FailurePolicy::Closed,
            _ => keel_limits::FailurePolicy::Open,
        },
        redis_timeout: env.millis(&REDIS_TIMEOUT_MS)?,
    })
}

pub fn cors(env: &Env) -> Result<keel_http::Cors, SettingError> {
    let Some(value) = env.text(&CORS_ALLOW_ORIGINS) else {
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
                        .map_err(|_| env.error(&CORS_ALLOW_ORIGINS, accepted))
                }
                _ => Err(env.error(&CORS_ALLOW_ORIGINS, accepted)),
            }
        })
        .collect::<Result<Vec<_>, _>>()
        .map(keel_http::Cors::Origins)
}

pub fn tls(env: &Env) -> Result<Option<Tls>, SettingError> {
    match (env.text(&TLS_CERT_PATH), env.text(&TLS_KEY_PATH)) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => keel_http::server::tls_acceptor(Path::new(cert), Path::new(key))
            .map(|acceptor| Some(Tls(acceptor)))
            .map_err(|e| {
                env.error(
                    &TLS_CERT_PATH,
                    format!(
                        "a PEM certificate chain matching {} ({e})",
                        TLS_KEY_PATH.name
                    ),
                )
            }),
        (Some(_), None) => Err(env.error(
            &TLS_KEY_PATH,
            format!(
                "a PEM private key path, since {} is set",
                TLS_CERT_PATH.name
            ),
        )),
        (None, Some(_)) => Err(env.error(
            &TLS_CERT_PATH,
            format!("a PEM certificate path, since {} is set", TLS_KEY_PATH.name),
        )),
    }
}

/// Closed by default: a gateway spends its owner's provider keys, so without API keys it
/// only listens on loopback, unless KEEL_ALLOW_OPEN_GATEWAY says the owner means it.
/// Local models stay open without keys.
pub fn check_open_gateway(
    providers: &[&str],
    keys: &ApiKeys,
    host: IpAddr,
    allow_open: bool,
) -> Result<(), SettingError> {
    if providers.is_empty() || !keys.is_empty() || host.is_loopback() || allow_open {
        return Ok(());
    }
    Err(SettingError {
        variable: KEEL_API_KEYS.name,
        problem: Problem::Refused(format!(
            "the gateway spends your provider keys ({}) and {keys_var} is not set while \
             listening on {host}, so anyone who reaches the port could use them; set \
             {keys_var} (or {file_var}), listen on a loopback {host_var} such as 127.0.0.1, \
             or set {allow_var}=true",
            providers.join(", "),
            keys_var = KEEL_API_KEYS.name,
            file_var = KEEL_API_KEYS_FILE.name,
            host_var = HOST.name,
            allow_var = KEEL_ALLOW_OPEN_GATEWAY.name,
        )),
    })
}
