"""Bounded queues and deadlines: overload is refused at once with 429 + Retry-After, late
requests get 504, and nothing is lost: every request is answered with an actionable status."""

import threading

import requests

from conftest import CLASSIFIER, MODELS

LONG = " ".join(["The pacing falters in the middle act, yet the lead performance holds it together."] * 12)


def flood(url, n, body, headers=None):
    statuses, lock = [], threading.Lock()

    def one():
        try:
            r = requests.post(url, json=body, headers=headers or {}, timeout=60)
            with lock:
                statuses.append((r.status_code, r.headers.get("retry-after"), r.json()))
        except requests.RequestException as e:
            with lock:
                statuses.append((f"error: {e}", None, None))

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return statuses


def test_full_queue_answers_429_with_retry_after(start_keel):
    k = start_keel({"MODELS": f"{CLASSIFIER}={MODELS / CLASSIFIER}", "MAX_QUEUE_REQUESTS": "2",
                    "MAX_BATCH_SIZE": "4"}).wait_ready()
    statuses = flood(k.url("/predict"), 24, {"inputs": [LONG] * 4})
    codes = [s[0] for s in statuses]
    assert set(codes) <= {200, 429}, codes
    assert codes.count(429) > 0 and codes.count(200) > 0, codes
    for code, retry_after, body in statuses:
        if code == 429:
            assert int(retry_after) >= 1 and body["error"]["code"] == "queue_full"
    # Afterwards it serves normally.
    assert requests.post(k.url("/predict"), json={"text": "fine"}).status_code == 200
    metrics = requests.get(k.url("/metrics")).text
    assert f'keel_rejected_requests_total{{model="{CLASSIFIER}",reason="queue_full"}}' in metrics


def test_passed_deadline_answers_504_and_is_counted(start_keel):
    k = start_keel({"MODELS": f"{CLASSIFIER}={MODELS / CLASSIFIER}", "MAX_BATCH_SIZE": "2"}).wait_ready()
    statuses = flood(k.url("/predict"), 8, {"inputs": [LONG] * 8}, headers={"x-request-timeout-ms": "50"})
    codes = [s[0] for s in statuses]
    assert codes.count(504) > 0 and set(codes) <= {200, 504}, codes
    assert all(s[2]["error"]["code"] == "deadline_exceeded" for s in statuses if s[0] == 504)
    metrics = requests.get(k.url("/metrics")).text
    assert f'keel_expired_requests_total{{model="{CLASSIFIER}",reason="deadline"}}' in metrics
    r = requests.post(k.url("/predict"), json={"text": "x"}, headers={"x-request-timeout-ms": "soon"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_header"


def test_requests_of_departed_clients_are_dropped(start_keel):
    k = start_keel({"MODELS": f"{CLASSIFIER}={MODELS / CLASSIFIER}", "MAX_BATCH_SIZE": "2"}).wait_ready()
    # Keep the worker busy, then send requests whose clients give up before their turn.
    busy = threading.Thread(target=lambda: requests.post(k.url("/predict"), json={"inputs": [LONG] * 16}, timeout=60))
    busy.start()
    for _ in range(6):
        try:
            requests.post(k.url("/predict"), json={"inputs": [LONG] * 2}, timeout=0.05)
        except requests.Timeout:
            pass
    busy.join(timeout=60)
    requests.post(k.url("/predict"), json={"text": "flush"}, timeout=30)
    metrics = requests.get(k.url("/metrics")).text
    line = next(l for l in metrics.splitlines() if l.startswith(f'keel_expired_requests_total{{model="{CLASSIFIER}",reason="client_left"}}'))
    assert float(line.split()[-1]) >= 1


def test_truncate_false_rejects_long_inputs_and_max_input_tokens_caps(start_keel):
    k = start_keel({"MODELS": f"{CLASSIFIER}={MODELS / CLASSIFIER}", "TRUNCATE": "false", "MAX_INPUT_TOKENS": "16"}).wait_ready()
    r = requests.post(k.url("/predict"), json={"text": "word " * 40})
    assert r.status_code == 422 and r.json()["error"]["code"] == "input_too_long"
    assert requests.post(k.url("/predict"), json={"text": "short and sweet"}).status_code == 200
    info = requests.get(k.url("/info")).json()
    assert info["models"][0]["max_input_tokens"] == 16
