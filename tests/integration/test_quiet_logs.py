"""ONNX Runtime stays quiet: its messages below WARNING are not produced, so neither start-up
nor a long input (which makes it grow its memory arena) puts `ort` lines in Keel's log."""

import time
import uuid

import requests

VERBOSE = {"INFO", "DEBUG", "TRACE"}
LONG_TEXT = " ".join(["the film kept surprising me with its warmth and its wit"] * 60)


def long_request(keel):
    """POSTs one long input; returns once the reader has Keel's log line for that request
    (ONNX Runtime logs while the batch runs, before the answer and its log line)."""
    rid = f"quiet-{uuid.uuid4()}"
    r = requests.post(keel.url("/predict"), json={"text": LONG_TEXT}, headers={"x-request-id": rid}, timeout=60)
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if any(e.get("message") == "request" and e.get("span", {}).get("request_id") == rid for e in list(keel.logs)):
            return
        time.sleep(0.05)
    raise AssertionError("the request's log line never arrived")


def ort_lines(keel, target_prefix):
    return [
        e for e in list(keel.logs)
        if str(e.get("target", "")).startswith(target_prefix) and e.get("level") in VERBOSE
    ]


def test_default_log_has_no_ort_info_lines(keel):
    long_request(keel)
    lines = ort_lines(keel, "ort")
    assert not lines, f"{len(lines)} ort lines below WARN, e.g. {lines[:3]}"
    # Keel's own line says which library it loaded and how the pool is set.
    loaded = [e for e in list(keel.logs) if e.get("message") == "ONNX Runtime loaded"]
    assert len(loaded) == 1 and int(loaded[0]["intra_threads"]) >= 1, loaded


def test_onnx_runtime_produces_nothing_below_warning(start_keel):
    # Keel's filter lets every ONNX Runtime message through here, so what is absent was never
    # produced (before the fix: hundreds of arena lines at INFO).
    k = start_keel({"LOG_LEVEL": "info,ort::logging=trace"}).wait_ready()
    long_request(k)
    lines = ort_lines(k, "ort::logging")
    assert not lines, f"{len(lines)} ONNX Runtime lines below WARN, e.g. {lines[:3]}"
