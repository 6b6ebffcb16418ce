//! A minimal OpenAI-shaped upstream for the overhead benchmark: answers every
//! `POST /v1/chat/completions` at once with the same small completion. Prints
//! `listening on ADDR`; `PORT` picks the port (default 0).

use std::io::Write;

use axum::http::header;
use axum::routing::post;

const ANSWER: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":0,"model":"bench","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}"#;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let port = std::env::var("PORT").unwrap_or_else(|_| "0".into());
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        post(|_body: axum::body::Bytes| async {
            ([(header::CONTENT_TYPE, "application/json")], ANSWER)
        }),
    );
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}"))
        .await
        .expect("bind");
    println!("listening on {}", listener.local_addr().expect("addr"));
    let _ = std::io::stdout().flush();
    axum::serve(listener, app).await.expect("serve");
}
