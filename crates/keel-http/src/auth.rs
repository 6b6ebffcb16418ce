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
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// The hashes of the accepted keys, and what they guard.
#[derive(Clone, Debug)]
pub struct ApiKeys {
    hashes: Arc<Vec<[u8; 32]>>,
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
    pub fn new(hashes: Vec<[u8; 32]>, protect_metrics: bool) -> Self {
        Self {
            hashes: Arc::new(hashes),
            protect_metrics,
        }
    }

    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Whether `presented` is one of the keys. Looks at every hash whatever matches.
    pub fn accepts(&self, presented: &str) -> bool {
        let candidate = hash_key(presented);
        let mut found = subtle::Choice::from(0);
        for stored in self.hashes.iter() {
            found |= stored.ct_eq(&candidate);
        }
        found.into()
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

pub async fn require_key(State(keys): State<ApiKeys>, req: Request, next: Next) -> Response {
    if keys.is_empty() || !keys.guards(req.uri().path()) {
        return next.run(req).await;
    }
    match presented_key(req.headers()) {
        Some(key) if !key.is_empty() && keys.accepts(key) => next.run(req).await,
        presented => {
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
        let keys = ApiKeys::new(vec![hash_key("alpha"), hash_key("beta")], false);
        assert!(keys.accepts("alpha") && keys.accepts("beta"));
        assert!(!keys.accepts("gamma") && !keys.accepts("") && !keys.accepts("alph"));
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
        let keys = ApiKeys::new(vec![hash_key("k")], false);
        assert!(!keys.guards("/health") && !keys.guards("/ready") && !keys.guards("/metrics"));
        assert!(keys.guards("/predict") && keys.guards("/v1/chat/completions"));
        assert!(ApiKeys::new(vec![], true).guards("/metrics"));
    }
}
