#!/usr/bin/env python3
"""Local-generation benchmark (issue 11): OpenAI-compatible servers side by side on one GGUF.

    python3 bench/llm.py                                   # every variant found, full run
    python3 bench/llm.py --variants llama-server-np8 --quick       # smoke run, one variant
    python3 bench/llm.py --variants keel,llama-server-np8 \\
        --keel-cmd 'PORT={port} HOST=127.0.0.1 LLM_SLOTS=8 target/release/keel serve'
    python3 bench/llm.py --variant 'mine=PORT={port} /path/to/server --threads {threads}'
    python3 bench/llm.py --render-only                     # table from the JSON results

Each variant's server is started alone (command line with placeholders, see --help), waited
for until a 1-token completion succeeds, warmed up, measured, its peak RSS (VmHWM) read, and
stopped. Every phase streams over raw HTTP (http.client, one thread per stream) so each
token's arrival is timed where it is read:

  aggregate   8 streams, closed loop, /v1/completions, distinct ~100-token prompts,
              128-token replies (max_tokens 128, ignore_eos): generated tokens/s, TTFT p50/p99
  single      1 stream, same requests: decode tokens/s after the first token
  shared      8 streams, /v1/chat/completions, one ~300-token system prompt shared by every
              request + a short distinct user message: TTFT p50 (prefix reuse), after one
              unmeasured round of 8 such requests has primed the server's caches
  distinct    as shared, but every request has its own ~300-token system prompt: the
              no-reuse baseline for the shared figure

Standard library only. Every loop is bounded by a request count and a time limit.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import platform
import random
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_OUT = ROOT / "bench" / "llm-results.json"
SLOT_CTX = 2048  # context per llama-server slot: -c = np x 2048
LLAMA_SERVER_NP = (1, 4, 8, 16)
READY_TIMEOUT_S = 300
REQUEST_TIMEOUT_S = 300

# A small fixed vocabulary of common English words: prompts built from it tokenise at
# about 1.3 tokens per word with SmolLM2's tokenizer, the counts are read back from `usage`.
WORDS = (
    "the of and to in is was for on that with as by at from his her an were are which this "
    "be or has had not but what all when we there can been one would their will more if no "
    "out so said who about up them some could him into time has two like other then its "
    "people my over know than first water years way may down only long day most made after "
    "find many back new use between house world little where under city number open light "
    "river garden morning window paper music story table winter market island bridge forest "
    "letter mountain station teacher kitchen doctor village engine summer silver question"
).split()


# --- workload --------------------------------------------------------------------------------


def words(rng: random.Random, n: int) -> str:
    out = []
    for i in range(n):
        w = rng.choice(WORDS)
        out.append(w.capitalize() if i == 0 or out[-1].endswith(".") else w)
        if i % 12 == 11:
            out[-1] += "."
    return " ".join(out)


def completion_prompts(seed: int, count: int, n_words: int) -> list[str]:
    rng = random.Random(seed)
    return [f"Request {i}. " + words(rng, n_words) for i in range(count)]


def system_prompt(rng: random.Random, n_words: int) -> str:
    return "You are a careful assistant for a city library. " + words(rng, n_words)


def user_messages(seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    return [f"Question {i}: what about the {rng.choice(WORDS)} and the {rng.choice(WORDS)}?"
            for i in range(count)]


# --- one streamed request --------------------------------------------------------------------


@dataclass
class Result:
    ok: bool
    ttft_s: float | None = None
    total_s: float = 0.0
    tokens: int = 0  # completion tokens: usage when the server sends it, else content chunks
    chunks: int = 0
    prompt_tokens: int | None = None
    first_s: float | None = None  # arrival times relative to send, of first / last content
    last_s: float | None = None
    error: str | None = None


def stream(port: int, path: str, body: dict) -> Result:
    body = dict(body, stream=True, stream_options={"include_usage": True})
    data = json.dumps(body).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S)
    t0 = time.perf_counter()
    res = Result(ok=False)
    usage = None
    try:
        conn.request("POST", path, body=data, headers={"content-type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            res.error = f"HTTP {resp.status}: {resp.read(300)!r}"
            return res
        while True:
            line = resp.readline()
            if not line:
                break
            now = time.perf_counter() - t0
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                break
            msg = json.loads(payload)
            if msg.get("usage"):
                usage = msg["usage"]
            for choice in msg.get("choices") or []:
                text = choice.get("text")
                if text is None:
                    text = (choice.get("delta") or {}).get("content")
                if text:
                    res.chunks += 1
                    if res.first_s is None:
                        res.first_s = now
                    res.last_s = now
        res.total_s = time.perf_counter() - t0
        res.ttft_s = res.first_s
        res.tokens = usage["completion_tokens"] if usage else res.chunks
        res.prompt_tokens = usage.get("prompt_tokens") if usage else None
        res.ok = res.first_s is not None
        if not res.ok:
            res.error = "no content"
    except (OSError, http.client.HTTPException, ValueError) as e:
        res.error = f"{type(e).__name__}: {e}"
        res.total_s = time.perf_counter() - t0
    finally:
        conn.close()
    return res


def run_phase(port: int, requests: list[tuple[str, dict]], streams: int, time_limit: float):
    """Closed loop: `streams` workers take the next request until the list or the time runs
    out. Returns (results, wall seconds)."""
    lock = threading.Lock()
    queue = list(reversed(requests))
    results: list[Result] = []
    deadline = time.perf_counter() + time_limit

    def worker():
        while True:
            with lock:
                if not queue or time.perf_counter() > deadline:
                    return
                path, body = queue.pop()
            r = stream(port, path, body)
            with lock:
                results.append(r)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(time_limit + REQUEST_TIMEOUT_S)
    return results, time.perf_counter() - t0


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, round(p / 100 * (len(s) - 1))))
    return s[k]


def summarize(results: list[Result], wall: float) -> dict:
    ok = [r for r in results if r.ok]
    ttfts = [r.ttft_s * 1000 for r in ok]
    decode = [(r.tokens - 1) / (r.last_s - r.first_s) for r in ok
              if r.tokens > 1 and r.last_s > r.first_s]
    prompt_tokens = [r.prompt_tokens for r in ok if r.prompt_tokens is not None]
    return {
        "requests": len(results),
        "errors": len(results) - len(ok),
        "first_error": next((r.error for r in results if not r.ok), None),
        "wall_s": round(wall, 3),
        "completion_tokens": sum(r.tokens for r in ok),
        "tokens_per_s": round(sum(r.tokens for r in ok) / wall, 2) if wall > 0 else None,
        "ttft_ms_p50": round(pct(ttfts, 50), 1) if ttfts else None,
        "ttft_ms_p99": round(pct(ttfts, 99), 1) if ttfts else None,
        "ttft_ms_max": round(max(ttfts), 1) if ttfts else None,
        "decode_tokens_per_s_mean": round(statistics.mean(decode), 2) if decode else None,
        "prompt_tokens_mean": round(statistics.mean(prompt_tokens), 1) if prompt_tokens else None,
        "completion_tokens_mean": round(statistics.mean([r.tokens for r in ok]), 1) if ok else None,
    }


# --- servers ---------------------------------------------------------------------------------


@dataclass
class Variant:
    name: str
    cmd: str  # shell-like: leading KEY=VAL words are environment, placeholders in {}
    kind: str = "custom"
    np: int | None = None
    body: dict = field(default_factory=dict)  # merged into every request body


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def expand(cmd: str, values: dict) -> tuple[dict, list[str]]:
    words_ = [w.format(**values) for w in shlex.split(cmd)]
    env = {}
    while words_ and "=" in words_[0] and not words_[0].startswith(("-", "/", ".")):
        k, v = words_.pop(0).split("=", 1)
        env[k] = v
    return env, words_


def vm_hwm_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class Server:
    def __init__(self, variant: Variant, values: dict, log_dir: Path):
        self.variant = variant
        self.port = values["port"]
        env_extra, argv = expand(variant.cmd, values)
        env = dict(os.environ, **env_extra)
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{variant.name}.log"
        self.log = open(self.log_path, "wb")
        self.argv, self.env_extra = argv, env_extra
        self.proc = subprocess.Popen(argv, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     cwd=ROOT, start_new_session=True)

    def wait_ready(self, model_name: str) -> float:
        t0 = time.perf_counter()
        body = {"model": model_name, "prompt": "Hello", "max_tokens": 1, "temperature": 0}
        while time.perf_counter() - t0 < READY_TIMEOUT_S:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.variant.name} exited with {self.proc.returncode};"
                                   f" log: {self.log_path}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                conn.request("POST", "/v1/completions", body=json.dumps(body),
                             headers={"content-type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                conn.close()
                if resp.status == 200:
                    return time.perf_counter() - t0
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.variant.name} not ready in {READY_TIMEOUT_S} s;"
                           f" log: {self.log_path}")

    def peak_rss_mib(self) -> float | None:
        kib = vm_hwm_kib(self.proc.pid)
        return round(kib / 1024, 1) if kib else None

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log.close()


def builtin_variants(args) -> dict[str, Variant]:
    v = {}
    server = args.llama_server
    for np in LLAMA_SERVER_NP:
        v[f"llama-server-np{np}"] = Variant(
            name=f"llama-server-np{np}", kind="llama-server", np=np,
            cmd=f"{shlex.quote(str(server))} -m {{model}} --host 127.0.0.1 --port {{port}}"
                f" -t {{threads}} -tb {{threads}} -np {np} -c {np * SLOT_CTX} --cont-batching",
        )
    py = ROOT / ".cache" / "bench-llm-venv" / "bin" / "python"
    # llama-cpp-python has no ignore_eos: a -100 bias on the end-of-generation tokens
    # (<|endoftext|> 0, <|im_end|> 2 in SmolLM2) makes it run to max_tokens as well.
    v["llama-cpp-python"] = Variant(
        name="llama-cpp-python", kind="llama-cpp-python",
        body={"logit_bias": {"0": -100, "2": -100}},
        cmd=f"{shlex.quote(str(py))} -m llama_cpp.server --model {{model}} --host 127.0.0.1"
            f" --port {{port}} --n_threads {{threads}} --n_threads_batch {{threads}}"
            f" --n_ctx {SLOT_CTX} --interrupt_requests False",
    )
    v["keel"] = Variant(name="keel", kind="keel", cmd=args.keel_cmd)
    return v


def available(variant: Variant) -> str | None:
    """Why a variant cannot run here, or None."""
    try:
        _, argv = expand(variant.cmd, {"port": 0, "model": "", "threads": 1, "root": ROOT,
                                       "model_name": ""})
    except (KeyError, ValueError) as e:
        return f"bad command line: {e}"
    if not argv:
        return "empty command line"
    exe = Path(argv[0])
    if "/" in argv[0] and not (exe if exe.is_absolute() else ROOT / exe).exists():
        return f"{argv[0]} not found"
    return None


# --- one variant ------------------------------------------------------------------------------


def bench_variant(variant: Variant, args) -> dict:
    port = free_port()
    values = {"port": port, "model": str(args.model), "threads": args.threads, "root": ROOT,
              "model_name": args.request_model}
    server = Server(variant, values, ROOT / ".cache" / "bench-llm-logs")
    out: dict = {"variant": variant.name, "kind": variant.kind, "np": variant.np,
                 "argv": server.argv, "env": server.env_extra, "body_extra": variant.body}
    try:
        out["ready_s"] = round(server.wait_ready(args.request_model), 2)
        q = args.scale
        seed = args.seed
        n_agg, n_single = max(args.streams, int(32 * q)), max(2, int(4 * q))
        comp = completion_prompts(seed, n_agg + n_single + 2, args.prompt_words)
        base = {"model": args.request_model, "max_tokens": args.max_tokens, "temperature": 0,
                "ignore_eos": True, **variant.body}
        # Warm-up: two requests, not measured.
        run_phase(port, [("/v1/completions", dict(base, prompt=p, max_tokens=8))
                         for p in comp[-2:]], 2, 60)

        reqs = [("/v1/completions", dict(base, prompt=p)) for p in comp[:n_agg]]
        res, wall = run_phase(port, reqs, args.streams, args.phase_seconds)
        out["aggregate"] = summarize(res, wall)
        log(variant.name, "aggregate", out["aggregate"])

        reqs = [("/v1/completions", dict(base, prompt=p))
                for p in comp[n_agg: n_agg + n_single]]
        res, wall = run_phase(port, reqs, 1, args.phase_seconds)
        out["single"] = summarize(res, wall)
        log(variant.name, "single", out["single"])

        rng = random.Random(seed + 1)
        shared_sys = system_prompt(rng, args.system_words)
        users = user_messages(seed + 2, 64)
        n_chat = max(8, int(16 * q))
        chat = {"model": args.request_model, "max_tokens": args.chat_max_tokens,
                "temperature": 0, "ignore_eos": True, **variant.body}
        # One round of `streams` requests first, so that the shared prefix is cached wherever
        # the server caches it (llama-server: in each slot), as in steady state.
        run_phase(port, [("/v1/chat/completions", dict(chat, messages=[
            {"role": "system", "content": shared_sys},
            {"role": "user", "content": u}])) for u in users[-args.streams:]],
            args.streams, args.phase_seconds)
        reqs = [("/v1/chat/completions", dict(chat, messages=[
            {"role": "system", "content": shared_sys},
            {"role": "user", "content": u}])) for u in users[:n_chat]]
        res, wall = run_phase(port, reqs, args.streams, args.phase_seconds)
        out["shared_prefix"] = summarize(res, wall)
        log(variant.name, "shared", out["shared_prefix"])

        reqs = [("/v1/chat/completions", dict(chat, messages=[
            {"role": "system", "content": system_prompt(rng, args.system_words)},
            {"role": "user", "content": u}])) for u in users[n_chat: 2 * n_chat]]
        res, wall = run_phase(port, reqs, args.streams, args.phase_seconds)
        out["distinct_prefix"] = summarize(res, wall)
        log(variant.name, "distinct", out["distinct_prefix"])
    except RuntimeError as e:
        out["error"] = str(e)
        log(variant.name, "error", str(e))
    finally:
        out["peak_rss_mib"] = server.peak_rss_mib()
        server.stop()
        out["log"] = str(server.log_path.relative_to(ROOT))
    return out


def log(name, phase, what):
    if isinstance(what, dict):
        what = ", ".join(f"{k}={v}" for k, v in what.items()
                         if k in ("requests", "errors", "tokens_per_s", "ttft_ms_p50",
                                  "ttft_ms_p99", "decode_tokens_per_s_mean",
                                  "prompt_tokens_mean", "completion_tokens_mean", "first_error")
                         and v is not None)
    print(f"[{dt.datetime.now():%H:%M:%S}] {name} {phase}: {what}", file=sys.stderr, flush=True)


# --- report ----------------------------------------------------------------------------------

METRICS = [
    # (label, phase, key, better)
    ("aggregate tok/s (8 streams)", "aggregate", "tokens_per_s", "max"),
    ("single-stream decode tok/s", "single", "decode_tokens_per_s_mean", "max"),
    ("TTFT p50 ms (8 streams)", "aggregate", "ttft_ms_p50", "min"),
    ("TTFT p99 ms (8 streams)", "aggregate", "ttft_ms_p99", "min"),
    ("TTFT p50 ms, shared 300-tok system", "shared_prefix", "ttft_ms_p50", "min"),
    ("TTFT p50 ms, distinct 300-tok system", "distinct_prefix", "ttft_ms_p50", "min"),
    ("peak RSS MiB", None, "peak_rss_mib", "min"),
]


def metric(run: dict, phase, key):
    return run.get(key) if phase is None else (run.get(phase) or {}).get(key)


def render(doc: dict) -> str:
    runs = [r for r in doc["runs"] if "error" not in r]
    cols = [r["variant"] for r in runs]
    ls_runs = [r for r in runs if r["kind"] == "llama-server"]
    lines = []
    header = ["metric"] + cols + (["llama-server best (-np)"] if ls_runs else [])
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for label, phase, key, better in METRICS:
        row = [label]
        for r in runs:
            v = metric(r, phase, key)
            row.append("-" if v is None else f"{v:g}")
        if ls_runs:
            vals = [(metric(r, phase, key), r["np"]) for r in ls_runs
                    if metric(r, phase, key) is not None]
            if vals:
                best = (max if better == "max" else min)(vals, key=lambda t: t[0])
                row.append(f"{best[0]:g} (-np {best[1]})")
            else:
                row.append("-")
        lines.append("| " + " | ".join(row) + " |")
    failed = [r for r in doc["runs"] if "error" in r]
    for r in failed:
        lines.append(f"\n{r['variant']}: failed: {r['error']}")
    m = doc["meta"]
    lines.append(f"\n{m['model']}, {m['threads']} threads, {m['cpu']}, {m['date']}; "
                 f"{m['streams']} streams, max_tokens {m['max_tokens']} (chat "
                 f"{m['chat_max_tokens']}), scale {m['scale']}.")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Placeholders in command lines: {port} {model} "
                                        "{threads} {model_name} {root}. Leading KEY=VAL words "
                                        "are set in the server's environment.")
    ap.add_argument("--variants", default=None,
                    help="comma list of built-in variants: keel, llama-server-np1, -np4, -np8, "
                         "-np16, llama-cpp-python (default: all whose program exists)")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=CMD",
                    help="an extra variant: a name and its command line (repeatable)")
    ap.add_argument("--variant-body", action="append", default=[], metavar="NAME=JSON",
                    help="extra JSON fields for every request to variant NAME (repeatable)")
    ap.add_argument("--keel-cmd",
                    default="PORT={port} HOST=127.0.0.1 LOG_LEVEL=warn "
                            "target/release/keel serve",
                    help="command line of the keel variant (default: %(default)s)")
    ap.add_argument("--llama-server", type=Path, default=None,
                    help="llama-server binary (default: .cache/llama.cpp-build/*/bin/)")
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--request-model", default=None,
                    help="the `model` field sent (default: the GGUF's file stem)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--chat-max-tokens", type=int, default=16,
                    help="reply length in the system-prompt phases (they time the first token)")
    ap.add_argument("--prompt-words", type=int, default=75,
                    help="words per completion prompt (~100 tokens at 75)")
    ap.add_argument("--system-words", type=int, default=230,
                    help="words in the system prompt (~300 tokens at 230)")
    ap.add_argument("--scale", type=float, default=1.0,
                    help="request counts x this (1: 32 aggregate, 4 single, 16 + 16 chat)")
    ap.add_argument("--phase-seconds", type=float, default=240,
                    help="no new request is started in a phase after this")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: --scale 0.25 --max-tokens 32 --phase-seconds 60")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--render-only", action="store_true")
    args = ap.parse_args()

    if args.render_only:
        print(render(json.loads(args.out.read_text())))
        return
    if args.quick:
        args.scale, args.max_tokens, args.phase_seconds = 0.25, 32, 60
    if args.request_model is None:
        args.request_model = args.model.stem
    if args.llama_server is None:
        found = sorted((ROOT / ".cache" / "llama.cpp-build").glob("*/bin/llama-server"),
                       key=os.path.getmtime)
        args.llama_server = found[-1] if found else ROOT / ".cache/llama.cpp-build/bin/llama-server"
    if not args.model.exists():
        sys.exit(f"{args.model} not found")

    builtins = builtin_variants(args)
    if args.variants:
        names = [n.strip() for n in args.variants.split(",") if n.strip()]
        unknown = [n for n in names if n not in builtins]
        if unknown:
            sys.exit(f"unknown variants {unknown}; built-in: {', '.join(builtins)}")
        chosen = [builtins[n] for n in names]
    else:
        chosen = [v for v in builtins.values() if available(v) is None]
    for spec in args.variant:
        name, _, cmd = spec.partition("=")
        chosen.append(Variant(name=name, cmd=cmd))
    for spec in args.variant_body:
        name, _, extra = spec.partition("=")
        for v in chosen:
            if v.name == name:
                v.body = {**v.body, **json.loads(extra)}
    for v in chosen:
        why = available(v)
        if why:
            sys.exit(f"{v.name}: {why}")

    meta = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "model": args.model.name, "request_model": args.request_model,
        "threads": args.threads, "streams": args.streams, "max_tokens": args.max_tokens,
        "chat_max_tokens": args.chat_max_tokens, "prompt_words": args.prompt_words,
        "system_words": args.system_words, "scale": args.scale, "seed": args.seed,
        "cpu": cpu_name(), "cpus": os.cpu_count(), "python": platform.python_version(),
        "llama_server": str(args.llama_server), "llama_cpp_python": llama_cpp_python_version(),
    }
    runs = []
    for v in chosen:
        log(v.name, "start", v.cmd)
        runs.append(bench_variant(v, args))
        doc = {"meta": meta, "runs": runs}
        args.out.write_text(json.dumps(doc, indent=1) + "\n")  # after each, for partial runs
    print(render({"meta": meta, "runs": runs}))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def llama_cpp_python_version() -> str | None:
    py = ROOT / ".cache" / "bench-llm-venv" / "bin" / "python"
    if not py.exists():
        return None
    r = subprocess.run([str(py), "-c", "import llama_cpp; print(llama_cpp.__version__)"],
                       capture_output=True, text=True, timeout=60)
    return r.stdout.strip() or None


if __name__ == "__main__":
    main()
