"""Answers through OpenAI- and Anthropic-shaped providers, streaming and not, driven by the
official OpenAI SDK; request ids, credentials, bad bodies, client errors and metrics."""

import json

import openai
import pytest

from conftest import MESSAGES, unique


def test_openai_shaped_answer_and_request_id(client, fake, gateway):
    model = unique("fake/plain")
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=MESSAGES, extra_headers={"x-request-id": "req-basic-1"})
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello from the fake provider"
    assert completion.usage.prompt_tokens == 5
    assert raw.headers["x-request-id"] == "req-basic-1"
    assert raw.headers["x-keel-provider"] == "fake"
    [seen] = fake.requests(model.split("/", 1)[1])
    assert seen["headers"]["x-request-id"] == "req-basic-1"
    assert seen["headers"]["authorization"] == "Bearer sk-fake-key"
    assert seen["body"]["messages"] == MESSAGES
    [line] = gateway.gateway_log("req-basic-1")
    fields = line["fields"]
    assert fields["outcome"] == "success" and fields["attempts"] == 1
    assert fields["prompt_tokens"] == 5 and fields["completion_tokens"] == 5
    assert fields["upstream_ms"] > 0
    [call] = [l for l in gateway.log_lines() if l.get("message") == "upstream call" and l.get("request_id") == "req-basic-1"]
    assert call["provider"] == "fake" and call["status"] == 200 and call["attempt"] == 1 and call["latency_ms"] > 0
    # The provider key reached the provider, never the log.
    assert all("sk-fake-key" not in str(l) for l in gateway.log_lines())


def test_a_request_id_is_made_when_absent(http, fake):
    model = unique("fake/rid")
    r = http.post("/v1/chat/completions", json={"model": model, "messages": MESSAGES})
    assert r.status_code == 200
    [seen] = fake.requests(model.split("/", 1)[1])
    assert seen["headers"]["x-request-id"] == r.headers["x-request-id"]
    assert len(r.headers["x-request-id"]) == 36


def test_anthropic_shaped_answer(client, fake):
    model = unique("claude/plain")
    completion = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=64,
                                                stop="END")
    assert completion.choices[0].message.content == "Hello from the fake provider"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.completion_tokens == 5
    [seen] = fake.requests(model.split("/", 1)[1])
    assert seen["path"] == "/v1/messages"
    assert seen["headers"]["x-api-key"] == "ak-fake-key"
    assert seen["headers"]["anthropic-version"] == "2023-06-01"
    assert seen["body"]["system"] == "Be brief."
    assert seen["body"]["messages"] == [{"role": "user", "content": "Hello?"}]
    assert seen["body"]["max_tokens"] == 64
    assert seen["body"]["stop_sequences"] == ["END"]


@pytest.mark.parametrize("provider", ["fake", "claude"])
def test_streaming_answer(client, fake, provider):
    model = unique(f"{provider}/stream")
    chunks = list(client.chat.completions.create(model=model, messages=MESSAGES, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from the fake provider "
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    # The gateway asked for usage to count tokens, but the client did not: no usage chunk.
    assert all(c.choices for c in chunks)


@pytest.mark.parametrize("provider", ["fake", "claude"])
def test_streaming_usage_when_asked(client, fake, provider):
    model = unique(f"{provider}/usage")
    chunks = list(client.chat.completions.create(
        model=model, messages=MESSAGES, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == []
    assert chunks[-1].usage.prompt_tokens == 5
    assert chunks[-1].usage.completion_tokens == 5


def test_client_errors_are_passed_on_and_not_retried(client, fake):
    model = unique("fake/bad")
    fake.script(model.split("/", 1)[1], {"status": 400})
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=model, messages=MESSAGES)
    assert e.value.status_code == 400
    assert e.value.body["code"] == "invalid_request_error"
    assert "fake upstream error 400" in e.value.body["message"]
    assert len(fake.requests(model.split("/", 1)[1])) == 1

    model = unique("claude/bad")
    fake.script(model.split("/", 1)[1], {"status": 404})
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model=model, messages=MESSAGES)
    assert e.value.body["code"] == "api_error"
    assert len(fake.requests(model.split("/", 1)[1])) == 1


def test_bad_bodies_get_keels_statuses(http):
    def post(content, content_type="application/json"):
        return http.post("/v1/chat/completions", content=content,
                         headers={"content-type": content_type})

    r = post(b"{}", "text/plain")
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
    r = post(b'{"model": ')
    assert r.status_code == 400 and r.json()["error"]["code"] == "malformed_json"
    r = post(json.dumps({"model": "fake/x"}).encode())
    assert r.status_code == 422 and "messages" in r.json()["error"]["message"]
    # OpenAI's answer to a model it does not serve; `provider/model` only for listed models.
    for name in ["no-such-route", "fake/not-listed", "nobody/x"]:
        r = post(json.dumps({"model": name, "messages": MESSAGES}).encode())
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found", name
    r = post(json.dumps({"model": "claude/priced", "messages": [{"role": "tool", "content": "x"}]})
             .encode())
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"


def test_metrics_are_counted(client, fake, http):
    fake.script("priced", {"text": "one two"})
    client.chat.completions.create(model="fake/priced", messages=MESSAGES)
    text = http.get("/metrics").text
    for name in ["keel_gateway_requests_total", "keel_gateway_upstream_attempts_total",
                 "keel_gateway_prompt_tokens_total", "keel_gateway_upstream_duration_seconds"]:
        assert name in text, name
    # 5 prompt tokens at $1/token plus 2 completion tokens at $2/token: $9.
    cost = [l for l in text.splitlines()
            if l.startswith("keel_gateway_cost_microdollars_total") and 'model="priced"' in l]
    assert cost and float(cost[0].split()[-1]) >= 9_000_000
