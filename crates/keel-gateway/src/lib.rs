//! Keel's gateway to third-party model APIs.
//!
//! The engine behind an OpenAI-compatible `POST /v1/chat/completions` in front of OpenAI,
//! Anthropic and any OpenAI-compatible server. It takes a parsed [`ChatRequest`] and returns
//! an [`Answer`] (JSON, a stream of events, a passed-on client error or the degraded answer);
//! it knows nothing of HTTP servers: keel-http's chat route is its edge. A request's model names a route, an ordered
//! list of targets ([`config`]); [`router`] walks it with retries that respect rate limits
//! ([`retry`], [`cooldown`]), circuit breaking ([`circuit`]) and concurrency limits
//! ([`limiter`]), and answers with the route's degraded response ([`degraded`]) when every
//! target has failed. Streams pass through as they arrive ([`stream`]).
//!
//! ```no_run
//! # async fn chat() -> Result<(), Box<dyn std::error::Error>> {
//! use std::collections::HashMap;
//! let env: HashMap<String, String> = std::env::vars().collect();
//! let config = keel_gateway::GatewayConfig::from_parts(None, &env)?;
//! let gateway = keel_gateway::Gateway::new(config)?;
//! let request = keel_gateway::ChatRequest::from_json(serde_json::json!({
//!     "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]
//! }))?;
//! let id = reqwest::header::HeaderValue::from_static("req-1");
//! match gateway.chat(request, id, None).await? {
//!     keel_gateway::Answer::Complete { body, .. } => println!("{body}"),
//!     _ => {}
//! }
//! # Ok(()) }
//! ```

pub mod circuit;
pub mod config;
pub mod cooldown;
pub mod degraded;
pub mod gateway;
pub mod limiter;
pub mod local;
pub mod meter;
pub mod metrics;
pub mod provider;
pub mod retry;
pub mod router;
pub mod sse;
pub mod stream;
pub mod upstream;

pub use config::{ConfigError, GatewayConfig};
pub use degraded::{Degraded, DegradedBody};
pub use gateway::{Gateway, GatewayError};
pub use provider::{ChatRequest, InvalidChat};
pub use router::{Answer, ChatError, Served};
