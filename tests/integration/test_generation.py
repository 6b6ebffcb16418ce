"""Local generation on the real default GGUF (SmolLM2-135M-Instruct Q4_1), through the
official OpenAI Python SDK and raw HTTP: answers, streaming, usage, parity with llama.cpp's
own greedy output, cancellation, admission, bad input and a broken model file."""

import json
import socket
import time

import openai
import pytest
import requests

from conftest import MODELS, load_fixture, metric_value, wait_until

GGUF = MODELS / "SmolLM2-135M-Instruct.Q4_1.gguf"
LLM = "smollm2"
QUESTION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]


@pytest.fixture(scope="module")
def llm(request):
    from conftest import Keel

    k = Keel({"MODELS": f"{LLM}={GGUF}", "LLM_SLOTS": "4", "LLM_CONTEXT": "1024"}).wait_ready()
    yield k
    assert k.stop() == 0


@pytest.fixture(scope="module")
def client(llm):
    return openai.OpenAI(base_url=llm.url("/v1"), api_key="unused", max_retries=0, timeout=60)


def test_the_sdk_gets_an_answer_that_names_paris(client):
    r = client.chat.completions.create(model=LLM, messages=QUESTION, temperature=0, max_tokens=32)
    answer = r.choices[0].message.content
    assert "Paris" in answer, answer
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 10 and 0 < r.usage.completion_tokens <= 32
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.model == LLM and r.object == "chat.completion"


def test_streaming_gives_the_same_text_and_usage_last(client):
    whole = client.chat.completions.create(model=LLM, messages=QUESTION, temperature=0, max_tokens=24)
    stream = client.chat.completions.create(
        model=LLM, messages=QUESTION, temperature=0, max_tokens=24, stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_greedy_completions_equal_llama_cpps_own_output(client):
    """The fixture was made by llama.cpp's llama-server (same vendored source, same GGUF):
    64 greedy tokens per prompt. Keel must produce the same text."""
    fixture = load_fixture("llm_greedy.json")
    assert len(fixture["cases"]) >= 4
    for case in fixture["cases"]:
        r = client.completions.create(
            model=LLM, prompt=case["prompt"], temperature=0, max_tokens=fixture["n_predict"],
        )
        assert r.usage.prompt_tokens == len(case["prompt_token_ids"]), case["name"]
        assert r.choices[0].text == case["completion_text"], case["name"]
        # llama.cpp counts the end-of-generation token it stopped at; Keel does not send it.
        expected = len(case["completion_token_ids"]) - (case["stop_type"] == "eos")
        assert r.usage.completion_tokens == expected, case["name"]


def test_sampling_parameters_are_honoured(client):
    base = dict(model=LLM, prompt="Once upon a time", max_tokens=16)
    a = client.completions.create(**base, temperature=0.9, seed=42)
    b = client.completions.create(**base, temperature=0.9, seed=42)
    assert a.choices[0].text == b.choices[0].text
    # A stop string ends the answer and is never sent.
    full = client.completions.create(**base, temperature=0, extra_body={"ignore_eos": True})
    word = full.choices[0].text.split()[1]
    cut = client.completions.create(**base, temperature=0, stop=[word], extra_body={"ignore_eos": True})
    assert cut.choices[0].finish_reason == "stop"
    assert word not in cut.choices[0].text and full.choices[0].text.startswith(cut.choices[0].text)
    length = client.completions.create(**{**base, "max_tokens": 3}, temperature=0,
                                       extra_body={"ignore_eos": True})
    assert (length.choices[0].finish_reason, length.usage.completion_tokens) == ("length", 3)
    # logit_bias: the reference's first greedy token for the fox prompt, banned then forced.
    fox = next(c for c in load_fixture("llm_greedy.json")["cases"] if c["name"] == "fox")
    first = fox["completion_token_ids"][0]
    plain = fox["completion_text"].split()[0]
    banned = client.completions.create(model=LLM, prompt=fox["prompt"], max_tokens=2, temperature=0,
                                       logit_bias={str(first): -100})
    assert not banned.choices[0].text.split()[0] == plain
    forced = client.completions.create(model=LLM, prompt="Hello", max_tokens=2, temperature=0,
                                       logit_bias={str(first): 100}, extra_body={"ignore_eos": True})
    assert forced.choices[0].text.split()[0] == plain


def test_models_and_info_list_the_local_model(llm):
    models = requests.get(llm.url("/v1/models"), timeout=5).json()["data"]
    entry = next(m for m in models if m["id"] == LLM)
    assert entry["task"] == "text-generation" and entry["state"] == "ready"
    info = next(m for m in requests.get(llm.url("/info"), timeout=5).json()["models"] if m["name"] == LLM)
    engine = info["engine"]
    assert engine["quantization"] == "Q4_1" and engine["slots"] == 4
    assert engine["context_per_request"] == 1024 and engine["threads"] >= 1


@pytest.mark.parametrize(
    "body, field",
    [
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "messages"),
        ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "hi"}], "temperature": 5}, "temperature"),
        ({"messages": [{"role": "user", "content": "hi"}], "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, "n"),
    ],
)
def test_bad_chat_fields_are_422_naming_the_field(llm, body, field):
    r = requests.post(llm.url("/v1/chat/completions"), json={"model": LLM, **body}, timeout=10)
    assert r.status_code == 422, r.text
    assert field in r.json()["error"]["message"]


def test_a_prompt_longer_than_the_context_is_422(llm):
    long = "alpha beta gamma delta " * 400
    r = requests.post(llm.url("/v1/completions"), json={"model": LLM, "prompt": long}, timeout=30)
    assert r.status_code == 422 and r.json()["error"]["code"] == "prompt_too_long", r.text
    r = requests.post(llm.url("/v1/chat/completions"),
                      json={"model": LLM, "messages": [{"role": "user", "content": long}]}, timeout=30)
    assert r.status_code == 422 and "context" in r.json()["error"]["message"], r.text
    # Other requests are unaffected.
    ok = requests.post(llm.url("/v1/completions"), json={"model": LLM, "prompt": "Hi", "max_tokens": 2}, timeout=30)
    assert ok.status_code == 200


def test_unknown_models_are_404(llm):
    r = requests.post(llm.url("/v1/completions"), json={"model": "nope", "prompt": "x"}, timeout=5)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = requests.post(llm.url("/v1/chat/completions"),
                      json={"model": "nope", "messages": [{"role": "user", "content": "x"}]}, timeout=5)
    assert r.status_code == 404


def test_a_passed_deadline_is_504(llm):
    r = requests.post(
        llm.url("/v1/completions"),
        json={"model": LLM, "prompt": "Tell me a long story.", "max_tokens": 900, "ignore_eos": True},
        headers={"X-Request-Timeout-Ms": "300"},
        timeout=60,
    )
    assert r.status_code == 504 and r.json()["error"]["code"] == "deadline_exceeded", r.text


def _open_stream(keel, prompt, max_tokens):
    """Starts a streamed completion on a raw socket and returns it once the first event came."""
    body = json.dumps({"model": LLM, "prompt": prompt, "max_tokens": max_tokens,
                       "ignore_eos": True, "stream": True}).encode()
    s = socket.create_connection(("127.0.0.1", keel.port), timeout=60)
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    got = b""
    while b"data: " not in got:
        chunk = s.recv(4096)
        assert chunk, got
        got += chunk
    assert got.startswith(b"HTTP/1.1 200"), got
    return s


def _metric(keel, name, **labels):
    text = requests.get(keel.url("/metrics"), timeout=5).text
    return metric_value(text, name, **labels) or 0.0


def test_a_client_that_leaves_frees_its_slot_and_a_full_queue_is_429(start_keel):
    keel = start_keel({"MODELS": f"{LLM}={GGUF}", "LLM_SLOTS": "1", "LLM_MAX_WAITING": "1",
                       "LLM_CONTEXT": "2048"}).wait_ready()
    running = _open_stream(keel, "Write a long essay about the sea.", 1500)
    # The only slot is busy; one request may wait, the next is refused.
    waiting = socket.create_connection(("127.0.0.1", keel.port), timeout=60)
    body = json.dumps({"model": LLM, "prompt": "Say hi.", "max_tokens": 4}).encode()
    waiting.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
    wait_until(lambda: _metric(keel, "keel_llm_waiting_requests", model=LLM) == 1, what="one waiting request")
    refused = requests.post(keel.url("/v1/completions"), json={"model": LLM, "prompt": "x"}, timeout=10)
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "model_busy" and int(refused.headers["Retry-After"]) >= 1
    # The streaming client leaves: its slot is freed and the waiting request is answered,
    # long before the 1500 tokens the first one asked for.
    running.close()
    wait_until(lambda: _metric(keel, "keel_llm_requests_total", model=LLM, outcome="cancelled") == 1,
               what="the cancelled request to be counted")
    waiting.settimeout(60)
    answer = b""
    while True:
        chunk = waiting.recv(65536)
        if not chunk:
            break
        answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert b'"text_completion"' in answer
    line = keel.wait_log(lambda e: e.get("message") == "generation" and e.get("finish_reason") == "cancelled")
    assert line["slot"] == 0 and line["completion_tokens"] < 1500


def test_the_generation_log_line_and_metrics(llm, client):
    client.chat.completions.create(model=LLM, messages=QUESTION, temperature=0, max_tokens=8,
                                   extra_headers={"x-request-id": "gen-log-1"})
    line = llm.wait_log(lambda e: e.get("message") == "generation" and e.get("request_id") == "gen-log-1")
    for field in ("prompt_tokens", "completion_tokens", "ttft_ms", "tokens_per_s", "finish_reason",
                  "slot", "prefix_tokens_reused"):
        assert field in line, (field, line)
    # The same prompt again: the slot's cache already holds all of it but the last token.
    client.chat.completions.create(model=LLM, messages=QUESTION, temperature=0, max_tokens=8,
                                   extra_headers={"x-request-id": "gen-log-2"})
    again = llm.wait_log(lambda e: e.get("message") == "generation" and e.get("request_id") == "gen-log-2")
    assert again["prefix_tokens_reused"] == again["prompt_tokens"] - 1
    text = requests.get(llm.url("/metrics"), timeout=5).text
    for name in ("keel_llm_time_to_first_token_seconds_count", "keel_llm_generated_tokens_total",
                 "keel_llm_prompt_tokens_total", "keel_llm_slots_in_use", "keel_llm_kv_cache_tokens",
                 "keel_llm_waiting_requests", "keel_llm_tokens_per_second"):
        assert metric_value(text, name, model=LLM) is not None, name


def test_a_corrupt_gguf_leaves_health_up_and_ready_failed(start_keel, tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(GGUF.read_bytes()[: 10_000_000])
    keel = start_keel({"MODELS": f"broken={broken}"}).wait_listening()
    body = keel.wait_status("failed")
    assert "broken" in body["models"] and body["models"]["broken"]["state"] == "failed"
    assert body["models"]["broken"]["reason"]
    assert requests.get(keel.url("/health"), timeout=5).status_code == 200
    assert requests.get(keel.url("/ready"), timeout=5).status_code == 503
    r = requests.post(keel.url("/v1/completions"), json={"model": "broken", "prompt": "x"}, timeout=5)
    assert r.status_code == 503
