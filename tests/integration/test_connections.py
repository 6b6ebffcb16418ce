"""Connection-level limits: TLS, slow clients (headers and bodies), the connection cap."""

import socket
import subprocess
import time

import pytest
import requests

from conftest import CLASSIFIER, MODELS, keel_bin

MODEL = {"MODELS": f"{CLASSIFIER}={MODELS / CLASSIFIER}"}


def test_tls_serves_https(start_keel, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    k = start_keel({**MODEL, "TLS_CERT_PATH": str(cert), "TLS_KEY_PATH": str(key)}).wait_listening()
    r = requests.get(f"https://127.0.0.1:{k.port}/health", verify=str(cert), timeout=5)
    assert r.status_code == 200
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{k.port}/health", timeout=5)


def test_tls_settings_are_validated(tmp_path):
    (tmp_path / "cert.pem").write_text("not a certificate")
    for env, variable in [({"TLS_CERT_PATH": str(tmp_path / "cert.pem")}, "TLS_KEY_PATH"),
                          ({"TLS_CERT_PATH": str(tmp_path / "cert.pem"), "TLS_KEY_PATH": str(tmp_path / "cert.pem")}, "TLS_CERT_PATH")]:
        proc = subprocess.run([keel_bin()], env=env, capture_output=True, text=True, timeout=30)
        assert proc.returncode == 2 and variable in proc.stderr, proc.stderr


def test_slow_headers_are_cut_off(start_keel):
    k = start_keel({**MODEL, "HEADER_READ_TIMEOUT_MS": "500"}).wait_listening()
    with socket.create_connection(("127.0.0.1", k.port)) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # never finishes the headers
        s.settimeout(10)
        started = time.monotonic()
        data = s.recv(1024)
        while data and b"HTTP/1.1" not in data:
            data = s.recv(1024)
        assert time.monotonic() - started < 5
    # The server still serves others.
    assert requests.get(k.url("/health")).status_code == 200


@pytest.mark.parametrize("path", ["/predict", "/v1/chat/completions"])
def test_slow_body_gets_408(start_keel, path):
    # The gateway's upstream is a closed port: the body never gets that far.
    gateway = {"OPENAI_API_KEY": "sk-unused", "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}
    k = start_keel({**MODEL, **gateway, "BODY_READ_TIMEOUT_MS": "500"}).wait_listening()
    with socket.create_connection(("127.0.0.1", k.port)) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  "Content-Length: 100\r\n\r\n{\"model\":".encode())
        s.settimeout(10)
        response = s.recv(4096).decode()
    assert response.startswith("HTTP/1.1 408"), response
    assert "body_timeout" in response


def test_connections_past_the_cap_are_refused_with_503(start_keel):
    k = start_keel({**MODEL, "MAX_CONNECTIONS": "2", "HEADER_READ_TIMEOUT_MS": "20000"}).wait_listening()
    idle = [socket.create_connection(("127.0.0.1", k.port)) for _ in range(2)]
    time.sleep(0.2)
    r = requests.get(k.url("/health"), timeout=10)
    assert r.status_code == 503 and r.json()["error"]["code"] == "too_many_connections"
    assert r.headers["retry-after"] == "1" and r.headers["connection"] == "close"

    def served_once_a_slot_frees(path):
        # The server frees a slot when it sees the close, a moment after the client's.
        deadline = time.monotonic() + 10
        while True:
            r = requests.get(k.url(path), timeout=10)
            if r.status_code != 503 or time.monotonic() > deadline:
                return r
            time.sleep(0.1)

    idle[0].close()
    assert served_once_a_slot_frees("/health").status_code == 200
    idle[1].close()
    metrics = served_once_a_slot_frees("/metrics")
    assert metrics.status_code == 200
    refused = [l for l in metrics.text.splitlines() if l.startswith("keel_connections_refused_total ")]
    assert refused and float(refused[0].split()[1]) >= 1