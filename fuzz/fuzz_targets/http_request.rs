//! Fuzzes Keel's HTTP request parsing: the whole router (`keel_http::router`), driven in
//! process with `tower::ServiceExt::oneshot`, on `POST /predict` and `POST /v1/embeddings`.
//!
//! Input format (so that seeds stay readable; see `fuzz/corpus/http_request/`):
//!
//! ```text
//! <route byte><content-type byte><query bytes...>\n<body bytes...>
//! ```
//!
//! - route byte, taken mod 2: `/predict`, `/v1/embeddings` (ASCII `0`, `1`);
//! - content-type byte, mod 4: `application/json`, `text/plain`, none,
//!   `application/vnd.keel+json; charset=utf-8` (ASCII `0`..`3`);
//! - the rest of the first line, when not empty, is the query string (`?text=...`,
//!   `?top_k=...`, `?model=...`): bytes that a URI may not hold are percent-encoded, `%`
//!   itself is kept, so `%ff` reaches the query decoder as invalid UTF-8;
//! - everything after the first `\n` is the body.
//!
//! The models are configured (their folders inspected, so each route knows its task) but
//! never loaded, so a request that parses answers 503 `model_not_ready` (or 422 for an
//! unknown model); 2xx cannot happen. Asserted for every input: the status is a 4xx or 503
//! (never a 500), and the body is `{"error": {"code": string, "message": string}}`.

#![no_main]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use keel_engine::{ModelRegistry, ModelSource};
use keel_http::auth::ApiKeys;
use keel_http::{AppState, Limits};
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

struct Harness {
    runtime: tokio::runtime::Runtime,
    router: Router,
    /// `KEEL_FUZZ_VERBOSE` set: print each request's status and error code (to check what
    /// the seeds reach: `.../http_request -runs=0 fuzz/corpus/http_request`).
    verbose: bool,
}

/// `models/` at the repo root, or `KEEL_FUZZ_MODELS_DIR`.
fn models_dir() -> PathBuf {
    std::env::var_os("KEEL_FUZZ_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models"))
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let models = models_dir();
        // A missing folder is fine: its slot is marked failed and requests answer 503 or
        // 422 all the same, only with less of the routing exercised.
        let registry = ModelRegistry::new(vec![
            ModelSource {
                name: "sentiment".into(),
                path: models.join("sentiment-minilm-l6"),
            },
            ModelSource {
                name: "minilm".into(),
                path: models.join("all-MiniLM-L6-v2"),
            },
        ]);
        let state = AppState {
            registry,
            // The server's defaults (crates/keel/src/settings.rs), except a body limit
            // small enough for the fuzzer's inputs (-max_len) to reach the 413 path.
            limits: Limits {
                max_body_bytes: 16 * 1024,
                max_image_bytes: 16 * 1024,
                max_client_batch: 256,
                request_timeout: Duration::from_secs(30),
                body_read_timeout: Duration::from_secs(10),
            },
            settings: Arc::new(serde_json::json!({})),
            metrics: None,
            metrics_on_main_port: false,
            gateway: None,
            api_keys: ApiKeys::new(vec![], false),
            limiter: None,
            cors: keel_http::Cors::default(),
            rag: None,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime");
        Harness {
            runtime,
            router: keel_http::router(state),
            verbose: std::env::var_os("KEEL_FUZZ_VERBOSE").is_some(),
        }
    })
}

const ROUTES: [&str; 2] = ["/predict", "/v1/embeddings"];
const CONTENT_TYPES: [Option<&str>; 4] = [
    Some("application/json"),
    Some("text/plain"),
    None,
    Some("application/vnd.keel+json; charset=utf-8"),
];

/// Keeps what a URI query may hold as is (and `%`), percent-encodes the rest.
fn query_string(raw: &[u8]) -> String {
    let mut out = String::with_capacity(raw.len());
    for &b in raw {
        if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let (head, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let route = ROUTES[usize::from(head.first().copied().unwrap_or(0)) % ROUTES.len()];
    let content_type =
        CONTENT_TYPES[usize::from(head.get(1).copied().unwrap_or(0)) % CONTENT_TYPES.len()];
    let query = head.get(2..).unwrap_or_default();
    let uri = if query.is_empty() {
        route.to_string()
    } else {
        format!("{route}?{}", query_string(query))
    };

    let mut request = Request::builder().method(Method::POST).uri(&uri);
    if let Some(ct) = content_type {
        request = request.header(header::CONTENT_TYPE, ct);
    }
    let request = match request.body(Body::from(body.to_vec())) {
        Ok(r) => r,
        // Not an HTTP request a server could receive: nothing to test.
        Err(_) => return,
    };

    let h = harness();
    let (status, bytes) = h.runtime.block_on(async {
        let response = h
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("the router is infallible");
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("the response body can be read");
        (status, bytes)
    });

    let shown = String::from_utf8_lossy(&bytes);
    assert!(
        status.is_client_error() || status == StatusCode::SERVICE_UNAVAILABLE,
        "POST {uri} ({content_type:?}) answered {status} (a 4xx or 503 was expected): {shown}"
    );
    let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!("POST {uri} answered {status} with a non-JSON body ({e}): {shown}")
    });
    let error = value
        .get("error")
        .and_then(|e| e.as_object())
        .unwrap_or_else(|| {
            panic!("POST {uri} answered {status} without an \"error\" object: {shown}")
        });
    assert!(
        error.get("code").is_some_and(|c| c.is_string())
            && error.get("message").is_some_and(|m| m.is_string()),
        "POST {uri} answered {status}; \"error\" lacks a string code or message: {shown}"
    );
    if h.verbose {
        eprintln!(
            "POST {uri} ({content_type:?}) -> {status} {}",
            error["code"]
        );
    }
});
