//! API keys: who may call Keel.
//!
//! Keys are kept only as SHA-256 hashes (from `KEEL_API_KEYS`, hashed at startup, or from a
//! file of hashes), compared in constant time against every stored hash so that neither the
//! match nor its position leaks through timing. A key comes as `Authorization: Bearer KEY` or
//! `x-api-key: KEY`. Probes (`/health`, `/ready`) stay open; `/metrics` is open unless
//! configured otherwise.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use keel_limits::{Caller, KeyLimits};
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::error::ApiError;

/// One accepted key: its hash, and who it is to the limiter (a public id and its limits).
#[derive(Clone, Debug)]
pub struct KeyEntry {
    pub hash: [u8; 32],
    pub caller: Caller,
}

impl KeyEntry {
    /// The key's public id is a prefix of its hash: safe to log and to use as a Redis key,
    /// and the same on every replica.
    pub fn new(hash: [u8; 32], limits: KeyLimits) -> Self {
        Self {
            hash,
            caller: Caller {
                id: Arc::from(format!("key-{}", &to_hex(&hash)[..12])),
                limits,
            },
        }
    }
}

/// The hashes of the accepted keys, and what they guard.
#[derive(Clone, Debug)]
pub struct ApiKeys {
    entries: Arc<Vec<KeyEntry>>,
    pub protect_metrics: bool,
}

pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Parses a 64-digit hex SHA-256 hash.
pub fn parse_hash(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

pub fn to_hex(hash: &[u8; 32]) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

impl ApiKeys {
    pub fn new(entries: Vec<KeyEntry>, protect_metrics: bool) -> Self {
        Self {
            entries: Arc::new(entries),
            protect_metrics,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether any key carries limits of its own.
    pub fn has_own_limits(&self) -> bool {
        self.entries.iter().any(|e| !e.caller.limits.is_unlimited())
    }

    /// The caller whose key `presented` is, if any. Looks at every hash whatever matches,
    /// and picks the match without branching on it.
    pub fn identify(&self, presented: &str) -> Option<&Caller> {
        let candidate = hash_key(presented);
        let mut found = subtle::Choice::from(0);
        let mut index = 0u32;
        for (i, entry) in self.entries.iter().enumerate() {
            let equal = entry.hash.ct_eq(&candidate);
            index.conditional_assign(&(i as u32), equal);
            found |= equal;
        }
        bool::from(found).then(|| &self.entries[index as usize].caller)
    }

    fn guards(&self, path: &str) -> bool {
        match path {
            "/health" | "/ready" => false,
            "/metrics" => self.protect_metrics,
            _ => true,
        }
    }
}

fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let (scheme, key) = value.trim().split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| key.trim());
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// Lets through requests with a valid key (marking them with the key's [`Caller`] for the
/// limiter), requests to open paths, and everything when no key is configured.
pub async fn require_key(State(keys): State<ApiKeys>, mut req: Request, next: Next) -> Response {
    if keys.is_empty() || !keys.guards(req.uri().path()) {
        return next.run(req).await;
    }
    let caller = presented_key(req.headers())
        .filter(|key| !key.is_empty())
        .and_then(|key| keys.identify(key))
        .cloned();
    match caller {
        Some(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        None => {
            let presented = presented_key(req.headers());
            let message = if presented.is_some() {
                "the API key is not valid"
            } else {
                "an API key is required: send Authorization: Bearer KEY or x-api-key: KEY"
            };
            let mut response =
                ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_the_configured_keys() {
        let entry = |k| KeyEntry::new(hash_key(k), KeyLimits::default());
        let keys = ApiKeys::new(vec![entry("alpha"), entry("beta")], false);
        let id = |k| keys.identify(k).map(|c| c.id.to_string());
        assert_eq!(
            id("alpha"),
            Some(format!("key-{}", &to_hex(&hash_key("alpha"))[..12]))
        );
        assert_eq!(
            id("beta"),
            Some(format!("key-{}", &to_hex(&hash_key("beta"))[..12]))
        );
        assert!(id("gamma").is_none() && id("").is_none() && id("alph").is_none());
    }

    #[test]
    fn hashes_round_trip_through_hex() {
        let h = hash_key("alpha");
        assert_eq!(parse_hash(&to_hex(&h)), Some(h));
        assert_eq!(parse_hash("xyz"), None);
        assert_eq!(parse_hash(&"g".repeat(64)), None);
    }

    #[test]
    fn keys_come_as_bearer_or_x_api_key() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer sk-1".parse().unwrap());
        assert_eq!(presented_key(&h), Some("sk-1"));
        let mut h = HeaderMap::new();
        h.insert("x-api-key", "sk-2".parse().unwrap());
        assert_eq!(presented_key(&h), Some("sk-2"));
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(presented_key(&h), None);
    }

    #[test]
    fn probes_stay_open() {
        let keys = ApiKeys::new(
            vec![KeyEntry::new(hash_key("k"), KeyLimits::default())],
            false,
        );
        assert!(!keys.guards("/health") && !keys.guards("/ready") && !keys.guards("/metrics"));
        assert!(keys.guards("/predict") && keys.guards("/v1/chat/completions"));
        assert!(ApiKeys::new(vec![], true).guards("/metrics"));
    }
}
