"""Per-key limits: requests and tokens per minute, in memory and shared through a real Redis
(Debian's redis-server, started here), with fail-open and fail-closed when Redis goes away."""

import socket
import subprocess
import time

import pytest
import requests

from conftest import CLASSIFIER, EMBED_MODEL, MODELS, Keel, keel_bin

KEY_A, KEY_B = "sk-limit-a", "sk-limit-b"
ONE_MODEL = {"MODELS": f"{CLASSIFIER}={MODELS / CLASSIFIER}"}
BOTH_MODELS = {"MODELS": f"{EMBED_MODEL}={MODELS / EMBED_MODEL},{CLASSIFIER}={MODELS / CLASSIFIER}"}


def auth(key):
    return {"authorization": f"Bearer {key}"}


def hash_key(key):
    return subprocess.run([keel_bin(), "hash-key"], input=key, capture_output=True, text=True, check=True).stdout.strip()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Redis:
    """A throwaway redis-server on loopback that can be stopped and started on its port."""

    def __init__(self):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def redis():
    r = Redis()
    yield r
    r.stop()


def predict(keel, key):
    return requests.post(keel.url("/predict"), json={"text": "a fine film"}, headers=auth(key), timeout=10)


def test_each_key_gets_its_own_requests_per_minute(start_keel, tmp_path):
    keys = tmp_path / "keys.txt"
    # Key B has a limit of its own in the key file; key A gets the default.
    keys.write_text(f"{hash_key(KEY_B)} batch-jobs rpm=2\n")
    keel = start_keel({**ONE_MODEL, "KEEL_API_KEYS": KEY_A, "KEEL_API_KEYS_FILE": str(keys), "RATE_LIMIT_RPM": "4"}).wait_ready()
    remaining = []
    for _ in range(4):
        r = predict(keel, KEY_A)
        assert r.status_code == 200
        assert r.headers["x-ratelimit-limit-requests"] == "4"
        remaining.append(int(r.headers["x-ratelimit-remaining-requests"]))
    assert remaining == [3, 2, 1, 0]
    refused = predict(keel, KEY_A)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limited"
    # One request frees up every 15 s.
    assert 14 <= int(refused.headers["retry-after"]) <= 15
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert KEY_A not in refused.text
    # Key B is limited on its own, at its own rate.
    assert [predict(keel, KEY_B).status_code for _ in range(3)] == [200, 200, 429]
    # Probes are never limited; the metric counts the refusals.
    assert all(requests.get(keel.url(p)).status_code == 200 for p in ["/health", "/ready"] * 3)
    metrics = requests.get(keel.url("/metrics")).text
    assert 'keel_rate_limited_requests_total{limit="requests"} 2' in metrics


def test_tokens_per_minute_are_charged_as_used(start_keel):
    keel = start_keel({**BOTH_MODELS, "RATE_LIMIT_TPM": "60"}).wait_ready()
    # Without API keys every client is one anonymous caller.
    long_text = "word " * 100  # about 100 tokens: more than the minute's 60, allowed once
    r = requests.post(keel.url("/v1/embeddings"), json={"model": EMBED_MODEL, "input": long_text})
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] > 60
    assert r.headers["x-ratelimit-remaining-tokens"] == "60"
    deadline = time.monotonic() + 5
    while True:
        r = requests.post(keel.url("/predict"), json={"text": "short"})
        if r.status_code == 429:
            break
        assert time.monotonic() < deadline, "the token debt never blocked a request"
        time.sleep(0.05)
    assert r.json()["error"]["code"] == "rate_limited" and "tokens per minute" in r.json()["error"]["message"]
    assert int(r.headers["retry-after"]) >= 30


def test_replicas_share_limits_through_redis(start_keel, redis):
    env = {**ONE_MODEL, "KEEL_API_KEYS": f"{KEY_A},{KEY_B}", "RATE_LIMIT_RPM": "6", "REDIS_URL": redis.url}
    replicas = [start_keel(env), start_keel(env)]
    for k in replicas:
        k.wait_ready()
        assert requests.get(k.url("/ready")).json()["rate_limit_store"] == "redis: reachable"
    statuses = [predict(replicas[i % 2], KEY_A).status_code for i in range(8)]
    assert statuses == [200] * 6 + [429, 429]
    # The other key's budget is untouched on both replicas.
    assert predict(replicas[1], KEY_B).status_code == 200


def test_redis_down_fails_closed_then_recovers(start_keel, redis):
    keel = start_keel({**ONE_MODEL, "RATE_LIMIT_RPM": "1000", "REDIS_URL": redis.url, "RATE_LIMIT_FAILURE": "closed"}).wait_ready()
    assert requests.post(keel.url("/predict"), json={"text": "ok"}).status_code == 200
    redis.stop()
    body = keel.wait_status("rate_limit_store_unreachable", timeout=10)
    assert "failing closed" in body["rate_limit_store"]
    assert requests.get(keel.url("/ready")).status_code == 503
    r = requests.post(keel.url("/predict"), json={"text": "ok"})
    assert r.status_code == 503 and r.json()["error"]["code"] == "rate_limit_unavailable"
    assert r.headers["retry-after"] == "1"
    assert requests.get(keel.url("/health")).status_code == 200
    keel.wait_log(lambda e: e.get("message") == "rate-limit store (Redis) unreachable")
    redis.start()
    keel.wait_status("ready", timeout=10)
    assert requests.post(keel.url("/predict"), json={"text": "ok"}).status_code == 200


def test_redis_down_fails_open_and_says_so(start_keel, redis):
    keel = start_keel({**ONE_MODEL, "RATE_LIMIT_RPM": "1000", "REDIS_URL": redis.url}).wait_ready()
    redis.stop()
    deadline = time.monotonic() + 10
    while "unreachable" not in requests.get(keel.url("/ready")).json()["rate_limit_store"]:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    ready = requests.get(keel.url("/ready"))
    assert ready.status_code == 200 and "failing open" in ready.json()["rate_limit_store"]
    for _ in range(5):
        r = requests.post(keel.url("/predict"), json={"text": "ok"})
        assert r.status_code == 200 and "x-ratelimit-remaining-requests" not in r.headers
    keel.wait_log(lambda e: e.get("message") == "rate-limit store (Redis) unreachable")
    warnings = [e for e in keel.logs if e.get("message") == "rate-limit store (Redis) unreachable"]
    assert len(warnings) == 1, "the outage is logged once, not per request"


def test_limit_settings_are_validated(tmp_path):
    bad = [
        ({"RATE_LIMIT_RPM": "-3"}, "RATE_LIMIT_RPM"),
        ({"RATE_LIMIT_TPM": "lots"}, "RATE_LIMIT_TPM"),
        ({"BUDGET_USD_PER_DAY": "nan"}, "BUDGET_USD_PER_DAY"),
        ({"RATE_LIMIT_FAILURE": "maybe"}, "RATE_LIMIT_FAILURE"),
        ({"REDIS_URL": "http://user:hunter2@example/"}, "REDIS_URL"),
    ]
    keys = tmp_path / "keys.txt"
    keys.write_text(f"{hash_key(KEY_A)} rpm=many\n")
    bad.append(({"KEEL_API_KEYS_FILE": str(keys)}, "KEEL_API_KEYS_FILE"))
    for env, variable in bad:
        k = Keel(env)
        assert k.proc.wait(timeout=30) == 2, env
        err = k.proc.stderr.read()
        assert variable in err and "hunter2" not in err, err
