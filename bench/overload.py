#!/usr/bin/env python3
"""Bounded overload: Keel offered 3x its measured capacity for 30 s, open loop.

    python3 bench/overload.py                 # writes bench/overload.json (BENCHMARKS.md
                                              # renders it: python3 bench/run.py --render-only)
    python3 bench/overload.py --seconds 10 --config tight:MAX_QUEUE_WAIT_MS=50

Runs each configuration (default: Keel's defaults, MAX_QUEUE_WAIT_MS=20 and =5) on its own
Keel (release build, default models), in these steps:
 1. capacity: wrk, closed loop, 32 connections, short classification texts, 15 s;
 2. baselines, open loop with keel-loadgen: light (10% of capacity) and busy (70%), 15 s each;
 3. overload: 3x capacity for 30 s, open loop (requests leave on schedule whatever the server
    answers), the server's RSS sampled every 0.2 s;
 4. recovery: light load again for 10 s.
Every answer must be 2xx, or 429/503 with Retry-After; the admitted (2xx) latencies are
measured from each request's scheduled start, so queueing anywhere counts.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402  (the harness's server, wrk and sampling helpers)

ROOT = bench.ROOT
OUT = bench.BENCH / "overload.json"
LOADGEN = ROOT / "target" / "release" / "keel-loadgen"
KEEL = ROOT / "target" / "release" / "keel"


def loadgen(url: str, bodies: Path, rate: float, seconds: float) -> dict:
    cmd = [str(LOADGEN), "--url", url, "--bodies", str(bodies), "--rate", f"{rate:.1f}",
           "--duration", str(seconds)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
    if out.returncode != 0:
        raise bench.BenchError(f"keel-loadgen failed: {out.stderr}")
    result = json.loads(out.stdout)
    result["command"] = " ".join(cmd[1:]).replace(str(bodies), "BODIES").replace(url, "URL")
    return result


def well_answered(r: dict) -> bool:
    allowed = {"200", "429", "503"}
    return set(r["statuses"]) <= allowed and r["refused_without_retry_after"] == 0


def measure_capacity(bodies: Path) -> tuple[float, dict]:
    """2xx per second under wrk's closed loop at 32 connections, on Keel's defaults (a wait
    bound would refuse some of wrk's requests and understate what the server can do)."""
    server = bench.keel_server("keel-capacity", KEEL, {})
    server.start(ready_timeout=180)
    url = server.base + "/predict"
    try:
        bench.log("capacity: wrk c=32, 15 s")
        bench.run_wrk(url, bodies, 32, 5, 1, 30)  # warm-up
        wrk = bench.run_wrk(url, bodies, 32, 15, 1, 30)
    finally:
        server.stop()
    ok = wrk["requests"] - wrk["errors"]["status"]
    capacity = ok / (wrk["duration_us"] / 1e6)
    bench.log(f"capacity {capacity:.0f} req/s")
    return capacity, wrk


def run_config(name: str, extra: dict, bodies: Path, capacity: float, args) -> dict:
    server = bench.keel_server(f"keel-overload-{name}", KEEL, extra)
    server.start(ready_timeout=180)
    url = server.base + "/predict"
    try:
        # Warm-up at the busy rate, so the worker has learned its pace.
        loadgen(url, bodies, 0.7 * capacity, 5)
        bench.wait_idle(server.proc.pid)
        light = loadgen(url, bodies, 0.1 * capacity, 15)
        busy = loadgen(url, bodies, 0.7 * capacity, 15)
        bench.wait_idle(server.proc.pid)
        rss_before_kb = bench.tree_rss_kb(server.proc.pid)
        sampler = bench.Sampler(server.proc.pid)
        sampler.start()
        bench.log(f"[{name}] overload: {args.factor:g} x {capacity:.0f} req/s for {args.seconds:g} s")
        over = loadgen(url, bodies, args.factor * capacity, args.seconds)
        peak_kb = sampler.finish()
        bench.wait_idle(server.proc.pid)
        after = loadgen(url, bodies, 0.1 * capacity, 10)
        rss_after_kb = bench.tree_rss_kb(server.proc.pid)
    finally:
        server.stop()
    p99 = over["admitted"]["p99_ms"] if over["admitted"] else None
    return {
        "name": name,
        "keel_env": {k: v for k, v in server.shown_env.items() if k != "MODELS"},
        "light": light, "busy": busy, "overload": over, "recovery": after,
        "rss_mib": {"before": rss_before_kb / 1024, "peak_during_overload": peak_kb / 1024,
                    "after": rss_after_kb / 1024},
        "checks": {
            "overload_answers_2xx_or_429_503_with_retry_after": well_answered(over),
            "nothing_dropped_by_the_generator": over["dropped_by_generator"] == 0,
            "recovery_all_200": set(after["statuses"]) == {"200"},
            "admitted_p99_over_light_p99": p99 / light["admitted"]["p99_ms"] if p99 else None,
            "admitted_p99_over_busy_p99": p99 / busy["admitted"]["p99_ms"] if p99 else None,
        },
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=30.0, help="overload duration (default 30)")
    ap.add_argument("--factor", type=float, default=3.0, help="times capacity (default 3)")
    ap.add_argument("--config", action="append", default=[], metavar="NAME:K=V,K=V",
                    help="a Keel configuration to run (repeatable)")
    args = ap.parse_args(argv)
    configs = [bench.parse_variant(c) for c in args.config] or [
        ("defaults", {}), ("wait-20ms", {"MAX_QUEUE_WAIT_MS": "20"}),
        ("wait-5ms", {"MAX_QUEUE_WAIT_MS": "5"})]

    bench.ensure_wrk()
    bench.ensure_models()
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "keel", "-p", "keel-loadgen"],
                   cwd=ROOT, check=True)
    texts = json.loads(bench.TEXTS.read_text())["short"]
    tmp = Path(tempfile.mkdtemp(prefix="keel-overload-"))
    bodies = tmp / "predict-short.jsonl"
    bodies.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    capacity, wrk = measure_capacity(bodies)
    runs = [run_config(name, extra, bodies, capacity, args) for name, extra in configs]
    result = {
        "capacity_rps": capacity,
        "capacity_wrk": wrk,
        "command": "python3 bench/overload.py"
                   + "".join(f" --config {c}" for c in args.config)
                   + (f" --seconds {args.seconds:g}" if args.seconds != 30 else "")
                   + (f" --factor {args.factor:g}" if args.factor != 3 else ""),
        "loadgen_command": runs[0]["overload"]["command"],
        "machine": bench.machine_info(),
        "runs": runs,
    }
    OUT.write_text(json.dumps(result, indent=2))
    for r in runs:
        print(r["name"], json.dumps({"capacity_rps": capacity, "rss_mib": r["rss_mib"],
                                     "checks": r["checks"], "statuses": r["overload"]["statuses"],
                                     "light": r["light"]["admitted"], "busy": r["busy"]["admitted"],
                                     "overload": r["overload"]["admitted"],
                                     "refused": r["overload"]["refused"]}, indent=1))
    return 0 if all(r["checks"]["overload_answers_2xx_or_429_503_with_retry_after"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
