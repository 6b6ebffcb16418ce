//! The gateway as a library, against a real (scripted) HTTP upstream on loopback: routing,
//! retries, fallbacks, the degraded answer, streams cut midway, and the bound on the state
//! and metric series that client-chosen model names can create.

mod common;

use std::collections::HashMap;

use common::{chunk, status, Step, Upstream};
use futures_util::StreamExt;
use keel_gateway::{Answer, ChatError, ChatRequest, DegradedBody, Gateway, GatewayConfig};
use reqwest::header::HeaderValue;
use serde_json::json;

fn gateway(toml: &str, env: &[(&str, &str)]) -> Gateway {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Gateway::new(GatewayConfig::from_parts(Some(toml), &env).unwrap()).unwrap()
}

fn two_providers(a: &Upstream, b: &Upstream) -> String {
    format!(
        r#"
[gateway]
max_attempts = 2
backoff_base_ms = 1
backoff_max_ms = 2
total_timeout_ms = 5000
first_byte_timeout_ms = 300

[gateway.providers.a]
kind = "openai"
base_url = "{}/v1"
models = ["listed"]

[gateway.providers.b]
kind = "openai"
base_url = "{}/v1"
allow_any_model = true

[gateway.routes.chat]
targets = ["a/first", "b/second"]
"#,
        a.base, b.base
    )
}

fn chat(model: &str, stream: bool) -> ChatRequest {
    ChatRequest::from_json(json!({
        "model": model, "stream": stream,
        "messages": [{"role": "user", "content": "hi"}]
    }))
    .unwrap()
}

async fn ask(g: &Gateway, model: &str, stream: bool) -> Result<Answer, ChatError> {
    g.chat(
        chat(model, stream),
        HeaderValue::from_static("req-test"),
        None,
    )
    .await
}

#[tokio::test]
async fn a_server_error_is_retried_then_the_next_target_answers() {
    let (a, b) = (Upstream::start().await, Upstream::start().await);
    a.script([status(500, vec![]), status(503, vec![])]);
    let g = gateway(&two_providers(&a, &b), &[]);
    let Ok(Answer::Complete { body, served }) = ask(&g, "chat", false).await else {
        panic!("expected an answer from the second target");
    };
    assert_eq!((served.provider.as_str(), served.attempts), ("b", 3));
    assert_eq!(body["choices"][0]["message"]["content"], "hello");
    assert_eq!(a.models(), ["first", "first"]);
    assert_eq!(b.models(), ["second"]);
}

#[tokio::test]
async fn a_client_error_is_passed_on_and_not_retried() {
    let (a, b) = (Upstream::start().await, Upstream::start().await);
    a.script([status(400, vec![])]);
    let g = gateway(&two_providers(&a, &b), &[]);
    let Ok(Answer::Refused { status, error, .. }) = ask(&g, "chat", false).await else {
        panic!("expected the upstream's 400 passed on");
    };
    assert_eq!((status, error.code.as_str()), (400, "x"));
    assert!(b.models().is_empty(), "a client error must not fall back");
}

#[tokio::test]
async fn a_told_wait_becomes_a_shared_cooldown() {
    let (a, b) = (Upstream::start().await, Upstream::start().await);
    // 429 with Retry-After: 60 s is past max_retry_after (30 s): fall to the next target,
    // and the next request skips the first target without calling it.
    a.script([status(429, vec![("retry-after", "60".into())])]);
    let g = gateway(&two_providers(&a, &b), &[]);
    assert!(matches!(
        ask(&g, "chat", false).await,
        Ok(Answer::Complete { .. })
    ));
    assert!(matches!(
        ask(&g, "chat", false).await,
        Ok(Answer::Complete { .. })
    ));
    assert_eq!(
        a.models().len(),
        1,
        "the cooldown must keep requests off 'a'"
    );
    assert_eq!(b.models().len(), 2);
}

#[tokio::test]
async fn every_target_failing_gives_the_degraded_answer_with_the_reasons() {
    let (a, b) = (Upstream::start().await, Upstream::start().await);
    a.script([Step::Stall, Step::Stall]);
    b.script([status(502, vec![]), status(502, vec![])]);
    let g = gateway(&two_providers(&a, &b), &[]);
    let Ok(Answer::Degraded(d)) = ask(&g, "chat", false).await else {
        panic!("expected the degraded answer");
    };
    assert!(d.reason.contains("a/first: timeout"), "{}", d.reason);
    assert!(d.reason.contains("b/second: server_error"), "{}", d.reason);
    let DegradedBody::Completion(body) = d.render() else {
        panic!("a 200 route answers a completion");
    };
    assert_eq!(body["degraded"], true);
}

#[tokio::test]
async fn names_no_route_serves_are_not_found() {
    let (a, b) = (Upstream::start().await, Upstream::start().await);
    let g = gateway(&two_providers(&a, &b), &[]);
    for name in ["gpt-4o", "a/not-listed", "nobody/x", "a/"] {
        assert!(
            matches!(ask(&g, name, false).await, Err(ChatError::NoRoute(_))),
            "{name} should have no route"
        );
    }
    // Listed, and any name on a provider that allows it, are served.
    assert!(matches!(
        ask(&g, "a/listed", false).await,
        Ok(Answer::Complete { .. })
    ));
    assert!(matches!(
        ask(&g, "b/anything", false).await,
        Ok(Answer::Complete { .. })
    ));
    assert_eq!(b.models(), ["anything"]);
    assert!(a.models().is_empty() || a.models() == ["listed"]);
}

#[tokio::test]
async fn a_stream_cut_midway_ends_with_an_error_event_and_done() {
    let (a, b) = (Upstream::start().await, Upstream::start().await);
    a.script([Step::Stream(vec![chunk("Hel"), chunk("lo")])]);
    let g = gateway(&two_providers(&a, &b), &[]);
    let Ok(Answer::Stream { mut body, served }) = ask(&g, "chat", true).await else {
        panic!("expected a stream");
    };
    assert_eq!(served.provider, "a");
    let mut text = String::new();
    while let Some(Ok(bytes)) = body.next().await {
        text.push_str(&String::from_utf8_lossy(&bytes));
    }
    assert!(
        text.contains("\"Hel\"") && text.contains("\"lo\""),
        "{text}"
    );
    assert!(text.contains("event: error"), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert!(
        b.models().is_empty(),
        "after the first byte there is no fallback"
    );
}

#[tokio::test]
async fn a_whole_stream_passes_through_once() {
    let (a, b) = (Upstream::start().await, Upstream::start().await);
    a.script([Step::Stream(vec![
        chunk("one"),
        chunk("two"),
        "[DONE]".into(),
    ])]);
    let g = gateway(&two_providers(&a, &b), &[]);
    let Ok(Answer::Stream { mut body, .. }) = ask(&g, "chat", true).await else {
        panic!("expected a stream");
    };
    let mut text = String::new();
    while let Some(Ok(bytes)) = body.next().await {
        text.push_str(&String::from_utf8_lossy(&bytes));
    }
    assert!(!text.contains("event: error"), "{text}");
    assert_eq!(text.matches("data: [DONE]").count(), 1, "{text}");
}

/// Series in the Prometheus text, comments aside.
fn series(text: &str) -> usize {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count()
}

#[test]
fn a_thousand_client_model_names_leave_state_and_metric_series_flat() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (a, b) = (Upstream::start().await, Upstream::start().await);
        // The newcomer's set-up: OPENAI_API_KEY alone gives the `*` route; 'b' forwards any
        // `b/...` name.
        let toml = format!(
            "[gateway.providers.b]\nkind = \"openai\"\nbase_url = \"{}/v1\"\nallow_any_model = true\n",
            b.base
        );
        let openai = format!("{}/v1", a.base);
        let g = gateway(&toml, &[("OPENAI_API_KEY", "k"), ("OPENAI_BASE_URL", &openai)]);
        let sizes_at_start = g.state_sizes();
        let mut after_twenty = None;
        for i in 0..1_000 {
            let model = if i % 2 == 0 {
                format!("m-{i}")
            } else {
                format!("b/m-{i}")
            };
            let answer = ask(&g, &model, false).await;
            assert!(matches!(answer, Ok(Answer::Complete { .. })), "request {i}");
            if i == 19 {
                after_twenty = Some((g.state_sizes(), series(&handle.render())));
            }
        }
        let (sizes_after_twenty, series_after_twenty) = after_twenty.unwrap();
        assert_eq!(g.state_sizes(), sizes_at_start, "circuits or cooldowns grew");
        assert_eq!(g.state_sizes(), sizes_after_twenty);
        assert_eq!(series(&handle.render()), series_after_twenty, "metric series grew");
        assert!(!handle.render().contains("m-99"), "a client's name became a label");
        assert_eq!(a.models().len() + b.models().len(), 1_000);

        // A provider's Retry-After on the `*` route holds the provider, whatever the name.
        a.script([status(429, vec![("retry-after", "60".into())])]);
        for i in 0..5 {
            let answer = ask(&g, &format!("other-{i}"), false).await;
            assert!(matches!(answer, Ok(Answer::Degraded(_))), "request {i}");
        }
        assert_eq!(g.state_sizes(), (sizes_at_start.0, 1));
        assert_eq!(a.models().len() + b.models().len(), 1_001, "held requests were sent");
    });
}
