"""The local model as the gateway's last line of defence: a route whose upstream targets all
fail is answered by Keel's own GGUF model, marked degraded; the fixed message stays the last
resort when the local model cannot take the request."""

import json
import time

import httpx
import openai
import pytest

from conftest import CONFIG, MESSAGES, ROOT, start_gateway, stop

GGUF = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"

ROUTES = """
[gateway.routes.guarded]
targets = ["fake/lf-first", "dead/x", "local/smol"]
max_attempts = 2

[gateway.routes.local-first]
targets = ["local/smol"]
"""


@pytest.fixture(scope="module")
def local_gateway(fake_server, tmp_path_factory):
    proc, gw = start_gateway(
        fake_server, tmp_path_factory.mktemp("local-gateway"),
        extra_env={"MODELS": f"smol={GGUF}", "LLM_SLOTS": "1", "LLM_MAX_WAITING": "0"},
        config_text=CONFIG + ROUTES,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if httpx.get(gw.url + "/ready", timeout=5).status_code == 200:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the local model did not load")
    yield gw
    stop(proc)


@pytest.fixture
def local_client(local_gateway):
    with openai.OpenAI(base_url=local_gateway.url + "/v1", api_key="unused", max_retries=0,
                       timeout=60) as c:
        yield c


def test_every_upstream_down_gives_a_local_answer_marked_degraded(local_client, fake, local_gateway):
    fake.script("lf-first", *[{"status": 500}] * 2)
    raw = local_client.chat.completions.with_raw_response.create(
        model="guarded", messages=MESSAGES, temperature=0, max_tokens=12,
        extra_headers={"x-request-id": "lf-1"})
    assert raw.status_code == 200
    assert raw.headers["x-keel-degraded"] == "true" and raw.headers["x-keel-provider"] == "local"
    completion = raw.parse()
    assert completion.model_extra["degraded"] is True
    # A real generated answer, not the fixed message.
    assert completion.choices[0].message.content
    assert completion.choices[0].message.content != "Keel is answering in degraded mode."
    assert completion.usage.completion_tokens > 0
    assert len(fake.requests("lf-first")) == 2


def test_the_degraded_stream_starts_within_a_second_of_the_last_failure(local_gateway, fake):
    fake.script("lf-first", *[{"status": 503}] * 2)
    body = {"model": "guarded", "messages": MESSAGES, "stream": True, "max_tokens": 16,
            "temperature": 0}
    with httpx.Client(timeout=30) as http:
        with http.stream("POST", local_gateway.url + "/v1/chat/completions", json=body,
                         headers={"x-request-id": "lf-stream"}) as r:
            assert r.status_code == 200 and r.headers["x-keel-degraded"] == "true"
            events, first_at = [], None
            for line in r.iter_lines():
                if line.startswith("data: "):
                    first_at = first_at or time.time()
                    events.append(line[6:])
    # The last upstream failure is the dead provider's refused connection, logged by Keel.
    failures = [line for line in local_gateway.lines("upstream attempt failed", "lf-stream")]
    assert failures, "the upstream failures were not logged"
    last_failure = max(_timestamp(line) for line in failures)
    assert first_at - last_failure < 1.0, (first_at, last_failure)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["degraded"] is True for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text.strip(), chunks


def test_a_saturated_local_model_leaves_the_fixed_message(local_gateway, fake):
    fake.script("lf-first", *[{"status": 500}] * 4)
    # One slot, no waiting room: a long local generation holds it.
    hold = {"model": "local-first", "messages": MESSAGES, "stream": True, "max_tokens": 1500,
            "ignore_eos": True}
    with httpx.Client(timeout=60) as http:
        with http.stream("POST", local_gateway.url + "/v1/chat/completions", json=hold) as held:
            assert held.status_code == 200 and "x-keel-degraded" not in held.headers
            # Kept referenced: closing httpx's line iterator would close the response.
            lines = held.iter_lines()
            next(line for line in lines if line.startswith("data: "))
            # The only local model is busy: alone on its route, that is a 429...
            busy = http.post(local_gateway.url + "/v1/chat/completions",
                             json={"model": "local-first", "messages": MESSAGES})
            assert busy.status_code == 429 and int(busy.headers["retry-after"]) >= 1
            # ...and behind failed upstreams, the route's fixed degraded message.
            r = http.post(local_gateway.url + "/v1/chat/completions",
                          json={"model": "guarded", "messages": MESSAGES})
            assert r.status_code == 200 and r.headers["x-keel-degraded"] == "true"
            assert r.json()["choices"][0]["message"]["content"] == "Keel is answering in degraded mode."
            assert "local/smol" in r.json()["degraded_reason"]


def _timestamp(line):
    from datetime import datetime
    return datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00")).timestamp()
