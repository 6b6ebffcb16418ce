"""Starts the real `keel` binary on an ephemeral port with the real default models.

`KEEL_BIN` names the binary (the Makefile passes target/debug/keel). The session-wide
server is shared by the tests that need default settings; tests of other settings start
their own with `start_keel`.
"""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import pytest
import requests

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"
EMBED_MODEL = "all-MiniLM-L6-v2"
CLASSIFIER = "sentiment-minilm-l6"
FIXTURES = ROOT / "tests" / "fixtures"


def keel_bin():
    return os.environ.get("KEEL_BIN", str(ROOT / "target" / "debug" / "keel"))


class Keel:
    """A running keel process; its JSON log lines are collected in `logs`."""

    def __init__(self, env=None, args=("serve",)):
        full_env = {
            "PATH": os.environ.get("PATH", ""),
            "HOST": "127.0.0.1",
            "PORT": "0",
            "LOG_FORMAT": "json",
            "MODELS": f"{EMBED_MODEL}={MODELS / EMBED_MODEL},{CLASSIFIER}={MODELS / CLASSIFIER}",
            # Each server its own RAG store, never the checkout's ./data.
            "PERSISTENT_STORAGE_DIR": tempfile.mkdtemp(prefix="keel-data-"),
        }
        full_env.update(env or {})
        full_env = {k: v for k, v in full_env.items() if v is not None}
        self.proc = subprocess.Popen(
            [keel_bin(), *args],
            env=full_env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.logs = []
        self.port = None
        self._listening = threading.Event()
        self._reader = threading.Thread(target=self._read_logs, daemon=True)
        self._reader.start()

    def _read_logs(self):
        for line in self.proc.stdout:
            try:
                entry = json.loads(line)
            except ValueError:
                entry = {"raw": line}
            self.logs.append(entry)
            if entry.get("message") == "listening" and self.port is None:
                self.port = int(entry["port"])
                self._listening.set()
        self._listening.set()

    def wait_listening(self, timeout=30):
        assert self._listening.wait(timeout), "keel did not start listening"
        assert self.port is not None, f"keel exited: {self.stderr_text()}"
        return self

    def url(self, path=""):
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_ready(self, timeout=180):
        self.wait_listening()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = requests.get(self.url("/ready"), timeout=5)
            if r.status_code == 200:
                return self
            if r.json()["status"] == "failed":
                raise AssertionError(f"a model failed: {r.json()}")
            time.sleep(0.2)
        raise AssertionError("keel did not become ready in time")

    def wait_status(self, status, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            body = requests.get(self.url("/ready"), timeout=5).json()
            if body["status"] == status:
                return body
            time.sleep(0.1)
        raise AssertionError(f"/ready never reported {status}")

    def wait_log(self, predicate, timeout=10):
        """The first log entry that matches, waiting for the reader thread to collect it (a
        line is written when the response is, and read a moment later)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = next((e for e in list(self.logs) if predicate(e)), None)
            if found is not None:
                return found
            time.sleep(0.02)
        raise AssertionError("no matching log line within %s s" % timeout)

    def stderr_text(self):
        try:
            return self.proc.stderr.read() if self.proc.poll() is not None else ""
        except ValueError:
            return ""

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def start_keel():
    started = []

    def start(env=None, args=("serve",)):
        k = Keel(env, args)
        started.append(k)
        return k

    yield start
    for k in started:
        k.stop()


@pytest.fixture(scope="session")
def keel():
    k = Keel().wait_ready()
    yield k
    assert k.stop() == 0


@pytest.fixture(scope="session")
def url(keel):
    return keel.url


@pytest.fixture(scope="session")
def postgres(tmp_path_factory):
    """A real PostgreSQL with pgvector for the session (tests/pg_server.py)."""
    sys.path.insert(0, str(ROOT / "tests"))
    import pg_server

    with pg_server.PgServer(tmp_path_factory.mktemp("pg") / "data") as pg:
        yield pg


def new_database(pg):
    """A fresh, empty database on `pg`, as a DATABASE_URL."""
    name = f"keel_{uuid.uuid4().hex}"
    pg.psql(f"CREATE DATABASE {name}")
    return pg.url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(params=["embedded", "postgres"])
def rag_backend(request):
    """Environment for a Keel on each RAG store in turn: its own folder, or its own database.
    Servers given the same environment share the store."""
    if request.param == "embedded":
        return {"PERSISTENT_STORAGE_DIR": tempfile.mkdtemp(prefix="keel-data-")}
    return {"DATABASE_URL": new_database(request.getfixturevalue("postgres"))}


def load_fixture(name):
    return json.loads((FIXTURES / name).read_text())


def wait_until(predicate, timeout=30.0, interval=0.05, what="the condition"):
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


_SERIES = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def metric_value(text, name, **labels):
    """The value of the series `name{labels}` (exactly those labels) in Prometheus text, or
    None when it is not there."""
    for line in text.splitlines():
        m = _SERIES.match(line)
        if m and m.group(1) == name and dict(_LABEL.findall(m.group(2) or "")) == labels:
            return float(m.group(3))
    return None


def inference_in_flight(keel_url, model=CLASSIFIER):
    """Requests admitted for `model` and not yet answered (queued or running)."""
    text = requests.get(keel_url("/metrics"), timeout=5).text
    return metric_value(text, "keel_inference_requests_in_flight", model=model)
