//! Serves the gateway alone, for integration tests and benchmarks.
//!
//! Settings: `KEEL_CONFIG` (a TOML file with a `[gateway]` table), the provider variables
//! (`OPENAI_API_KEY`, ...), `HOST` (default 127.0.0.1) and `PORT` (default 0: a free one).
//! Prints `listening on ADDR` on stdout once it accepts; logs JSON lines on stderr
//! (`LOG_LEVEL`, default info). `GET /metrics` renders the Prometheus metrics.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;

use axum::routing::get;

#[tokio::main]
async fn main() {
    let env: HashMap<String, String> = std::env::vars().collect();
    tracing_subscriber::fmt()
        .json()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(env.get("LOG_LEVEL").map_or("info", |v| v))
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let fail = |message: String| -> ! {
        eprintln!("{message}");
        std::process::exit(2)
    };
    let text = env.get("KEEL_CONFIG").map(|path| {
        std::fs::read_to_string(path).unwrap_or_else(|e| fail(format!("KEEL_CONFIG: {path}: {e}")))
    });
    let config = keel_gateway::GatewayConfig::from_parts(text.as_deref(), &env)
        .unwrap_or_else(|e| fail(e.to_string()));
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .unwrap_or_else(|e| fail(e.to_string()));
    let gateway =
        Arc::new(keel_gateway::Gateway::new(config).unwrap_or_else(|e| fail(e.to_string())));
    let app = keel_gateway::http::routes(gateway)
        .route("/metrics", get(move || std::future::ready(handle.render())));
    let host = env.get("HOST").map_or("127.0.0.1", |v| v);
    let port = env.get("PORT").map_or("0", |v| v);
    let listener = tokio::net::TcpListener::bind(format!("{host}:{port}"))
        .await
        .unwrap_or_else(|e| fail(format!("cannot listen on {host}:{port}: {e}")));
    let addr = listener
        .local_addr()
        .unwrap_or_else(|e| fail(e.to_string()));
    println!("listening on {addr}");
    let _ = std::io::stdout().flush();
    axum::serve(listener, app)
        .await
        .unwrap_or_else(|e| fail(e.to_string()));
}
