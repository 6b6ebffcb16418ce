//! keel-http's router as a whole (every layer), driven in process: the JSON error shape and
//! statuses of the chat route, request ids decided once, body timeouts recognised by type,
//! and the probes with no model loaded.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use futures_util::StreamExt;
use http_body_util::BodyExt;
use keel_http::{auth::ApiKeys, AppState, Cors, Limits};
use serde_json::{json, Value};
use tower::ServiceExt;

fn app(gateway_toml: Option<&str>) -> Router {
    let gateway = gateway_toml.map(|toml| {
        let config =
            keel_gateway::GatewayConfig::from_parts(Some(toml), &Default::default()).unwrap();
        Arc::new(keel_gateway::Gateway::new(config).unwrap())
    });
    keel_http::router(AppState {
        registry: keel_engine::ModelRegistry::new(Vec::new()),
        limits: Limits {
            max_body_bytes: 1024,
            max_image_bytes: 4096,
            max_client_batch: 8,
            request_timeout: Duration::from_secs(5),
            body_read_timeout: Duration::from_millis(100),
        },
        settings: Arc::new(json!({})),
        metrics: None,
        metrics_on_main_port: false,
        gateway,
        api_keys: ApiKeys::new(Vec::new(), false),
        limiter: None,
        cors: Cors::Off,
        rag: None,
    })
}

/// A provider on a closed port, with one listed model and one route.
const GATEWAY: &str = r#"
[gateway]
max_attempts = 1
connect_timeout_ms = 200

[gateway.providers.up]
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
models = ["listed"]

[gateway.routes.chat]
targets = ["up/listed"]
"#;

async fn send(app: Router, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Value) {
    let response = app.oneshot(req).await.unwrap();
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (parts.status, parts.headers, value)
}

fn chat(body: &str) -> Request<Body> {
    Request::post("/v1/chat/completions")
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-request-id", "req-42")
        .body(Body::from(body.to_string()))
        .unwrap()
}

fn error_code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn chat_bad_bodies_get_the_same_statuses_as_every_route() {
    let messages = r#""messages":[{"role":"user","content":"hi"}]"#;
    let cases = [
        ("{\"model\":", StatusCode::BAD_REQUEST, "malformed_json"),
        (
            "{\"model\":\"chat\"}",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            &*format!("{{\"model\":\"gpt-4o\",{messages}}}"),
            StatusCode::NOT_FOUND,
            "model_not_found",
        ),
        (
            &*format!("{{\"model\":\"up/other\",{messages}}}"),
            StatusCode::NOT_FOUND,
            "model_not_found",
        ),
        (
            &*format!("{{\"model\":\"{}\"}}", "x".repeat(2000)),
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
        ),
    ];
    for (body, status, code) in cases {
        let (got, headers, value) = send(app(Some(GATEWAY)), chat(body)).await;
        assert_eq!((got, error_code(&value)), (status, code), "{body:.60}");
        assert_eq!(headers["x-request-id"], "req-42");
    }
    let req = Request::post("/v1/chat/completions")
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from("{}"))
        .unwrap();
    let (got, _, value) = send(app(Some(GATEWAY)), req).await;
    assert_eq!(
        (got, error_code(&value)),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
    );
}

#[tokio::test]
async fn an_unreachable_upstream_gives_the_degraded_answer_not_a_500() {
    let body = r#"{"model":"chat","messages":[{"role":"user","content":"hi"}]}"#;
    let (status, headers, value) = send(app(Some(GATEWAY)), chat(body)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-keel-degraded"], "true");
    assert_eq!(value["degraded"], true);
    assert!(value["degraded_reason"]
        .as_str()
        .unwrap()
        .contains("up/listed"));
}

/// A body that sends its first bytes and then nothing more.
fn stalled_body() -> Body {
    let first = futures_util::stream::once(async {
        Ok::<_, std::io::Error>(axum::body::Bytes::from_static(b"{\"model\":"))
    });
    Body::from_stream(first.chain(futures_util::stream::pending()))
}

#[tokio::test]
async fn a_body_that_stops_arriving_is_408_on_every_route() {
    for path in ["/v1/chat/completions", "/v1/embeddings", "/predict"] {
        let req = Request::post(path)
            .header(header::CONTENT_TYPE, "application/json")
            .body(stalled_body())
            .unwrap();
        let (status, _, value) = send(app(Some(GATEWAY)), req).await;
        assert_eq!(
            (status, error_code(&value)),
            (StatusCode::REQUEST_TIMEOUT, "body_timeout"),
            "{path}"
        );
    }
}

#[tokio::test]
async fn a_request_id_is_kept_when_sane_and_made_when_not() {
    let get = |id: Option<&str>| {
        let mut req = Request::get("/health");
        if let Some(id) = id {
            req = req.header("x-request-id", id);
        }
        req.body(Body::empty()).unwrap()
    };
    let (_, headers, _) = send(app(None), get(Some("abc-1"))).await;
    assert_eq!(headers["x-request-id"], "abc-1");
    let long = "x".repeat(200);
    for id in [None, Some("has space"), Some(long.as_str())] {
        let (_, headers, _) = send(app(None), get(id)).await;
        let made = headers["x-request-id"].to_str().unwrap();
        assert_eq!(made.len(), 36, "{made}: a fresh UUID");
    }
}

#[tokio::test]
async fn without_a_gateway_the_chat_route_is_not_there_and_errors_are_json() {
    let body = r#"{"model":"chat","messages":[{"role":"user","content":"hi"}]}"#;
    let (status, _, value) = send(app(None), chat(body)).await;
    assert_eq!(
        (status, error_code(&value)),
        (StatusCode::NOT_FOUND, "not_found")
    );
    let (status, _, value) = send(
        app(None),
        Request::get("/health").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(
        (status, value["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
}
