"""API keys: required when configured, from Bearer or x-api-key, stored as hashes; probes open."""

import subprocess

import openai
import pytest
import requests

from conftest import CLASSIFIER, EMBED_MODEL, MODELS, keel_bin

KEY, FILE_KEY = "sk-keel-test-1", "sk-from-the-file"


def hash_key(key):
    return subprocess.run([keel_bin(), "hash-key"], input=key, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    from conftest import Keel
    hashes = tmp_path_factory.mktemp("keys") / "keys.txt"
    hashes.write_text(f"# ops team\n{hash_key(FILE_KEY)}  ops\n")
    k = Keel({"KEEL_API_KEYS": KEY, "KEEL_API_KEYS_FILE": str(hashes)}).wait_ready()
    yield k
    assert k.stop() == 0


def test_requests_without_a_valid_key_get_401(guarded):
    for headers in [{}, {"authorization": "Bearer wrong"}, {"x-api-key": "wrong"}, {"authorization": f"Basic {KEY}"}]:
        r = requests.post(guarded.url("/predict"), json={"text": "fine"}, headers=headers)
        assert r.status_code == 401, headers
        assert r.json()["error"]["code"] == "unauthorized" and r.headers["www-authenticate"] == "Bearer"
        assert KEY not in r.text


def test_keys_from_env_and_file_are_accepted_both_ways(guarded):
    for headers in [{"authorization": f"Bearer {KEY}"}, {"x-api-key": KEY}, {"authorization": f"bearer {FILE_KEY}"}]:
        assert requests.post(guarded.url("/predict"), json={"text": "fine"}, headers=headers).status_code == 200


def test_probes_and_metrics_stay_open(guarded):
    for path in ["/health", "/ready", "/metrics"]:
        assert requests.get(guarded.url(path)).status_code == 200, path
    assert requests.get(guarded.url("/info")).status_code == 401


def test_openai_sdk_sends_its_key_as_bearer(guarded):
    ok = openai.OpenAI(base_url=guarded.url("/v1"), api_key=KEY, max_retries=0)
    assert len(ok.embeddings.create(model=EMBED_MODEL, input="x").data) == 1
    bad = openai.OpenAI(base_url=guarded.url("/v1"), api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.embeddings.create(model=EMBED_MODEL, input="x")


def test_keys_never_appear_in_info_or_logs(guarded):
    info = requests.get(guarded.url("/info"), headers={"x-api-key": KEY}).json()
    assert info["settings"]["api_keys"] == 2 and KEY not in str(info)
    assert all(KEY not in str(e) and FILE_KEY not in str(e) for e in guarded.logs)


def test_bad_key_file_exits_2_without_echoing_keys(tmp_path):
    f = tmp_path / "keys.txt"
    f.write_text("not-a-hash\n")
    proc = subprocess.run([keel_bin()], env={"KEEL_API_KEYS": KEY, "KEEL_API_KEYS_FILE": str(f)},
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "KEEL_API_KEYS_FILE" in proc.stderr and KEY not in proc.stderr


def test_metrics_can_require_a_key(start_keel):
    k = start_keel({"MODELS": f"{CLASSIFIER}={MODELS / CLASSIFIER}", "KEEL_API_KEYS": KEY,
                    "METRICS_REQUIRE_KEY": "true"}).wait_ready()
    assert requests.get(k.url("/metrics")).status_code == 401
    assert requests.get(k.url("/metrics"), headers={"x-api-key": KEY}).status_code == 200
    assert requests.get(k.url("/ready")).status_code == 200
