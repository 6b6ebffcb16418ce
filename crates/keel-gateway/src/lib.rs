//! Keel's gateway to third-party model APIs.
//!
//! An OpenAI-compatible `POST /v1/chat/completions` ([`http::routes`]) in front of OpenAI,
//! Anthropic and any OpenAI-compatible server. A request's model names a route, an ordered
//! list of targets ([`config`]); [`router`] walks it with retries that respect rate limits
//! ([`retry`], [`cooldown`]), circuit breaking ([`circuit`]) and concurrency limits
//! ([`limiter`]), and answers with the route's degraded response ([`degraded`]) when every
//! target has failed. Streams pass through as they arrive ([`stream`]).
//!
//! ```no_run
//! # async fn serve() -> Result<(), Box<dyn std::error::Error>> {
//! use std::{collections::HashMap, sync::Arc};
//! let env: HashMap<String, String> = std::env::vars().collect();
//! let config = keel_gateway::GatewayConfig::from_parts(None, &env)?;
//! let gateway = Arc::new(keel_gateway::Gateway::new(config)?);
//! let app = keel_gateway::http::routes(gateway);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```

pub mod circuit;
pub mod config;
pub mod cooldown;
pub mod degraded;
pub mod gateway;
pub mod http;
pub mod limiter;
pub mod meter;
pub mod metrics;
pub mod provider;
pub mod retry;
pub mod router;
pub mod sse;
pub mod stream;
pub mod upstream;

pub use config::{ConfigError, GatewayConfig};
pub use gateway::{Gateway, GatewayError};
