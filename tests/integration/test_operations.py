"""Operations: metrics pass promtool's lint, logs carry request ids and never secrets,
deployment manifests validate against the Kubernetes schemas."""

import pathlib
import shutil
import subprocess
import sys
import uuid

import requests

from conftest import CLASSIFIER, EMBED_MODEL, MODELS, ROOT


def scrape(url):
    r = requests.get(url("/metrics"))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    return r.text


def test_metrics_cover_http_models_and_process_and_pass_promtool(url):
    requests.post(url("/predict"), json={"inputs": ["great", "awful"]})
    requests.post(url("/v1/embeddings"), json={"input": "hello"})
    requests.post(url("/predict"), json={"text": ""})
    text = scrape(url)
    for series in [
        'keel_http_requests_total{route="/predict",method="POST",status="200"}',
        "keel_http_request_duration_seconds_bucket",
        f'keel_model_ready{{model="{CLASSIFIER}"}} 1',
        f'keel_inference_duration_seconds_count{{model="{EMBED_MODEL}"}}',
        f'keel_queue_wait_seconds_count{{model="{CLASSIFIER}"}}',
        f'keel_batch_size_bucket{{model="{CLASSIFIER}"',
        f'keel_input_tokens_bucket{{model="{EMBED_MODEL}"',
        f'keel_input_characters_bucket{{model="{CLASSIFIER}"',
        f'keel_predictions_total{{model="{CLASSIFIER}",label="POSITIVE"}}',
        f'keel_prediction_score_bucket{{model="{CLASSIFIER}",label="NEGATIVE"',
        f'keel_rejected_requests_total{{model="{CLASSIFIER}",reason="empty_input"}}',
        f'keel_queue_depth{{model="{CLASSIFIER}"}}',
        f'keel_inference_requests_in_flight{{model="{CLASSIFIER}"}}',
        "process_resident_memory_bytes ",
        "process_cpu_seconds_total ",
    ]:
        assert series in text, series
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing (Debian package prometheus; .ci/run installs it)"
    proc = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert proc.returncode == 0 and not proc.stdout.strip() and not proc.stderr.strip(), proc.stdout + proc.stderr


def test_request_id_is_returned_and_logged(keel, url):
    rid = f"test-{uuid.uuid4()}"
    r = requests.post(url("/predict"), json={"text": "a delightful surprise"}, headers={"x-request-id": rid})
    assert r.headers["x-request-id"] == rid
    for h in ["x-keel-total-ms", "x-keel-queue-ms", "x-keel-inference-ms"]:
        assert float(r.headers[h]) >= 0
    made = requests.get(url("/health")).headers["x-request-id"]
    assert len(made) == 36

    def mine(message):
        return lambda e: e.get("span", {}).get("request_id") == rid and e.get("message") == message

    request_line = keel.wait_log(mine("request"))
    assert request_line["method"] == "POST" and request_line["route"] == "/predict"
    assert request_line["status"] == 200 and request_line["latency_ms"] > 0 and request_line["bytes_out"] > 0
    inference = keel.wait_log(mine("inference"))
    assert inference["model"] == CLASSIFIER and inference["label"] == "POSITIVE"
    assert inference["input_tokens"] > 2 and inference["input_characters"] == len("a delightful surprise")
    assert "queue_ms" in inference and "compute_ms" in inference and inference["batch_size"] >= 1


def test_authorization_headers_never_reach_the_logs(keel, url):
    secret = f"sk-{uuid.uuid4().hex}"
    requests.post(url("/predict"), json={"text": "fine"}, headers={"authorization": f"Bearer {secret}", "x-api-key": secret})
    r = requests.get(url("/nope"), headers={"authorization": f"Bearer {secret}"})
    # Both requests' lines are in before the logs are searched.
    rid = r.headers["x-request-id"]
    keel.wait_log(lambda e: e.get("span", {}).get("request_id") == rid and e.get("message") == "request")
    assert all(secret not in str(e) for e in list(keel.logs))


def test_kubernetes_manifests_validate():
    files = sorted(str(p) for p in (ROOT / "deploy" / "kubernetes").glob("*.yaml"))
    assert len(files) >= 4
    exe = pathlib.Path(sys.executable).parent / "kubernetes-validate"
    proc = subprocess.run([str(exe), "--strict", "--kubernetes-version", "1.33.0", *files], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_procfile_runs_keel_on_port():
    procfile = (ROOT / "Procfile").read_text()
    assert procfile.startswith("web:") and "keel serve" in procfile
