#!/usr/bin/env python3
"""Throughput of 1 and 2 Keel replicas behind nginx (no restarts), written to bench/scale.json
for BENCHMARKS.md. Run by `make bench` after bench/run.py."""

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
SECONDS = sys.argv[1] if len(sys.argv) > 1 else "20"


def main():
    runs = []
    base = [sys.executable, "deploy/scale_out.py", "--keel", "target/release/keel", "--no-restart",
            "--clients", "32", "--seconds", SECONDS]
    for replicas, threads in [(1, 2), (2, 1)]:
        out = ROOT / ".cache" / f"scale-{replicas}.json"
        out.parent.mkdir(exist_ok=True)
        cmd = base + ["--replicas", str(replicas), "--threads", str(threads), "--json", str(out)]
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        result = json.loads(out.read_text())
        result["threads"] = threads
        runs.append(result)
    data = {"command": "python3 bench/scale.py " + SECONDS + "  (runs: " + " ".join(base[1:]) + " --replicas N --threads T)",
            "runs": runs}
    (ROOT / "bench" / "scale.json").write_text(json.dumps(data, indent=2))
    print(json.dumps(data, indent=2))


if __name__ == "__main__":
    main()
