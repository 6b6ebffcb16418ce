"""Liveness, readiness, and what happens when a model cannot load."""

import shutil
import subprocess
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
    assert any(e.get("message") == "model failed to load" for e in k.logs)


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


def test_ready_turns_503_draining_on_sigterm(start_keel):
    k = start_keel({"MODELS": f"{EMBED_MODEL}={MODELS / EMBED_MODEL}"}).wait_ready()
    assert k.stop() == 0
    assert any(e.get("message") == "shutdown requested; draining" for e in k.logs)
