"""Liveness, readiness, and what happens when a model cannot load."""

import shutil
import signal
import subprocess
import threading
import time

import requests

from conftest import CLASSIFIER, EMBED_MODEL, MODELS, keel_bin


def test_health_is_ok_and_ready_lists_every_model(url):
    r = requests.get(url("/health"))
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    r = requests.get(url("/ready"))
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ready"
    assert body["models"] == {
        EMBED_MODEL: {"state": "ready"},
        CLASSIFIER: {"state": "ready"},
    }


def test_missing_folder_keeps_health_up_and_ready_failed(start_keel, tmp_path):
    missing = tmp_path / "no-such-model"
    k = start_keel({"MODELS": f"ghost={missing},{EMBED_MODEL}={MODELS / EMBED_MODEL}"}).wait_listening()
    assert requests.get(k.url("/health")).status_code == 200
    body = k.wait_status("failed")
    r = requests.get(k.url("/ready"))
    assert r.status_code == 503
    assert body["models"]["ghost"]["state"] == "failed"
    assert "no such model folder" in body["models"]["ghost"]["reason"]
    # The healthy model still serves.
    deadline = time.monotonic() + 60
    while requests.get(k.url("/ready")).json()["models"][EMBED_MODEL]["state"] != "ready":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    r = requests.post(k.url("/v1/embeddings"), json={"input": "still serving", "model": EMBED_MODEL})
    assert r.status_code == 200
    # The failed one answers 503, not 500.
    r = requests.post(k.url("/v1/embeddings"), json={"input": "x", "model": "ghost"})
    assert r.status_code in (422, 503), r.text
    k.wait_log(lambda e: e.get("message") == "model failed to load")


def test_corrupt_weights_fail_the_model_not_the_process(start_keel, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(MODELS / CLASSIFIER, broken)
    (broken / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not safetensors")
    k = start_keel({"MODELS": f"broken={broken}"}).wait_listening()
    body = k.wait_status("failed")
    assert body["models"]["broken"]["state"] == "failed"
    assert "broken" in body["models"]["broken"]["reason"]
    assert requests.get(k.url("/health")).status_code == 200
    r = requests.post(k.url("/predict"), json={"text": "hello"})
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "model_not_ready"
    assert r.headers["retry-after"]


def test_fail_fast_exits_when_a_model_fails(tmp_path):
    proc = subprocess.run(
        [keel_bin()],
        env={"PORT": "0", "HOST": "127.0.0.1", "MODEL_PATH": str(tmp_path / "absent"), "KEEL_FAIL_FAST": "true", "LOG_FORMAT": "json"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "KEEL_FAIL_FAST" in proc.stdout


def test_shutdown_drains_without_failing_a_request(start_keel):
    """Load runs through SIGTERM: /ready turns 503 at once; clients behave like a load balancer
    (no new requests once readiness fails); every request sent is answered 200 while the
    listener keeps accepting for the grace period; the exit status is 0."""
    k = start_keel({"MODELS": f"{CLASSIFIER}={MODELS / CLASSIFIER}", "SHUTDOWN_GRACE_MS": "1500"}).wait_ready()
    results, stop = [], threading.Event()

    def client():
        while not stop.is_set():
            try:
                r = requests.post(k.url("/predict"), json={"inputs": ["a fine film"] * 4},
                                  headers={"connection": "close"}, timeout=30)
                results.append(r.status_code)
            except requests.ConnectionError as e:
                results.append(f"error: {e}")

    threads = [threading.Thread(target=client) for _ in range(6)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    k.proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    # The signal is handled asynchronously: /ready must turn within moments, well inside the grace.
    r = requests.get(k.url("/ready"), timeout=5)
    while r.status_code == 200 and time.monotonic() - t0 < 0.5:
        time.sleep(0.01)
        r = requests.get(k.url("/ready"), timeout=5)
    assert r.status_code == 503 and r.json()["status"] == "draining"
    stop.set()  # what a load balancer does once readiness fails
    assert requests.get(k.url("/health"), timeout=5).status_code == 200
    for t in threads:
        t.join(timeout=60)
    if time.monotonic() - t0 < 1.0:  # still well inside the grace period: accepted and answered
        assert requests.post(k.url("/predict"), json={"text": "late but served"}, timeout=10).status_code == 200
    assert k.proc.wait(timeout=60) == 0
    assert len(results) > 10 and all(x == 200 for x in results), [x for x in results if x != 200]
    assert time.monotonic() - t0 >= 1.4  # the grace period was honoured
    assert any(e.get("message") == "shutdown requested; draining" for e in k.logs)
    assert any(e.get("message") == "stopped" for e in k.logs)
