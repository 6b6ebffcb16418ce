"""Starts the fake provider (in this process) and Keel (the real binary, serving the
sentiment model and the gateway, on a free loopback port) once per session."""

import json
import os
import pathlib
import subprocess
import sys
import time
import uuid

import httpx
import openai
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import fake_provider  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = pathlib.Path(os.environ.get("KEEL_BIN", ROOT / "target" / "debug" / "keel"))

CONFIG = """
[gateway]
connect_timeout_ms = 500
first_byte_timeout_ms = 2000
total_timeout_ms = 8000
max_attempts = 3
backoff_base_ms = 50
backoff_max_ms = 200
max_retry_after_ms = 5000
degraded_message = "Keel is answering in degraded mode."

[gateway.circuit]
window_ms = 10000
min_requests = 5
failure_ratio = 0.5
open_ms = 1500

[gateway.providers.fake]
models = {pool}
kind = "openai"
base_url = "{base}/v1"
api_key_env = "FAKE_KEY"

[gateway.providers.fake_b]
models = {pool}
kind = "openai-compatible"
base_url = "{base}/v1"

[gateway.providers.claude]
models = {pool}
kind = "anthropic"
base_url = "{base}"
api_key_env = "FAKE_ANTHROPIC_KEY"

[gateway.providers.narrow]
models = {pool}
kind = "openai"
base_url = "{base}/v1"
max_concurrency = 1
queue_timeout_ms = 3000

[gateway.providers.narrow_short]
models = {pool}
kind = "openai"
base_url = "{base}/v1"
max_concurrency = 1
queue_timeout_ms = 100

[gateway.providers.dead]
kind = "openai"
base_url = "http://127.0.0.1:9/v1"

[gateway.routes.fallback]
targets = ["fake/fb-first", "fake_b/fb-second"]

[gateway.routes.degrade]
targets = ["fake/dg-first", "claude/dg-second"]
max_attempts = 2

[gateway.routes.degrade503]
targets = ["fake/d503"]
max_attempts = 1
degraded_status = 503
degraded_message = "Try again soon."

[gateway.routes.circuit]
targets = ["fake/cb-model"]
max_attempts = 1

[gateway.routes.dead-first]
targets = ["dead/x", "fake/after-dead"]

[gateway.routes.slow]
targets = ["fake/slow-first", "fake_b/slow-second"]
first_byte_timeout_ms = 300
max_attempts = 1

[gateway.prices."fake/priced"]
input_per_mtok = 1000000.0
output_per_mtok = 2000000.0
"""


class Fake:
    def __init__(self, server):
        self.server = server
        self.state = server.state

    def script(self, model, *steps):
        self.state.script(model, list(steps))

    def requests(self, model=None):
        return self.state.requests(model)

    def max_in_flight(self, model):
        return self.state.max_in_flight[model]

    def open(self, gate):
        """Lets the requests held by a `wait_for` step on this gate answer."""
        self.state.open(gate)


class Gateway:
    def __init__(self, url, log_path):
        self.url = url
        self.log_path = log_path

    def log_lines(self):
        lines = []
        for line in self.log_path.read_text().splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:
                pass
        return lines

    def lines(self, message, request_id):
        return [l for l in self.log_lines()
                if l.get("message") == message and l.get("request_id") == request_id]

    def gateway_log(self, request_id):
        # Keel logs flat JSON lines; tests read the fields under "fields" as the gateway's
        # own example server wrote them.
        return [dict(l, fields=l) for l in self.lines("gateway", request_id)]


@pytest.fixture(scope="session")
def fake_server():
    server = fake_provider.start_in_thread()
    yield server
    server.shutdown()


def start_gateway(fake_server, tmp, extra_env=None, config_text=CONFIG):
    """Starts keel with `config_text` pointed at the fake; returns (process, Gateway)."""
    base = f"http://127.0.0.1:{fake_server.server_address[1]}"
    config = tmp / "keel.toml"
    config.write_text(config_text.replace("{base}", base).replace("{pool}", POOL_TOML))
    log_path = tmp / "gateway.log"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "KEEL_CONFIG": str(config),
        "MODELS": f"sentiment-minilm-l6={ROOT / 'models' / 'sentiment-minilm-l6'}",
        "FAKE_KEY": "sk-fake-key",
        "FAKE_ANTHROPIC_KEY": "ak-fake-key",
        "LOG_LEVEL": "info",
        "LOG_FORMAT": "json",
        "HOST": "127.0.0.1",
        "PORT": "0",
        "SHUTDOWN_GRACE_MS": "0",
        "PERSISTENT_STORAGE_DIR": str(tmp / "data"),
        **(extra_env or {}),
    }
    assert BIN.exists(), f"build keel first: {BIN} is missing"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([str(BIN), "serve"], env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    addr = None
    deadline = time.monotonic() + 30
    while addr is None and time.monotonic() < deadline:
        assert proc.poll() is None, log_path.read_text()
        for line in Gateway(None, log_path).log_lines():
            if line.get("message") == "listening":
                addr = f"127.0.0.1:{line['port']}"
        time.sleep(0.05)
    assert addr, "keel did not start within 30 s: " + log_path.read_text()
    return proc, Gateway(f"http://{addr}", log_path)


def stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="session")
def gateway(fake_server, tmp_path_factory):
    proc, gw = start_gateway(fake_server, tmp_path_factory.mktemp("gateway"))
    yield gw
    stop(proc)


@pytest.fixture
def fake(fake_server):
    fake_server.state.reset()
    return Fake(fake_server)


@pytest.fixture
def client(gateway):
    # The SDK's own retries are off: the gateway's are under test.
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0,
                       timeout=20) as c:
        yield c


@pytest.fixture
def http(gateway):
    with httpx.Client(base_url=gateway.url, timeout=20) as c:
        yield c


# Clients reach `provider/model` only for models the configuration lists (each then has a
# circuit and cooldown of its own), so the session lists a pool of fresh names and every test
# takes its own: no test sees another's circuit, cooldown or scripted answers.
POOL = [f"t{i:03d}-{uuid.uuid4().hex[:6]}" for i in range(300)]
POOL_TOML = json.dumps(POOL + ["priced"])
_next_name = iter(POOL)


def unique(prefix):
    """A listed model name no other test uses, on the provider `prefix` starts with."""
    provider = prefix.split("/", 1)[0]
    return f"{provider}/{next(_next_name)}"


def wait_until(predicate, timeout=10.0, interval=0.02, what="the condition"):
    """Polls `predicate` until it returns something truthy, and returns that; fails the test
    after `timeout` seconds. Tests wait on what they can observe, never on a fixed sleep."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"waited {timeout} s for {what}")
        time.sleep(interval)


MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello?"}]
