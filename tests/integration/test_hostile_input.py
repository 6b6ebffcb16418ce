"""Hostile input: every malformed, oversized or truncated request gets the right 4xx with a
JSON error, never a 5xx or a hang, and the server keeps serving normally afterwards."""

import json
import socket

import pytest
import requests

from conftest import EMBED_MODEL

ROUTES = ["/predict", "/v1/embeddings", "/v1/chat/completions"]


def post_raw(url, path, body, content_type="application/json"):
    headers = {} if content_type is None else {"content-type": content_type}
    return requests.post(url(path), data=body, headers=headers, timeout=30)


def assert_error(r, status, code=None):
    assert r.status_code == status, (r.status_code, r.text[:300])
    error = r.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    if code:
        assert error["code"] == code, error


def assert_still_serving(url):
    r = requests.post(url("/predict"), json={"text": "a lovely, warm film"}, timeout=30)
    assert r.status_code == 200 and r.json()["label"] == "POSITIVE"
    assert requests.get(url("/health"), timeout=5).status_code == 200


@pytest.mark.parametrize("path", ROUTES)
def test_invalid_utf8_is_400(url, path):
    assert_error(post_raw(url, path, b'{"text": "caf\xe9 \xff\xfe", "input": "\xc3\x28"}'), 400, "malformed_json")
    assert_still_serving(url)


@pytest.mark.parametrize("path", ROUTES)
def test_raw_nul_bytes_are_400(url, path):
    # An unescaped NUL inside a JSON string is not JSON; an escaped one is a character.
    assert_error(post_raw(url, path, b'{"text": "a\x00b", "input": "a\x00b"}'), 400, "malformed_json")


def test_escaped_nul_and_control_characters_are_text(url):
    r = requests.post(url("/predict"), json={"text": "nice\u0000 film\u0001\u001f"}, timeout=30)
    assert r.status_code == 200 and r.json()["label"] in ("POSITIVE", "NEGATIVE")
    r = requests.post(url("/v1/embeddings"), json={"model": EMBED_MODEL, "input": "\u0000"}, timeout=30)
    # A lone NUL is a text of its own to the tokenizer (an unknown token), or empty: either way 2xx or 422.
    assert r.status_code in (200, 422), r.text


@pytest.mark.parametrize("body", [
    b'{"text": "x", "top_k": 1e400}',
    b'{"text": "x", "top_k": 99999999999999999999999999}',
    b'{"text": "x", "top_k": -1}',
    b'{"text": "x", "top_k": 2.5}',
])
def test_numbers_out_of_range_are_4xx(url, body):
    r = post_raw(url, "/predict", body)
    assert r.status_code in (400, 422), r.text
    assert r.json()["error"]["code"]


def test_embedding_dimensions_too_large_is_422(url):
    r = requests.post(url("/v1/embeddings"), json={"model": EMBED_MODEL, "input": "x", "dimensions": 10**30}, timeout=30)
    assert_error(r, 422)


@pytest.mark.parametrize("path", ROUTES)
@pytest.mark.parametrize("depth", [65, 100_000])
def test_deeply_nested_json_is_400(url, path, depth):
    body = b'{"text": ' + b"[" * depth + b"]" * depth + b"}"
    assert_error(post_raw(url, path, body), 400, "json_too_deep")
    assert_still_serving(url)


def test_nesting_within_the_limit_is_judged_on_its_fields(url):
    body = b'{"text": "x", "extra": ' + b"[" * 60 + b"]" * 60 + b"}"
    r = post_raw(url, "/predict", body)
    assert r.status_code in (200, 422), r.text


@pytest.mark.parametrize("path", ROUTES)
def test_ten_megabyte_text_is_413(url, path):
    text = "a" * (10 * 1024 * 1024)
    body = json.dumps({"text": text, "input": text, "model": EMBED_MODEL}).encode()
    assert_error(post_raw(url, path, body), 413, "body_too_large")
    assert_still_serving(url)


def test_one_hundred_thousand_inputs_are_refused(url):
    body = json.dumps({"model": EMBED_MODEL, "input": ["a"] * 100_000}).encode()
    assert len(body) < 2 * 1024 * 1024, "under the body limit: the input count is what is refused"
    assert_error(post_raw(url, "/v1/embeddings", body), 422)
    body = json.dumps({"inputs": ["a"] * 100_000}).encode()
    assert_error(post_raw(url, "/predict", body), 422)
    assert_still_serving(url)


@pytest.mark.parametrize("path", ROUTES)
@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/jsonx", "json"])
def test_wrong_content_types_are_415(url, path, content_type):
    r = post_raw(url, path, b'{"text": "x", "input": "x"}', content_type)
    if path == "/predict" and (content_type or "").startswith("multipart/"):
        # /predict takes image uploads as multipart forms: this one is a broken form.
        assert_error(r, 400, "malformed_multipart")
    else:
        assert_error(r, 415, "unsupported_media_type")


@pytest.mark.parametrize("path", ROUTES)
@pytest.mark.parametrize("body", [b'{"text": "a fine fi', b'{"input": ["a", ', b"{", b"", b"null", b"[]", b'"text"'])
def test_truncated_or_wrong_shaped_json_is_4xx(url, path, body):
    r = post_raw(url, path, body)
    assert r.status_code in (400, 422), (body, r.status_code, r.text)
    assert r.json()["error"]["code"]


def raw_exchange(port, request, read_timeout=15):
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as s:
        s.sendall(request)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            try:
                data = s.recv(65536)
            except socket.timeout:
                break
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)


def test_body_shorter_than_its_content_length_is_answered_not_hung(keel, url):
    # The client promises 1000 bytes, sends 20 and closes its side.
    head = b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n"
    reply = raw_exchange(keel.port, head + b'{"text": "a fine fi')
    assert reply.startswith(b"HTTP/1.1 400") and b'"code":"unreadable_body"' in reply, reply[:300]
    assert_still_serving(url)


def test_cut_chunked_body_is_answered_not_hung(keel, url):
    head = b"POST /v1/embeddings HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
    reply = raw_exchange(keel.port, head + b"10\r\n{\"input\": \"abc")
    assert reply.startswith(b"HTTP/1.1 400") and b'"code":"unreadable_body"' in reply, reply[:300]
    assert_still_serving(url)


def test_garbage_request_line_is_400(keel, url):
    # hyper answers a request it cannot parse with a bare 400 and closes the connection.
    reply = raw_exchange(keel.port, b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03garbage\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400"), reply[:200]
    reply = raw_exchange(keel.port, b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-length: -5\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400"), reply[:200]
    assert_still_serving(url)


def test_many_hostile_requests_leave_no_5xx_in_metrics(url):
    metrics = requests.get(url("/metrics"), timeout=5).text
    five_xx = [line for line in metrics.splitlines()
               if line.startswith("keel_http_requests_total") and 'status="5' in line and 'status="503"' not in line]
    assert five_xx == [], five_xx


def test_cors_is_off_by_default(url):
    r = requests.options(url("/predict"), headers={"origin": "https://evil.example", "access-control-request-method": "POST"})
    assert "access-control-allow-origin" not in r.headers
    r = requests.post(url("/predict"), json={"text": "x"}, headers={"origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers


def test_cors_allows_only_the_configured_origins(start_keel):
    keel = start_keel({"CORS_ALLOW_ORIGINS": "https://app.example, http://localhost:3000", "KEEL_API_KEYS": "sk-cors"}).wait_ready()
    preflight = requests.options(keel.url("/v1/embeddings"), headers={
        "origin": "https://app.example", "access-control-request-method": "POST",
        "access-control-request-headers": "authorization, content-type"})
    # The preflight carries no key and must still pass.
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    r = requests.post(keel.url("/predict"), json={"text": "x"},
                      headers={"origin": "http://localhost:3000", "authorization": "Bearer sk-cors"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert "x-request-id" in r.headers["access-control-expose-headers"].lower()
    other = requests.options(keel.url("/predict"), headers={"origin": "https://evil.example", "access-control-request-method": "POST"})
    assert "access-control-allow-origin" not in other.headers
    assert keel.stop() == 0


@pytest.mark.parametrize("value", ["app.example", "https://app.example/path", "ftp://x", "https://"])
def test_bad_cors_origins_stop_startup(value):
    from conftest import Keel
    k = Keel({"CORS_ALLOW_ORIGINS": value})
    assert k.proc.wait(timeout=30) == 2
    assert "CORS_ALLOW_ORIGINS" in k.proc.stderr.read()
