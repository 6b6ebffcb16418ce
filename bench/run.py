#!/usr/bin/env python3
"""Keel's benchmark harness: Keel (one or more variants) against the Python reference service.

    python3 bench/run.py                       # full run (20 s per point), writes
                                               # bench/results.json and BENCHMARKS.md
    python3 bench/run.py --seconds 2 --concurrency 1,8          # smoke run
    python3 bench/run.py --variant candle --variant ort:BACKEND=ort,ORT_PRECISION=int8
    python3 bench/run.py --render-only         # BENCHMARKS.md from bench/results.json
    python3 bench/run.py --variant before:KEEL_BENCH_BIN=/tmp/keel-old --variant after:
                                               # two builds side by side

Each server is started alone (release binary, or uvicorn from .cache/bench-venv), checked,
warmed up, loaded with wrk at each concurrency for each text length, then stopped. Standard
library only; see bench/README.md for what is measured and the caveats.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
LUA = BENCH / "wrk" / "post.lua"
TEXTS = BENCH / "texts.json"
REF_DIR = BENCH / "reference"
REQUIREMENTS = REF_DIR / "requirements.txt"
VENV = ROOT / ".cache" / "bench-venv"
LOG_DIR = ROOT / ".cache" / "bench-logs"
BACKEND_JSON = BENCH / "backend.json"
SCALE_JSON = BENCH / "scale.json"
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"

CLS_NAME = "sentiment-minilm-l6"
EMB_NAME = "all-MiniLM-L6-v2"
CLS_DIR = ROOT / "models" / CLS_NAME
EMB_DIR = ROOT / "models" / EMB_NAME
EMB_DIM = 384

# Keel settings that must not leak from the caller's environment into a run (a variant or
# --keel-env sets them explicitly instead).
KEEL_SETTINGS = {
    "PORT", "HOST", "MODEL_PATH", "MODELS", "KEEL_CONFIG", "MAX_BATCH_SIZE", "MAX_CLIENT_BATCH",
    "MAX_BODY_BYTES", "MAX_INPUT_TOKENS", "TRUNCATE", "MAX_QUEUE_REQUESTS", "INFERENCE_THREADS",
    "LOG_FORMAT", "LOG_LEVEL", "KEEL_FAIL_FAST", "BACKEND",
}
KEEL_PREFIXES = ("KEEL_", "ORT_", "MAX_", "RATE_LIMIT_", "REDIS_", "BUDGET_")

CLK_TCK = os.sysconf("SC_CLK_TCK")
SMOKE_SECONDS = 10  # runs with shorter points are labelled smoke runs, not benchmarks

_children: list[subprocess.Popen] = []  # everything started, for cleanup


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class BenchError(RuntimeError):
    pass


# --------------------------------------------------------------------------------------------
# Processes: start, stop (whole process group), and measure through /proc.


def spawn(cmd, **kw) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, start_new_session=True, **kw)
    _children.append(proc)
    return proc


def group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields and int(fields[2]) == pgid:
                members.append(int(entry))
    return members


def stop(proc: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM the process group we started (its own session), then SIGKILL whatever of it is
    left after `grace` seconds."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            log(f"pid {proc.pid} ignored SIGTERM for {grace:.0f}s: SIGKILL")
    # While a member of the group lives, its id cannot have been reused: kill the rest.
    if group_members(proc.pid):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    if proc in _children:
        _children.remove(proc)


def stop_all() -> None:
    for proc in list(reversed(_children)):
        stop(proc, grace=5.0)


def _on_signal(signum, _frame):
    raise SystemExit(128 + signum)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    # Fields after the command name (which may contain spaces and parentheses).
    return data[data.rindex(")") + 2:].split()


def process_tree(root: int) -> list[int]:
    """`root` and all its live descendants."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields:
                parent[int(entry)] = int(fields[1])
    tree, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, ppid in parent.items() if ppid in frontier]
        tree.extend(frontier)
    return tree


def cpu_ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields:
            total += int(fields[11]) + int(fields[12])  # utime + stime
    return total


def system_busy_ticks() -> int:
    """Busy CPU time of the whole machine (user, nice, system, irq, softirq), in ticks."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return fields[0] + fields[1] + fields[2] + fields[5] + fields[6]


def status_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_kb(root: int) -> int:
    return sum(status_kb(pid, "VmRSS") for pid in process_tree(root))


class Sampler(threading.Thread):
    """Samples the RSS of a process tree every `interval` seconds; keeps the peak. The tree
    itself (a scan of /proc) is refreshed every 2 s only, to keep the sampler light."""

    def __init__(self, root: int, interval: float = 0.2):
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.peak_kb = 0
        self._halt = threading.Event()

    def run(self):
        pids, refreshed = process_tree(self.root), time.monotonic()
        while not self._halt.is_set():
            if time.monotonic() - refreshed > 2.0:
                pids, refreshed = process_tree(self.root), time.monotonic()
            self.peak_kb = max(self.peak_kb, sum(status_kb(p, "VmRSS") for p in pids))
            self._halt.wait(self.interval)

    def finish(self) -> int:
        self._halt.set()
        self.join()
        self.peak_kb = max(self.peak_kb, tree_rss_kb(self.root))
        return self.peak_kb


def wait_idle(root: int, limit: float = 60.0, threshold: float = 0.1) -> float:
    """Waits until the server tree uses under `threshold` cores over 0.5 s: requests that wrk
    abandoned at the end of a point must not spill into the next one. Returns the wait."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        pids = process_tree(root)
        before = cpu_ticks(pids)
        time.sleep(0.5)
        if (cpu_ticks(pids) - before) / CLK_TCK / 0.5 < threshold:
            break
    return time.monotonic() - start


# --------------------------------------------------------------------------------------------
# HTTP


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body=None, timeout: float = 120.0):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        payload = e.read()
        try:
            return e.code, json.loads(payload)
        except ValueError:
            return e.code, payload.decode(errors="replace")


# --------------------------------------------------------------------------------------------
# Set-up: tools, models, binary, reference venv


def run_checked(cmd, **kw):
    log("$ " + shlex.join(str(c) for c in cmd))
    subprocess.run(cmd, check=True, cwd=ROOT, **kw)


def ensure_wrk() -> str:
    if shutil.which("wrk") is None:
        if os.geteuid() != 0:
            raise BenchError("wrk is not installed: apt-get install wrk (needs root)")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        try:
            run_checked(["apt-get", "install", "-y", "-q", "wrk"], env=env)
        except subprocess.CalledProcessError:
            run_checked(["apt-get", "update", "-q"], env=env)
            run_checked(["apt-get", "install", "-y", "-q", "wrk"], env=env)
    out = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    return (out.stdout or out.stderr).splitlines()[0].split(" Copyright")[0].strip()


def ensure_models() -> None:
    if not (CLS_DIR / "model.safetensors").is_file() or not (EMB_DIR / "model.safetensors").is_file():
        log("models missing: running scripts/fetch-models.sh")
        run_checked(["bash", "scripts/fetch-models.sh"])
    for d in (CLS_DIR, EMB_DIR):
        if not (d / "model.safetensors").is_file():
            raise BenchError(f"{rel(d)}/model.safetensors is missing")


def ensure_keel(binary: Path, default: bool) -> str:
    if not binary.is_file():
        if not default:
            raise BenchError(f"{binary} does not exist")
        log("release binary missing: building it")
        run_checked(["cargo", "build", "--release", "--bin", "keel"])
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True)
    return out.stdout.strip()


def ensure_venv() -> dict:
    """Creates .cache/bench-venv from bench/reference/requirements.txt once (re-installs
    when the requirements change). Returns the versions installed."""
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    stamp = VENV / ".bench-requirements"
    python = VENV / "bin" / "python"
    if not (python.exists() and stamp.exists() and stamp.read_text().split()[0] == digest):
        log(f"installing the reference service into {VENV.relative_to(ROOT)} (one time; "
            "torch is a large download)")
        start = time.monotonic()
        if not python.exists():
            run_checked([sys.executable, "-m", "venv", str(VENV)])
        run_checked([str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q",
                     "-r", str(REQUIREMENTS)])
        stamp.write_text(f"{digest} installed in {time.monotonic() - start:.0f}s\n")
    probe = ("import json, importlib.metadata as m; print(json.dumps({p: m.version(p) for p in "
             "['torch', 'transformers', 'sentence-transformers', 'fastapi', 'uvicorn', "
             "'tokenizers', 'numpy']}))")
    out = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=True)
    versions = json.loads(out.stdout)
    probe = ("import platform, torch; print(platform.python_version(), torch.get_num_threads(), "
             "torch.backends.mkldnn.is_available())")
    out = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=True)
    py, threads, onednn = out.stdout.split()
    versions.update(python=py, torch_threads=int(threads), torch_onednn=onednn == "True")
    return versions


# --------------------------------------------------------------------------------------------
# Machine description


def machine_info() -> dict:
    info: dict = {}
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info["cores"] = os.cpu_count()
    info["cores_usable"] = len(os.sched_getaffinity(0))
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                info["memory_gib"] = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    info["kernel"] = platform.release()
    try:
        for line in open("/etc/os-release"):
            if line.startswith("PRETTY_NAME="):
                info["os"] = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    info["date"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    info["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, capture_output=True, text=True).stdout.strip()
        info["git"] = head + ("-dirty" if dirty else "")
    except OSError:
        pass
    return info


# --------------------------------------------------------------------------------------------
# Servers


class Server:
    def __init__(self, name: str, kind: str, cmd: list[str], env: dict, shown_env: dict):
        self.name, self.kind, self.cmd = name, kind, cmd
        self.env, self.shown_env = env, shown_env
        self.port = int(env["PORT"]) if "PORT" in env else None
        self.proc: subprocess.Popen | None = None
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.log_path = LOG_DIR / f"{name}.log"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, ready_timeout: float) -> float:
        log(f"starting {self.name}: {shlex.join(self.cmd)}")
        with open(self.log_path, "wb") as out:
            self.proc = spawn(self.cmd, env=self.env, cwd=ROOT, stdout=out,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        start = time.monotonic()
        while time.monotonic() - start < ready_timeout:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name} exited with {self.proc.returncode} before it was "
                                 f"ready; last log lines:\n{self.log_tail()}")
            try:
                status, _ = http("GET", self.base + "/ready", timeout=2)
                if status == 200:
                    return time.monotonic() - start
            except (OSError, ValueError):
                pass
            time.sleep(0.25)
        raise BenchError(f"{self.name} not ready after {ready_timeout:.0f}s; last log lines:\n"
                         f"{self.log_tail()}")

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def stop(self):
        if self.proc is not None:
            log(f"stopping {self.name}")
            stop(self.proc)
            self.proc = None


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def keel_server(name: str, binary: Path, extra: dict) -> Server:
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if k not in KEEL_SETTINGS and not k.startswith(KEEL_PREFIXES)}
    shown = {
        "HOST": "127.0.0.1",
        "MODELS": f"{CLS_NAME}={rel(CLS_DIR)},{EMB_NAME}={rel(EMB_DIR)}",
        "LOG_LEVEL": "warn",
        "LOG_FORMAT": "json",
    }
    shown.update(extra)
    env.update(shown)
    env["PORT"] = str(port)
    return Server(name, "keel", [str(binary), "serve"], env, shown)


def reference_server(extra: dict) -> Server:
    port = free_port()
    shown = {
        "MODEL_DIR": rel(CLS_DIR),
        "EMBED_DIR": rel(EMB_DIR),
        "EMBED_NAME": EMB_NAME,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    shown.update(extra)
    env = dict(os.environ)
    env.update(shown)
    env["PORT"] = str(port)
    cmd = [str(VENV / "bin" / "python"), "-m", "uvicorn", "app:app",
           "--app-dir", str(REF_DIR.relative_to(ROOT)), "--host", "127.0.0.1",
           "--port", str(port), "--workers", "1", "--log-level", "warning", "--no-access-log"]
    return Server("reference", "reference", cmd, env, shown)


# --------------------------------------------------------------------------------------------
# Load


def predict_body(text: str) -> dict:
    return {"text": text}


def embed_body(text: str) -> dict:
    return {"model": EMB_NAME, "input": [text]}


WORKLOADS = {
    # endpoint: (path, body builder)
    "predict": ("/predict", predict_body),
    "embeddings": ("/v1/embeddings", embed_body),
}


def check_response(endpoint: str, status: int, payload) -> str | None:
    if status != 200:
        return f"HTTP {status}: {str(payload)[:300]}"
    if endpoint == "predict":
        if not (isinstance(payload, dict) and isinstance(payload.get("label"), str)
                and isinstance(payload.get("score"), (int, float))):
            return f"unexpected /predict answer: {str(payload)[:300]}"
    else:
        try:
            vector = payload["data"][0]["embedding"]
        except (KeyError, IndexError, TypeError):
            return f"unexpected /v1/embeddings answer: {str(payload)[:300]}"
        if len(vector) != EMB_DIM:
            return f"embedding of {len(vector)} dimensions, expected {EMB_DIM}"
    return None


def run_wrk(url: str, bodies: Path, concurrency: int, seconds: float, threads: int,
            timeout: float) -> dict:
    threads = max(1, min(threads, concurrency))
    cmd = ["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{seconds:g}s",
           "--timeout", f"{timeout:g}s", "-s", str(LUA), url, "--", str(bodies)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                 stdin=subprocess.DEVNULL)
    try:
        out, err = proc.communicate(timeout=seconds + timeout + 60)
    finally:
        stop(proc, grace=2.0)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((l for l in out.splitlines() if l.startswith("BENCH_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise BenchError(f"wrk failed ({proc.returncode}): {shlex.join(cmd)}\n{out}\n{err}")
    result = json.loads(line[len("BENCH_JSON "):])
    result["loadgen_cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result["wrk_threads"] = threads
    return result


def measure(server: Server, endpoint: str, text_kind: str, bodies: Path, concurrency: int,
            seconds: float, args) -> dict:
    path, _ = WORKLOADS[endpoint]
    root = server.proc.pid
    pids = process_tree(root)
    sampler = Sampler(root)
    sampler.start()
    busy0, ticks0, t0 = system_busy_ticks(), cpu_ticks(pids), time.monotonic()
    try:
        w = run_wrk(server.base + path, bodies, concurrency, seconds, args.wrk_threads,
                    args.request_timeout)
    finally:
        t1 = time.monotonic()
        ticks1, busy1 = cpu_ticks(process_tree(root)), system_busy_ticks()
        peak_kb = sampler.finish()
    wall = t1 - t0
    n, lat = w["requests"], w["latency_us"]
    duration = w["duration_us"] / 1e6
    errors = w["errors"]

    def ms(key):
        return round(lat[key] / 1000.0, 2) if n else None

    point = {
        "service": server.name,
        "kind": server.kind,
        "endpoint": endpoint,
        "text": text_kind,
        "concurrency": concurrency,
        "seconds": round(duration, 2),
        "requests": n,
        "ok": n - errors["status"],
        "rps": round((n - errors["status"]) / duration, 2) if duration else 0.0,
        "p50_ms": ms("p50"),
        "p90_ms": ms("p90"),
        "p99_ms": ms("p99"),
        "max_ms": ms("max"),
        "mean_ms": round(lat["mean"] / 1000.0, 2) if n else None,
        "errors": errors,
        "errors_total": sum(errors.values()),
        "peak_rss_mib": round(peak_kb / 1024, 1),
        "hwm_mib": round(status_kb(root, "VmHWM") / 1024, 1),
        "cpu_cores": round((ticks1 - ticks0) / CLK_TCK / wall, 2) if wall else None,
        "loadgen_cpu_cores": round(w["loadgen_cpu_s"] / wall, 2) if wall else None,
        # Everything else the machine ran meanwhile (this script included): contamination.
        "other_cpu_cores": round(max(0.0, (busy1 - busy0 - (ticks1 - ticks0)) / CLK_TCK
                                     - w["loadgen_cpu_s"]) / wall, 2) if wall else None,
        "wrk_threads": w["wrk_threads"],
    }
    point["idle_wait_s"] = round(wait_idle(root), 1)
    return point


def bench_server(server: Server, version: str, args, texts: dict, bodies: dict,
                 results: dict) -> None:
    entry = {"name": server.name, "kind": server.kind, "version": version,
             "command": shlex.join(server.cmd), "env": server.shown_env}
    results["services"].append(entry)
    try:
        entry["ready_s"] = round(server.start(args.ready_timeout), 1)
        entry["idle_rss_mib"] = round(tree_rss_kb(server.proc.pid) / 1024, 1)
        log(f"{server.name} ready in {entry['ready_s']}s, RSS {entry['idle_rss_mib']} MiB")

        # Check the answers (and keep them: the labels are compared across services).
        entry["predictions"] = {}
        for kind in ("short", "long"):
            answers = []
            for text in texts[kind]:
                status, payload = http("POST", server.base + "/predict", predict_body(text))
                problem = check_response("predict", status, payload)
                if problem:
                    raise BenchError(f"{server.name} /predict: {problem}")
                answers.append({"label": payload["label"], "score": round(payload["score"], 4)})
            entry["predictions"][kind] = answers
        for text in texts["short"][:2]:
            status, payload = http("POST", server.base + "/v1/embeddings", embed_body(text))
            problem = check_response("embeddings", status, payload)
            if problem:
                raise BenchError(f"{server.name} /v1/embeddings: {problem}")

        plan = [("predict", kind, c) for kind in ("short", "long") for c in args.concurrency]
        plan += [("embeddings", "short", c) for c in args.embed_concurrency]

        if args.warmup > 0:
            for endpoint, kind in (("predict", "short"), ("predict", "long"),
                                   ("embeddings", "short")):
                log(f"{server.name}: warm-up {endpoint}/{kind} {args.warmup:g}s")
                run_wrk(server.base + WORKLOADS[endpoint][0], bodies[endpoint, kind],
                        min(8, max(args.concurrency)), args.warmup, args.wrk_threads,
                        args.request_timeout)
                wait_idle(server.proc.pid)

        for endpoint, kind, c in plan:
            point = measure(server, endpoint, kind, bodies[endpoint, kind], c, args.seconds, args)
            results["points"].append(point)
            log(f"{server.name:>10} {endpoint:<10} {kind:<5} c={c:<3} {point['rps']:8.1f} req/s  "
                f"p50 {point['p50_ms']} ms  p99 {point['p99_ms']} ms  "
                f"err {point['errors_total']}  RSS {point['peak_rss_mib']} MiB  "
                f"CPU {point['cpu_cores']}")
            if server.proc.poll() is not None:
                raise BenchError(f"{server.name} died during the run:\n{server.log_tail()}")
        entry["log_tail"] = server.log_tail(5)
    finally:
        server.stop()


# --------------------------------------------------------------------------------------------
# BENCHMARKS.md


def fmt(x, nd=1):
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:,.{nd}f}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def md_table(header: list[str], rows: list[list], align: list[str] | None = None) -> str:
    align = align or ["---"] * len(header)
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_backend() -> str:
    out = ["## Raw backend throughput", ""]
    if not BACKEND_JSON.is_file():
        out += ["No `bench/backend.json` yet: this section renders it when it exists (inference "
                "throughput of the backends alone, without HTTP).", ""]
        return "\n".join(out)
    try:
        data = json.loads(BACKEND_JSON.read_text())
    except ValueError as e:
        return "\n".join(out + [f"`bench/backend.json` is not valid JSON: {e}", ""])
    rows = None
    meta = {}
    if isinstance(data, list):
        rows = data
    elif isinstance(data, dict):
        for key in ("results", "points", "rows", "data"):
            if isinstance(data.get(key), list):
                rows = data[key]
                meta = {k: v for k, v in data.items() if k != key}
                break
        else:
            meta = data
    for key, value in meta.items():
        if isinstance(value, (dict, list)):
            value = json.dumps(value)
        out.append(f"- **{key}**: `{value}`" if key == "command" else f"- **{key}**: {value}")
    if meta:
        out.append("")
    if rows and all(isinstance(r, dict) for r in rows):
        cols: list[str] = []
        for r in rows:
            cols += [k for k in r if k not in cols]
        out.append(md_table(cols, [[fmt(r.get(c), 2) if isinstance(r.get(c), float)
                                    else fmt(r.get(c)) for c in cols] for r in rows]))
        out.append("")
    elif rows is not None:
        out += ["```json", json.dumps(rows, indent=2), "```", ""]
    out.append("Source: `bench/backend.json`.")
    out.append("")
    fp32 = next((r for r in rows or [] if isinstance(r, dict) and r.get("backend") == "ort fp32"), None)
    if fp32 and fp32.get("gflop_per_s"):
        # Peak fp32 of this CPU: AMD Zen 5 (family 26) runs two full-width 512-bit FMA pipes,
        # 2 x 16 lanes x 2 FLOP = 64 FLOP per cycle per core; at the nominal clock /proc reports.
        try:
            mhz = float(next(l.split(":")[1] for l in open("/proc/cpuinfo") if l.startswith("cpu MHz")))
        except (OSError, StopIteration, ValueError):
            mhz = None
        if mhz:
            peak = 2 * mhz / 1e3 * 64
            out += [f"Long fp32 batches (32 x 128 tokens, ~21 MFLOP per token) run at "
                    f"{fp32['gflop_per_s']:.0f} GFLOP/s: {fp32['gflop_per_s'] / peak * 100:.0f}% of this "
                    f"CPU's nominal fp32 peak of {peak:.0f} GFLOP/s (2 cores x {mhz / 1e3:.2f} GHz x 64 "
                    "FLOP/cycle, AVX-512 FMA on both pipes of a Zen 5 core); boost clocks above the "
                    "nominal one would lower the fraction.", ""]
    return "\n".join(out)


def render_overhead(points: list) -> str:
    """The server's own cost (HTTP, JSON, tokenization, queueing) at concurrency 32: time per
    answered request through HTTP against the backend's time per input in a full batch of
    the same length (bench/backend.json's bench_shapes)."""
    if not BACKEND_JSON.is_file():
        return ""
    shapes = {(r["backend"], r["batch"]): r for r in json.loads(BACKEND_JSON.read_text()).get("bench_shapes", [])}
    by = {(p["service"], p["endpoint"], p["text"], p["concurrency"]): p for p in points}
    rows = []
    services = sorted({p["service"] for p in points
                       if p["service"] != "reference" and "candle" not in p["service"]})
    for service in services:
        backend = "ort int8" if "int8" in service else "ort fp32"
        for text, batch in [("short", "32x18"), ("long", "32x160")]:
            p, shape = by.get((service, "predict", text, 32)), shapes.get((backend, batch))
            if not p or not shape or not p["rps"]:
                continue
            http_ms = 1e3 / p["rps"]
            backend_ms = shape["ms_per_batch"] / 32
            rows.append([service, text, batch, fmt(backend_ms, 3), fmt(http_ms, 3),
                         f"{(http_ms / backend_ms - 1) * 100:+.0f}%"])
    if not rows:
        return ""
    return "\n".join(["## Server overhead at concurrency 32", "",
                      md_table(["service", "text", "backend batch", "backend ms per input",
                                "HTTP ms per request (1 / req/s)", "overhead"], rows), "",
                      "The overhead is what the whole server adds per request over the backend "
                      "alone running full batches of the same length: HTTP parsing, JSON, "
                      "tokenization, queueing, metrics, and batches that are not always full "
                      "under a closed-loop load; all of it shares the same 2 cores as ONNX "
                      "Runtime's threads. A negative figure means the served batches ran faster "
                      "than the synthetic ones (the real long texts are a little shorter than "
                      "160 tokens).", ""])


def render_gateway() -> str:
    path = BENCH / "gateway-overhead.txt"
    out = ["## Gateway overhead", ""]
    if not path.is_file():
        return "\n".join(out + ["No `bench/gateway-overhead.txt` yet: `make bench` writes it.", ""])
    out += ["Keel's added latency on `POST /v1/chat/completions` over calling a minimal upstream "
            "directly, open-loop at a fixed rate on loopback (the whole keel binary: middleware, "
            "info-level JSON logs, metrics). Command: `bash bench/gateway/run.sh` "
            "(RUN_SECONDS=5 per point). Target: p99 added under 1 ms.", "",
            "```", path.read_text().strip(), "```", ""]
    return "\n".join(out)


OVERLOAD_JSON = BENCH / "overload.json"


def render_overload() -> str:
    out = ["## Bounded overload: 3x capacity, open loop", ""]
    if not OVERLOAD_JSON.is_file():
        out += ["No `bench/overload.json` yet: `make bench` writes it (`python3 bench/overload.py`).", ""]
        return "\n".join(out)
    d = json.loads(OVERLOAD_JSON.read_text())
    yes = lambda b: "yes" if b else "**no**"  # noqa: E731
    rows = []
    for r in d["runs"]:
        o, c = r["overload"], r["checks"]
        adm, ref = o["admitted"] or {}, o["refused"] or {}
        env = ", ".join(f"{k}={v}" for k, v in r["keel_env"].items()
                        if k not in ("HOST", "LOG_LEVEL", "LOG_FORMAT")) or "defaults"
        rows.append([f"`{env}`", ", ".join(f"{k}: {v}" for k, v in sorted(o["statuses"].items())),
                     fmt(adm.get("count", 0) / o["duration_s"]), fmt(adm.get("p50_ms")),
                     fmt(adm.get("p99_ms")), fmt(ref.get("p99_ms")),
                     fmt(r["light"]["admitted"]["p99_ms"]), fmt(r["busy"]["admitted"]["p99_ms"]),
                     fmt(c["admitted_p99_over_light_p99"], 1), fmt(c["admitted_p99_over_busy_p99"], 1),
                     f"{fmt(r['rss_mib']['before'], 0)} / {fmt(r['rss_mib']['peak_during_overload'], 0)}",
                     yes(c["overload_answers_2xx_or_429_503_with_retry_after"]
                         and c["nothing_dropped_by_the_generator"]),
                     yes(c["recovery_all_200"])])
    first = d["runs"][0]["overload"]
    out += [f"Command: `{d['command']}`; load from `keel-loadgen {d['loadgen_command']}`.", "",
            f"Capacity (wrk, closed loop, 32 connections, short classification texts, Keel's "
            f"defaults; 2xx only): **{fmt(d['capacity_rps'])} req/s**. Then, for each configuration, "
            "keel-loadgen offers fixed rates, open loop (requests leave on schedule whatever the "
            "server does; latency counted from each request's scheduled start): light = 10% of "
            f"capacity and busy = 70% for 15 s each, overload = {fmt(first['rate'] / d['capacity_rps'], 0)}x "
            f"capacity for {fmt(first['duration_s'], 0)} s, then light again (recovery).", "",
            md_table(["configuration", "overload answers", "admitted req/s", "admitted p50 (ms)",
                      "admitted p99 (ms)", "refused p99 (ms)", "light p99 (ms)", "busy p99 (ms)",
                      "admitted p99 / light p99", "admitted p99 / busy p99",
                      "RSS before / peak (MiB)", "every answer 2xx or 429/503 + Retry-After",
                      "recovery all 200"], rows), "",
            "With the defaults the queue is bounded by `MAX_QUEUE_REQUESTS` and by each request's "
            "deadline: admitted requests wait for the full queue (about 1,024 requests, over a "
            "second), and requests past `MAX_CONNECTIONS` get 503 `too_many_connections`. "
            "`MAX_QUEUE_WAIT_MS` trades admitted throughput for admitted latency: the worker "
            "refuses, before tokenizing, any request whose predicted wait is longer, so the "
            "admitted ones stay close to the busy-load latency and the refused ones learn it in "
            "a few milliseconds.", ""]
    return "\n".join(out)


def render_scale() -> str:
    out = ["## Scale-out: replicas behind nginx", ""]
    if not SCALE_JSON.is_file():
        out += ["No `bench/scale.json` yet: `make bench` writes it (classification, short texts, "
                "Keel replicas behind nginx on loopback, `deploy/scale_out.py --no-restart`).", ""]
        return "\n".join(out)
    data = json.loads(SCALE_JSON.read_text())
    rows = [[r["replicas"], r["clients"], r["threads"], fmt(r["requests_per_second"]),
             fmt(r["p50_ms"]), fmt(r["p99_ms"]), r["failed"]] for r in data["runs"]]
    out += [f"Command: `{data['command']}`", "",
            md_table(["replicas", "clients", "INFERENCE_THREADS each", "req/s", "p50 (ms)",
                      "p99 (ms)", "failed"], rows), "",
            "On this 2-core machine the replicas share the same two cores, so a second replica "
            "adds little: inference is CPU-bound and one replica already uses both cores. On a "
            "cluster each replica brings its own cores, and the HorizontalPodAutoscaler in "
            "`deploy/kubernetes/hpa.yaml` adds a pod when average CPU passes 70% of the 2-core "
            "request (or memory 80%): with one pod saturated (CPU ~100%), the HPA computes "
            "ceil(1 x 100/70) = 2 replicas, then keeps adding while utilisation stays above the "
            "target, up to 10; it scales down one pod a minute after 5 quiet minutes.", ""]
    return "\n".join(out)


def caveats(seconds: float, machine: dict, points: list) -> list[str]:
    """The warnings a section opens with: a smoke run, or a machine that was not idle."""
    out = []
    if seconds < SMOKE_SECONDS:
        out += [f"> **Smoke run ({seconds:g} s per point): these numbers only show that the "
                "harness works. They are not a benchmark.**", ""]
    load = machine.get("loadavg_at_start", [0])[0]
    other = max((p.get("other_cpu_cores") or 0 for p in points), default=0)
    if other > 0.25 or (machine.get("cores") and load > 0.5 * machine["cores"]):
        out += [f"> **Warning: the machine was not idle (load average {load:.1f} on "
                f"{machine.get('cores')} cores at the start; up to {other:.2f} cores used by other "
                "processes during a point): other work competed with the server and the load "
                "generator, so these numbers are not a clean measurement.**", ""]
    return out


def render(results: dict) -> str:
    m = results["machine"]
    points = results["points"]
    services = [s["name"] for s in results["services"]]
    keels = [s["name"] for s in results["services"] if s["kind"] == "keel"]
    seconds = results["settings"]["seconds"]
    by = {(p["service"], p["endpoint"], p["text"], p["concurrency"]): p for p in points}

    def ratio(name, key):
        p, r = by.get((name,) + key), by.get(("reference",) + key)
        if not p or not r or not r["rps"]:
            return "–"
        return f"{p['rps'] / r['rps']:.2f}×"

    out = ["# Benchmarks", ""]
    out.append("<!-- Generated by bench/run.py from bench/results.json; do not edit by hand. -->")
    out.append("")
    out += caveats(seconds, m, points)
    out += [
        "Keel against the Python reference service (`bench/reference/app.py`: FastAPI + a "
        "transformers pipeline / SentenceTransformer, inference inside `async def`, uvicorn, "
        "1 worker) on the same models: `sentiment-minilm-l6` for `POST /predict` and "
        "`all-MiniLM-L6-v2` for `POST /v1/embeddings` (one input per request). Load: "
        "`wrk`, closed loop, N connections each sending its next request as soon as the "
        "previous one is answered; bodies rotate among the texts in `bench/texts.json`. "
        "What each column means and the caveats: [bench/README.md](bench/README.md).",
        "",
        "Produced by:",
        "",
        "```sh",
        results["command"],
        "```",
        "",
        "## Machine",
        "",
    ]
    rows = [["CPU", m.get("cpu", "?")],
            ["cores", f"{m.get('cores')} ({m.get('cores_usable')} usable), shared by the server "
                      "and the load generator"],
            ["memory", f"{m.get('memory_gib')} GiB"],
            ["OS / kernel", f"{m.get('os', '?')} / {m.get('kernel')}"],
            ["date (UTC)", m.get("date")],
            ["load average before the run", " ".join(map(str, m.get("loadavg_at_start", [])))],
            ["CPU used by other processes during the points",
             f"at most {other:.2f} cores"],
            ["git", m.get("git", "?")]]
    st = results["settings"]
    rows += [["per point", f"{st['seconds']:g} s after {st['warmup']:g} s of warm-up per "
                           "workload; wrk threads: " + str(st["wrk_threads"])],
             ["wrk", st.get("wrk", "?")]]
    if st.get("keel_bin"):
        rows.append(["Keel binary", f"`{st['keel_bin']}`"])
    out += [md_table(["", ""], rows), "", "## Services", ""]
    rows = []
    for s in results["services"]:
        env = ", ".join(f"`{k}={v}`" for k, v in s.get("env", {}).items())
        rows.append([f"**{s['name']}**", s.get("version", ""), env,
                     fmt(s.get("ready_s")), fmt(s.get("idle_rss_mib"))])
    out += [md_table(["service", "version", "environment", "ready after (s)",
                      "idle RSS (MiB)"], rows), ""]
    ref = next((s for s in results["services"] if s["name"] == "reference"), None)
    if ref and keels:
        agree = []
        for name in keels:
            s = next(x for x in results["services"] if x["name"] == name)
            same = total = 0
            for kind in ("short", "long"):
                for a, b in zip(s.get("predictions", {}).get(kind, []),
                                ref.get("predictions", {}).get(kind, [])):
                    total += 1
                    same += a["label"] == b["label"]
            if total:
                agree.append(f"{name}: {same}/{total}")
        if agree:
            out += ["Same `/predict` label as the reference on the benchmark texts: "
                    + ", ".join(agree) + ".", ""]

    keys = sorted({(p["endpoint"], p["text"], p["concurrency"]) for p in points},
                  key=lambda k: (k[0] != "predict", k[1] != "short", k[2]))
    if "reference" in services and keels:
        out += ["## Summary: requests per second", ""]
        header = ["endpoint", "text", "concurrency", "reference"]
        for name in keels:
            header += [name, f"{name} / reference"]
        rows = []
        for key in keys:
            row = [f"`{key[0]}`", key[1], key[2],
                   fmt(by.get(("reference",) + key, {}).get("rps"))]
            for name in keels:
                row += [fmt(by.get((name,) + key, {}).get("rps")), f"**{ratio(name, key)}**"]
            rows.append(row)
        out += [md_table(header, rows), ""]

    titles = {("predict", "short"): "Classification (`POST /predict`), short texts (~12 words)",
              ("predict", "long"): "Classification (`POST /predict`), long texts (~120 words)",
              ("embeddings", "short"): "Embeddings (`POST /v1/embeddings`, 1 input per request), "
                                       "short texts (~12 words)"}
    for group in dict.fromkeys((k[0], k[1]) for k in keys):
        out += [f"## {titles.get(group, f'{group[0]}, {group[1]} texts')}", ""]
        rows = []
        for c in sorted({k[2] for k in keys if (k[0], k[1]) == group}):
            key = group + (c,)
            for name in services:
                p = by.get((name,) + key)
                if not p:
                    continue
                rows.append([c, f"**{name}**" if name != "reference" else name, fmt(p["rps"]),
                             ratio(name, key) if name != "reference" else "", fmt(p["requests"]),
                             fmt(p["p50_ms"]), fmt(p["p99_ms"]), p["errors_total"],
                             fmt(p["peak_rss_mib"], 0), fmt(p["cpu_cores"], 2),
                             fmt(p["loadgen_cpu_cores"], 2)])
        out += [md_table(["concurrency", "service", "req/s", "× reference", "requests", "p50 (ms)",
                          "p99 (ms)", "errors", "peak RSS (MiB)", "server CPU (cores)",
                          "wrk CPU (cores)"], rows), ""]
    out += ["Columns: req/s = completed 2xx answers / measured seconds; requests = answers "
            "received in the point (the sample behind the percentiles); p50/p99 from wrk's "
            "latency histogram (a request that timed out is counted in errors, not in the "
            "percentiles); errors = connect + read + write + timeout + non-2xx; peak RSS = "
            "highest sampled resident memory of the server's whole process tree during the "
            "point; server CPU = user+system CPU time of that tree / wall time (2.0 = both "
            "cores); wrk CPU = the same for the load generator, which shares the machine.", ""]
    out.append(render_backend())
    out.append(render_overhead(points))
    out.append(render_gateway())
    out.append(render_scale())
    out.append(render_overload())
    return "\n".join(out).rstrip() + "\n"


# --------------------------------------------------------------------------------------------
# Main


def parse_kv(item: str, what: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{what}: expected KEY=VAL, got {item!r}")
    return key, value


def parse_variant(spec: str) -> tuple[str, dict]:
    name, _, rest = spec.partition(":")
    if not name or name == "reference" or not all(c.isalnum() or c in "-_." for c in name):
        raise argparse.ArgumentTypeError(f"--variant: bad name {name!r}")
    env = dict(parse_kv(kv, "--variant") for kv in rest.split(",") if kv) if rest else {}
    return name, env


def parse_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def main(argv=None) -> int:
    global CLS_DIR, EMB_DIR
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20, help="load per point (default 20)")
    ap.add_argument("--warmup", type=float, default=None,
                    help="warm-up per workload before measuring (default: min(5, --seconds))")
    ap.add_argument("--only", choices=["keel", "reference"],
                    help="run only the Keel variants, or only the reference")
    ap.add_argument("--concurrency", type=parse_list, default=[1, 8, 32, 64],
                    help="connections for /predict (default 1,8,32,64)")
    ap.add_argument("--embed-concurrency", type=parse_list, default=[1, 32],
                    help="connections for /v1/embeddings (default 1,32)")
    ap.add_argument("--variant", action="append", type=parse_variant, default=[],
                    metavar="NAME[:KEY=VAL,KEY=VAL]",
                    help="a Keel variant with extra environment (repeatable; default: one "
                         "variant 'keel' with none)")
    ap.add_argument("--keel-env", action="append", default=[], metavar="KEY=VAL",
                    type=lambda s: parse_kv(s, "--keel-env"),
                    help="environment for every Keel variant (repeatable)")
    ap.add_argument("--ref-env", action="append", default=[], metavar="KEY=VAL",
                    type=lambda s: parse_kv(s, "--ref-env"),
                    help="environment for the reference service (repeatable)")
    ap.add_argument("--keel-bin", type=Path, default=None,
                    help="Keel binary (default target/release/keel, built if missing)")
    ap.add_argument("--wrk-threads", type=int, default=1,
                    help="wrk threads (default 1: the load generator shares the cores)")
    ap.add_argument("--request-timeout", type=float, default=120,
                    help="wrk's per-request timeout in seconds (default 120)")
    ap.add_argument("--ready-timeout", type=float, default=600,
                    help="seconds to wait for a server's /ready (default 600)")
    ap.add_argument("--classifier-dir", type=Path, default=CLS_DIR,
                    help=f"classifier model folder (default models/{CLS_NAME})")
    ap.add_argument("--embedder-dir", type=Path, default=EMB_DIR,
                    help=f"embedding model folder (default models/{EMB_NAME})")
    ap.add_argument("--out", type=Path, default=BENCH / "results.json")
    ap.add_argument("--markdown", type=Path, default=BENCHMARKS_MD,
                    help="where to write the report (default BENCHMARKS.md)")
    ap.add_argument("--render-only", action="store_true",
                    help="only regenerate the report from --out")
    args = ap.parse_args(argv)

    if args.render_only:
        results = json.loads(args.out.read_text())
        args.markdown.write_text(render(results))
        log(f"wrote {args.markdown}")
        return 0

    CLS_DIR, EMB_DIR = args.classifier_dir.resolve(), args.embedder_dir.resolve()
    if args.warmup is None:
        args.warmup = min(5.0, args.seconds)
    variants = args.variant or [("keel", {})]
    if len({n for n, _ in variants}) != len(variants):
        ap.error("--variant names must be unique")
    keel_env = dict(args.keel_env)

    # Ctrl-C raises KeyboardInterrupt even when started from a shell that ignores SIGINT.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)

    results = {
        "command": "python3 " + shlex.join(sys.argv),
        "argv": sys.argv,
        "machine": machine_info(),
        "settings": {
            "seconds": args.seconds, "warmup": args.warmup, "concurrency": args.concurrency,
            "embed_concurrency": args.embed_concurrency, "wrk_threads": args.wrk_threads,
            "request_timeout_s": args.request_timeout,
            "classifier": rel(CLS_DIR), "embedder": rel(EMB_DIR),
        },
        "services": [],
        "points": [],
    }
    tmp = Path(tempfile.mkdtemp(prefix="keel-bench-"))
    try:
        results["settings"]["wrk"] = ensure_wrk()
        ensure_models()
        texts = json.loads(TEXTS.read_text())
        bodies = {}
        for endpoint, kind in (("predict", "short"), ("predict", "long"),
                               ("embeddings", "short")):
            path = tmp / f"{endpoint}-{kind}.jsonl"
            build = WORKLOADS[endpoint][1]
            path.write_text("".join(json.dumps(build(t)) + "\n" for t in texts[kind]))
            bodies[endpoint, kind] = path

        servers = []
        if args.only != "reference":
            default_bin = args.keel_bin is None
            binary = (args.keel_bin or ROOT / "target" / "release" / "keel").resolve()
            version = ensure_keel(binary, default_bin)
            results["settings"]["keel_bin"] = rel(binary)
            for name, env in variants:
                # A variant may run another build (KEEL_BENCH_BIN=path), e.g. the previous
                # commit's release binary, to compare before and after in one run.
                env = dict(env)
                other = env.pop("KEEL_BENCH_BIN", None)
                if other:
                    other_bin = Path(other).resolve()
                    out = subprocess.run([str(other_bin), "--version"], capture_output=True,
                                         text=True, check=True)
                    srv = keel_server(name, other_bin, {**keel_env, **env})
                    srv.shown_env["binary"] = rel(other_bin)
                    servers.append((srv, out.stdout.strip()))
                    continue
                srv = keel_server(name, binary, {**keel_env, **env})
                servers.append((srv, version))
        if args.only != "keel":
            versions = ensure_venv()
            results["settings"]["reference_versions"] = versions
            version = ", ".join(f"{k} {versions[k]}" for k in
                                ("torch", "transformers", "sentence-transformers", "fastapi",
                                 "uvicorn") if k in versions)
            servers.append((reference_server(dict(args.ref_env)), version))

        for srv, version in servers:
            bench_server(srv, version, args, texts, bodies, results)
    except BaseException as e:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not stop the cleanup
        stop_all()
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        partial = LOG_DIR / "results.partial.json"
        results["error"] = f"{type(e).__name__}: {e}"
        partial.write_text(json.dumps(results, indent=2) + "\n")
        if isinstance(e, (BenchError, KeyboardInterrupt)):
            log("interrupted" if isinstance(e, KeyboardInterrupt) else f"error: {e}")
            log(f"partial results in {rel(partial)}; {rel(args.out)} and "
                f"{rel(args.markdown.resolve())} left as they were")
            return 130 if isinstance(e, KeyboardInterrupt) else 1
        raise
    finally:
        stop_all()
        shutil.rmtree(tmp, ignore_errors=True)

    results["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    args.markdown.write_text(render(results))
    log(f"wrote {args.out} and {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
