//! Keel's HTTP API.
//!
//! One file per route group under [`routes`]; every handler parses its body with
//! [`json::JsonBody`] and fails with [`error::ApiError`], so every client mistake becomes a
//! `{"error": {"code", "message"}}` body with a 4xx status, never a 500.

pub mod auth;
pub mod error;
pub mod json;
pub mod middleware;
pub mod rate_limit;
pub mod routes;
pub mod server;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::middleware::{from_fn, from_fn_with_state};
use axum::Router;
use keel_engine::ModelRegistry;
use metrics_exporter_prometheus::PrometheusHandle;
use tower_http::timeout::RequestBodyTimeoutLayer;

/// Limits that the handlers enforce.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Largest image upload (a raw body or a whole multipart form), in bytes; JSON bodies,
    /// base64 images included, stay under `max_body_bytes`.
    pub max_image_bytes: usize,
    /// Most inputs one request may carry.
    pub max_client_batch: usize,
    /// Time a request may take; a client may ask for less with `X-Request-Timeout-Ms`.
    pub request_timeout: std::time::Duration,
    /// Time a client gets to send the body.
    pub body_read_timeout: std::time::Duration,
}

/// Everything a handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub registry: Arc<ModelRegistry>,
    pub limits: Limits,
    /// The effective settings, secrets removed, shown by `/info`.
    pub settings: Arc<serde_json::Value>,
    /// Renders `/metrics`; None when no recorder is installed (unit tests).
    pub metrics: Option<PrometheusHandle>,
    /// Serve `/metrics` on the main router (false when it has a port of its own).
    pub metrics_on_main_port: bool,
    /// The gateway to third-party model APIs (`POST /v1/chat/completions`).
    pub gateway: Option<Arc<keel_gateway::Gateway>>,
    /// Accepted API keys; empty: no key needed.
    pub api_keys: auth::ApiKeys,
    /// Per-key limits; None: unlimited.
    pub limiter: Option<Arc<keel_limits::Limiter>>,
    /// Which browser origins may call the API.
    pub cors: Cors,
    /// Files, vector stores and search; None when not served.
    pub rag: Option<Rag>,
}

/// The RAG service as the routes reach it.
#[derive(Clone)]
pub struct Rag {
    pub service: Arc<keel_retrieval::Retrieval>,
    /// Largest file upload, in bytes.
    pub max_file_bytes: usize,
    /// Why the RAG routes are refused (open to the network without keys); None: served.
    pub refused: Option<&'static str>,
}

/// Cross-origin access for browsers: off unless configured (`CORS_ALLOW_ORIGINS`).
#[derive(Debug, Clone, Default)]
pub enum Cors {
    #[default]
    Off,
    AnyOrigin,
    Origins(Vec<axum::http::HeaderValue>),
}

impl Cors {
    /// The layer answering preflights and adding the `access-control-*` headers; it sits
    /// outside the API-key check, since browsers send preflights without credentials.
    fn layer(&self) -> Option<tower_http::cors::CorsLayer> {
        use axum::http::{header, HeaderName, Method};
        use tower_http::cors::{AllowOrigin, CorsLayer};
        let origins = match self {
            Cors::Off => return None,
            Cors::AnyOrigin => AllowOrigin::any(),
            Cors::Origins(list) => AllowOrigin::list(list.clone()),
        };
        let exposed = [
            "x-request-id",
            "retry-after",
            "x-ratelimit-limit-requests",
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests",
            "x-ratelimit-limit-tokens",
            "x-ratelimit-remaining-tokens",
            "x-ratelimit-reset-tokens",
        ];
        Some(
            CorsLayer::new()
                .allow_origin(origins)
                .allow_methods([Method::GET, Method::POST, Method::DELETE])
                .allow_headers([
                    header::AUTHORIZATION,
                    header::CONTENT_TYPE,
                    HeaderName::from_static("x-api-key"),
                    HeaderName::from_static("x-request-id"),
                    HeaderName::from_static("x-request-timeout-ms"),
                ])
                .expose_headers(exposed.map(HeaderName::from_static))
                .max_age(std::time::Duration::from_secs(600)),
        )
    }
}

pub fn router(state: AppState) -> Router {
    let body_limit = state.limits.max_body_bytes;
    let body_timeout = state.limits.body_read_timeout;
    let gateway = state.gateway.clone();
    let api_keys = state.api_keys.clone();
    let limiter = state.limiter.clone();
    let cors = state.cors.layer();
    let predict = routes::predict::routes(&state.limits);
    let local = Router::new()
        .merge(routes::health::routes())
        .merge(predict)
        .merge(routes::embeddings::routes())
        .merge(routes::completions::routes())
        .merge(routes::models::routes())
        .merge(routes::openapi::routes())
        .merge(routes::responses::routes())
        .merge(match &state.rag {
            Some(rag) => routes::files::routes(rag.max_file_bytes)
                .merge(routes::vector_stores::routes())
                .merge(routes::file_batches::routes()),
            None => Router::new(),
        })
        .merge(if state.metrics_on_main_port {
            routes::metrics::routes()
        } else {
            Router::new()
        })
        .with_state(state);
    let routes = match gateway {
        Some(gateway) => local.merge(routes::chat::routes(gateway)),
        None => local,
    };
    routes
        .route_layer(from_fn(middleware::record_route))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(RequestBodyTimeoutLayer::new(body_timeout))
        .layer(from_fn_with_state(limiter, rate_limit::enforce))
        .layer(from_fn_with_state(api_keys, auth::require_key))
        .layer(tower::util::option_layer(cors))
        .layer(from_fn(middleware::observe))
}

/// `/metrics` alone, for `METRICS_PORT`.
pub fn metrics_router(state: AppState) -> Router {
    routes::metrics::routes()
        .fallback(routes::not_found)
        .with_state(state)
}
