"""Retries that respect rate limits, fallbacks, circuit breaking, concurrency limits, broken
streams and the degraded answer, against the scripted fake provider."""

import json
import threading
import time
import uuid

import httpx
import openai
import pytest

from conftest import MESSAGES, unique, wait_until


def upstream(model):
    return model.split("/", 1)[1]


def times(fake, model):
    return [r["t"] for r in fake.requests(model)]


def fresh(prefix):
    """A name of its own for a request id or a gate (not a model: those come from unique)."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_429_with_retry_after_seconds_is_waited_out(client, fake, gateway):
    model = unique("fake/ra")
    fake.script(upstream(model), {"status": 429, "retry_after": "1"})
    started = time.monotonic()
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=MESSAGES, extra_headers={"x-request-id": "req-ra-1"})
    assert raw.parse().choices[0].message.content
    assert time.monotonic() - started >= 1.0
    t = times(fake, upstream(model))
    assert len(t) == 2 and t[1] - t[0] >= 0.95
    assert raw.headers["x-keel-attempts"] == "2"
    [line] = gateway.gateway_log("req-ra-1")
    assert line["fields"]["rate_limited"] == 1
    assert line["fields"]["retry_after_wait_ms"] >= 900


def test_429_with_retry_after_as_http_date(client, fake):
    model = unique("fake/date")
    fake.script(upstream(model), {"status": 429, "retry_after_date": 2})
    client.chat.completions.create(model=model, messages=MESSAGES)
    t = times(fake, upstream(model))
    # An HTTP-date has whole seconds: two seconds from now is one to two seconds away.
    assert len(t) == 2 and t[1] - t[0] >= 0.95


def test_openai_rate_limit_reset_headers(client, fake):
    model = unique("fake/reset")
    fake.script(upstream(model), {"status": 429, "headers": {
        "x-ratelimit-reset-requests": "1.2s", "x-ratelimit-remaining-requests": "0"}})
    client.chat.completions.create(model=model, messages=MESSAGES)
    t = times(fake, upstream(model))
    assert len(t) == 2 and t[1] - t[0] >= 1.1


def test_server_errors_are_retried(client, fake):
    model = unique("fake/5xx")
    fake.script(upstream(model), {"status": 503}, {"status": 502})
    raw = client.chat.completions.with_raw_response.create(model=model, messages=MESSAGES)
    assert raw.parse().choices[0].message.content
    assert raw.headers["x-keel-attempts"] == "3"


def test_a_reset_connection_is_retried(client, fake):
    model = unique("fake/rst")
    fake.script(upstream(model), {"reset": True})
    raw = client.chat.completions.with_raw_response.create(model=model, messages=MESSAGES)
    assert raw.parse().choices[0].message.content
    assert len(fake.requests(upstream(model))) == 2


def test_failing_target_falls_back_to_the_next(client, fake):
    fake.script("fb-first", {"status": 500}, {"status": 500}, {"status": 500})
    raw = client.chat.completions.with_raw_response.create(model="fallback", messages=MESSAGES)
    assert raw.parse().choices[0].message.content
    assert raw.headers["x-keel-provider"] == "fake_b"
    assert raw.headers["x-keel-model"] == "fb-second"
    assert len(fake.requests("fb-first")) == 3


def test_malformed_json_goes_to_the_next_target(client, fake):
    fake.script("fb-first", {"malformed": True})
    raw = client.chat.completions.with_raw_response.create(model="fallback", messages=MESSAGES)
    assert raw.parse().choices[0].message.content
    assert raw.headers["x-keel-model"] == "fb-second"
    assert len(fake.requests("fb-first")) == 1


def test_malformed_json_on_the_only_target_is_degraded_not_500(http, fake):
    model = unique("fake/malformed")
    fake.script(upstream(model), {"malformed": True})
    r = http.post("/v1/chat/completions", json={"model": model, "messages": MESSAGES})
    assert r.status_code == 200 and r.headers["x-keel-degraded"] == "true"


def test_slow_headers_time_out_and_fall_back(client, fake):
    fake.script("slow-first", {"delay": 1.5})
    started = time.monotonic()
    raw = client.chat.completions.with_raw_response.create(model="slow", messages=MESSAGES)
    assert raw.headers["x-keel-model"] == "slow-second"
    assert time.monotonic() - started < 1.2


def test_a_connect_error_falls_back(client, fake):
    raw = client.chat.completions.with_raw_response.create(model="dead-first", messages=MESSAGES)
    assert raw.headers["x-keel-model"] == "after-dead"


def test_all_targets_failing_gives_the_degraded_answer(client, fake, gateway):
    fake.script("dg-first", *[{"status": 500}] * 2)
    fake.script("dg-second", *[{"status": 529}] * 2)
    raw = client.chat.completions.with_raw_response.create(
        model="degrade", messages=MESSAGES, extra_headers={"x-request-id": "req-dg-1"})
    assert raw.status_code == 200
    assert raw.headers["x-keel-degraded"] == "true"
    completion = raw.parse()
    assert completion.choices[0].message.content == "Keel is answering in degraded mode."
    assert completion.model_extra["degraded"] is True
    assert len(fake.requests("dg-first")) == 2 and len(fake.requests("dg-second")) == 2
    [line] = gateway.gateway_log("req-dg-1")
    assert line["fields"]["outcome"] == "degraded" and line["fields"]["attempts"] == 4


def test_degraded_answer_streams_when_asked(client, fake):
    fake.script("dg-first", *[{"status": 500}] * 2)
    fake.script("dg-second", *[{"status": 500}] * 2)
    chunks = list(client.chat.completions.create(model="degrade", messages=MESSAGES,
                                                 stream=True))
    assert chunks[0].choices[0].delta.content == "Keel is answering in degraded mode."
    assert chunks[0].model_extra["degraded"] is True


def test_degraded_answer_may_be_a_503(http, fake):
    fake.script("d503", {"status": 429, "retry_after": "30"})
    r = http.post("/v1/chat/completions", json={"model": "degrade503", "messages": MESSAGES})
    assert r.status_code == 503
    assert r.headers["x-keel-degraded"] == "true"
    assert int(r.headers["retry-after"]) >= 29
    assert r.json()["error"] == {"code": "upstream_unavailable", "message": "Try again soon."}
    assert r.json()["degraded"] is True


def sse_events(text):
    events = []
    for block in text.strip().split("\n\n"):
        name, data = None, []
        for line in block.splitlines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        if data:
            events.append((name, "\n".join(data)))
    return events


@pytest.mark.parametrize("provider", ["fake", "claude"])
def test_a_stream_cut_midway_ends_with_an_error_event_and_done(http, client, fake, provider):
    model = unique(f"{provider}/cut")
    # The delay lets the first events reach the client before the cut: a cut before any
    # byte reached the client may legitimately be retried.
    fake.script(upstream(model), {"cut_after": 4, "chunk_delay": 0.05})
    r = http.post("/v1/chat/completions",
                  json={"model": model, "messages": MESSAGES, "stream": True})
    assert r.status_code == 200
    events = sse_events(r.text)
    assert events[-1] == (None, "[DONE]")
    name, data = events[-2]
    assert name == "error"
    assert json.loads(data)["error"]["code"] == "upstream_stream_cut"
    contents = [json.loads(d)["choices"][0]["delta"].get("content") for n, d in events[:-2]]
    assert any(contents)
    # No fallback after the first byte: the upstream saw one request.
    assert len(fake.requests(upstream(model))) == 1

    fake.script(upstream(model), {"cut_after": 4})
    received = []
    with pytest.raises(openai.APIError, match="closed the stream|broke"):
        for chunk in client.chat.completions.create(model=model, messages=MESSAGES,
                                                    stream=True):
            received.append(chunk)
    assert received


def test_a_malformed_event_midway_ends_the_stream_with_an_error(http, fake):
    model = unique("fake/badevent")
    fake.script(upstream(model), {"malformed": True})
    r = http.post("/v1/chat/completions",
                  json={"model": model, "messages": MESSAGES, "stream": True})
    events = sse_events(r.text)
    assert events[-1] == (None, "[DONE]")
    assert events[-2][0] == "error"
    assert json.loads(events[-2][1])["error"]["code"] == "upstream_malformed"


@pytest.mark.parametrize("provider", ["fake", "claude"])
def test_an_upstream_error_event_is_passed_on_or_retried(http, fake, provider):
    model = unique(f"{provider}/errev")
    # Before the first byte: retried. Midway: the client's stream ends with the error.
    fake.script(upstream(model), {"error_after": 0}, {"error_after": 3})
    r = http.post("/v1/chat/completions",
                  json={"model": model, "messages": MESSAGES, "stream": True})
    events = sse_events(r.text)
    assert events[-1] == (None, "[DONE]")
    assert events[-2][0] == "error"
    error = json.loads(events[-2][1])["error"]
    assert error["message"] == "fake overloaded"
    assert error["code"] == ("overloaded_error" if provider == "claude" else "overloaded")
    assert len(fake.requests(upstream(model))) == 2


def test_a_stream_that_fails_before_its_first_byte_is_retried(client, fake):
    model = unique("fake/cut0")
    fake.script(upstream(model), {"cut_after": 0}, {"status": 503})
    chunks = list(client.chat.completions.create(model=model, messages=MESSAGES, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks)
    assert len(fake.requests(upstream(model))) == 3


def test_a_cooldown_is_shared_across_requests(client, fake, gateway):
    model = unique("fake/cool")
    first_id = fresh("req-cool")
    fake.script(upstream(model), {"status": 429, "retry_after": "2"})
    results = []

    def first():
        results.append(client.chat.completions.create(
            model=model, messages=MESSAGES, extra_headers={"x-request-id": first_id}))

    t = threading.Thread(target=first)
    t.start()
    # The gateway logs the failed attempt after it has recorded the provider's T.
    [failed] = wait_until(lambda: gateway.lines("upstream attempt failed", first_id),
                          what="the gateway to take in the 429")
    assert failed["failure"] == "rate_limited"
    second_sent = time.time()
    second = client.chat.completions.create(model=model, messages=MESSAGES)
    t.join(timeout=15)
    assert second.choices[0].message.content and results
    t = times(fake, upstream(model))
    assert len(t) == 3
    # The second client asked before T, so the cooldown had something to hold back.
    assert second_sent < t[0] + 1.9
    # Neither the retry nor the second client's request reached the provider before T.
    assert t[1] - t[0] >= 1.9 and t[2] - t[0] >= 1.9


def test_the_circuit_opens_then_a_probe_closes_it(http, fake):
    fake.script("cb-model", *[{"status": 500}] * 5)
    body = {"model": "circuit", "messages": MESSAGES}
    for _ in range(5):
        assert http.post("/v1/chat/completions", json=body).headers["x-keel-degraded"] == "true"
    assert len(fake.requests("cb-model")) == 5
    # Open: answered degraded without calling the provider.
    started = time.monotonic()
    r = http.post("/v1/chat/completions", json=body)
    assert r.headers["x-keel-degraded"] == "true"
    assert "circuit open" in r.json()["degraded_reason"]
    assert time.monotonic() - started < 0.5
    assert len(fake.requests("cb-model")) == 5

    def probe():
        # Until open_ms (1.5 s) is up every request is refused without calling the provider;
        # the first one after is the half-open probe.
        r = http.post("/v1/chat/completions", json=body)
        if r.headers.get("x-keel-degraded") == "true":
            assert "circuit open" in r.json()["degraded_reason"]
            assert len(fake.requests("cb-model")) == 5
            return None
        return r

    r = wait_until(probe, interval=0.05, what="the circuit to let a probe through")
    # The probe's success closes the circuit.
    assert r.status_code == 200
    t = times(fake, "cb-model")
    # The circuit opened after the provider answered the fifth request (logged on arrival),
    # and stayed open for open_ms.
    assert len(t) == 6 and t[5] - t[4] >= 1.5, t
    r = http.post("/v1/chat/completions", json=body)
    assert "x-keel-degraded" not in r.headers
    assert len(fake.requests("cb-model")) == 7


def test_the_concurrency_limit_queues_briefly(client, fake):
    model = unique("narrow/q")
    fake.script(upstream(model), {"delay": 0.5}, {"delay": 0.5})
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(
        client.chat.completions.create(model=model, messages=MESSAGES))) for _ in range(2)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=15)
    assert len(answers) == 2
    assert fake.max_in_flight(upstream(model)) == 1
    assert time.monotonic() - started >= 0.95


def test_past_the_queue_timeout_the_next_target_or_degraded(http, fake):
    model = unique("narrow_short/q")
    # The first request holds the provider's only slot until the test lets it answer.
    gate = fresh("gate")
    fake.script(upstream(model), {"wait_for": gate})
    degraded = []

    def send():
        r = http.post("/v1/chat/completions", json={"model": model, "messages": MESSAGES})
        degraded.append(r.headers.get("x-keel-degraded", "false"))

    first = threading.Thread(target=send)
    first.start()
    try:
        wait_until(lambda: fake.requests(upstream(model)),
                   what="the first request to reach the provider")
        # The second waits for the slot past its queue timeout (100 ms): degraded.
        send()
        assert degraded == ["true"]
    finally:
        fake.open(gate)
        first.join(timeout=15)
    assert degraded == ["true", "false"]
    assert len(fake.requests(upstream(model))) == 1


def test_a_client_that_leaves_stops_the_retries(gateway, fake):
    model = unique("fake/gone")
    request_id = fresh("req-gone")
    fake.script(upstream(model), {"status": 429, "retry_after": "2"})
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(gateway.url + "/v1/chat/completions", timeout=0.5,
                   headers={"x-request-id": request_id},
                   json={"model": model, "messages": MESSAGES})
    # A request is logged once, when it ends. Had the gateway kept going after the client
    # left, it would have retried after T (2 s) and ended "ok"; it ended when the client left,
    # and with it went every attempt it could still have made.
    [line] = wait_until(lambda: gateway.gateway_log(request_id),
                        what="the gateway to log the request's end")
    assert line["fields"]["outcome"] == "client_disconnected", line
    assert len(fake.requests(upstream(model))) == 1
