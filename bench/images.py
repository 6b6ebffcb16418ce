#!/usr/bin/env python3
"""Image classification benchmark: Keel against a Python reference, 640x480 JPEG uploads.

    python3 bench/images.py                    # full run (20 s per point), writes
                                               # bench/images-results.json and its section
                                               # of BENCHMARKS.md
    python3 bench/images.py --only reference --seconds 3 --concurrency 1,8     # smoke run
    python3 bench/images.py --render-only      # the BENCHMARKS.md section from the JSON

Both services classify with EfficientNet-Lite0 from the same folder (models/efficientnet-lite0):
Keel (`target/release/keel serve`, that one model) and `bench/images/reference/app.py`
(FastAPI + UploadFile, PIL decode, torchvision-style Resize(256) + CenterCrop(224) with PIL,
numpy normalisation, an ONNX Runtime session on the same network, built from the same
safetensors by `bench/images/reference/build_onnx.py`; uvicorn, 1 worker). Each is started
alone, its answers on the five photos checked, warmed up, then loaded with wrk
(`bench/wrk/upload.lua`: multipart/form-data, one `file` part per request, rotating through
the JPEGs) at each concurrency; then stopped. Besides run.py's figures (images/s,
percentiles, errors, peak RSS, CPU) each point records where the server's time went, from
the servers' own timers differenced over the point: Keel's /metrics histograms
(keel_image_decode_seconds, keel_image_preprocess_seconds, keel_inference_duration_seconds,
keel_queue_wait_seconds, keel_batch_size) and the reference's GET /stats.

The server, wrk and sampling helpers are run.py's (imported); standard library only. Points
shorter than 10 s make a smoke run: its results go to .cache/bench-logs/ and the report is
printed, never written into BENCHMARKS.md. See bench/README.md for the caveats.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402  (the harness's server, wrk and sampling helpers)

ROOT = bench.ROOT
IMAGES = bench.BENCH / "images"
REF_DIR = IMAGES / "reference"
REQUIREMENTS = IMAGES / "requirements.txt"
VENV = ROOT / ".cache" / "bench-images-venv"
CACHE = ROOT / ".cache" / "bench-images"
PHOTOS_DIR = ROOT / ".cache" / "test-images"
UPLOAD_LUA = bench.BENCH / "wrk" / "upload.lua"
OUT = bench.BENCH / "images-results.json"
SMOKE_OUT = bench.LOG_DIR / "images-results.smoke.json"

MODEL_NAME = "efficientnet-lite0"
MODEL_DIR = ROOT / "models" / MODEL_NAME
# scripts/fetch-test-images.sh extracts these from scikit-image's wheel (sample photos).
PHOTOS = ["coffee.png", "chelsea.png", "camera.png", "motorcycle_left.png", "rocket.jpg"]
EXPECTED = {"coffee": "espresso"}  # a top-1 both services must agree with ImageNet on
WIDTH, HEIGHT, QUALITY = 640, 480, 90
BOUNDARY = "keel-bench-images-2f9c41d7"  # upload.lua reads it back from each body's first line
SECTION = "## Image classification (`POST /predict`, 640x480 JPEG uploads)"
GOAL_RATIO = 4.0
GOAL_CONCURRENCY = 32
# Settings a run must not inherit from the caller beyond run.py's list (/metrics has to stay
# on the main port for the stage figures).
EXTRA_KEEL_SETTINGS = {"METRICS_PORT"}

log = bench.log


# --------------------------------------------------------------------------------------------
# Set-up: venv, ONNX graph, JPEGs, request bodies


def ensure_venv() -> dict:
    """.cache/bench-images-venv from bench/images/requirements.txt, re-installed when the
    requirements are newer than its stamp (the same stamp `make bench-images` keeps)."""
    stamp, python = VENV / ".installed", VENV / "bin" / "python"
    if not (python.exists() and stamp.exists()
            and stamp.stat().st_mtime >= REQUIREMENTS.stat().st_mtime):
        log(f"installing the reference service into {bench.rel(VENV)} (one time, ~280 MB)")
        if not python.exists():
            bench.run_checked([sys.executable, "-m", "venv", str(VENV)])
        bench.run_checked([str(python), "-m", "pip", "install", "--disable-pip-version-check",
                           "-q", "-r", str(REQUIREMENTS)])
        stamp.touch()
    probe = ("import json, platform, importlib.metadata as m; print(json.dumps(dict("
             "{p: m.version(p) for p in ['fastapi', 'uvicorn', 'python-multipart', 'pillow', "
             "'numpy', 'onnxruntime', 'onnx']}, python=platform.python_version())))")
    out = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def ensure_model(model_dir: Path) -> None:
    if not (model_dir / "model.safetensors").is_file():
        log("image model missing: running scripts/fetch-models.sh")
        bench.run_checked(["bash", "scripts/fetch-models.sh"])
    for name in ("model.safetensors", "config.json", "preprocessor_config.json"):
        if not (model_dir / name).is_file():
            raise bench.BenchError(f"{bench.rel(model_dir)}/{name} is missing")


def ensure_onnx(model_dir: Path) -> Path:
    """The reference's ONNX graph, rebuilt when the model or the builder is newer."""
    onnx_path = CACHE / f"{model_dir.name}.onnx"
    builder = REF_DIR / "build_onnx.py"
    sources = [model_dir / "model.safetensors", model_dir / "config.json",
               model_dir / "preprocessor_config.json", builder]
    if not onnx_path.exists() or onnx_path.stat().st_mtime < max(p.stat().st_mtime for p in sources):
        bench.run_checked([str(VENV / "bin" / "python"), str(builder), "--model-dir",
                           str(model_dir), "--out", str(onnx_path)])
    return onnx_path


# Run in the venv (Pillow): each photo to RGB, scaled to cover 640x480, centre-cropped,
# baseline JPEG at quality 90 (Pillow's default 4:2:0 chroma subsampling).
MAKE_JPEGS = """
import sys
from PIL import Image, ImageOps
w, h, q, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
for src in sys.argv[5:]:
    name = src.rsplit('/', 1)[-1].rsplit('.', 1)[0]
    with Image.open(src) as im:
        im = ImageOps.fit(im.convert('RGB'), (w, h), Image.LANCZOS)
    im.save(f'{out}/{name}.jpg', 'JPEG', quality=q)
"""


def ensure_jpegs() -> list[Path]:
    """The benchmark's JPEGs in .cache/bench-images/, made from the test photos once."""
    sources = [PHOTOS_DIR / p for p in PHOTOS]
    if not all(p.is_file() for p in sources):
        script = ROOT / "scripts" / "fetch-test-images.sh"
        if not script.is_file():
            raise bench.BenchError(f"{bench.rel(PHOTOS_DIR)} lacks the test photos and "
                                   "scripts/fetch-test-images.sh is missing")
        bench.run_checked(["bash", str(script)])
    jpegs = [CACHE / (p.split(".")[0] + ".jpg") for p in PHOTOS]
    newest = max(p.stat().st_mtime for p in sources)
    if not all(j.is_file() and j.stat().st_mtime >= newest for j in jpegs):
        CACHE.mkdir(parents=True, exist_ok=True)
        bench.run_checked([str(VENV / "bin" / "python"), "-c", MAKE_JPEGS, str(WIDTH),
                           str(HEIGHT), str(QUALITY), str(CACHE)] + [str(s) for s in sources])
    return jpegs


def multipart_body(jpeg: Path) -> bytes:
    data = jpeg.read_bytes()
    if BOUNDARY.encode() in data:
        raise bench.BenchError(f"{jpeg} contains the multipart boundary")
    head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"{jpeg.name}\"\r\nContent-Type: image/jpeg\r\n\r\n").encode()
    return head + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def write_bodies(jpegs: list[Path], tmp: Path) -> Path:
    """One body file per JPEG and the list upload.lua reads; returns the list."""
    paths = []
    for jpeg in jpegs:
        path = tmp / f"{jpeg.stem}.body"
        path.write_bytes(multipart_body(jpeg))
        paths.append(path)
    listing = tmp / "bodies.txt"
    listing.write_text("".join(f"{p}\n" for p in paths))
    return listing


# --------------------------------------------------------------------------------------------
# Servers


def keel_server(binary: Path, model_dir: Path, extra: dict) -> bench.Server:
    env = {k: v for k, v in os.environ.items()
           if k not in bench.KEEL_SETTINGS | EXTRA_KEEL_SETTINGS
           and not k.startswith(bench.KEEL_PREFIXES)}
    shown = {"HOST": "127.0.0.1", "MODELS": f"{MODEL_NAME}={bench.rel(model_dir)}",
             "LOG_LEVEL": "warn", "LOG_FORMAT": "json"}
    shown.update(extra)
    env.update(shown)
    env["PORT"] = str(bench.free_port())
    return bench.Server("keel", "keel", [str(binary), "serve"], env, shown)


def reference_server(onnx_path: Path, model_dir: Path, extra: dict) -> bench.Server:
    port = bench.free_port()
    shown = {"ONNX_PATH": bench.rel(onnx_path), "MODEL_DIR": bench.rel(model_dir)}
    shown.update(extra)
    env = dict(os.environ)
    env.update(shown)
    env["PORT"] = str(port)
    cmd = [str(VENV / "bin" / "python"), "-m", "uvicorn", "app:app",
           "--app-dir", bench.rel(REF_DIR), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1", "--log-level", "warning", "--no-access-log"]
    return bench.Server("reference", "reference", cmd, env, shown)


def upload(url: str, body: bytes, timeout: float = 60.0):
    req = urllib.request.Request(url, data=body, method="POST")
    req.add_header("Content-Type", f"multipart/form-data; boundary={BOUNDARY}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null"), dict(resp.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")[:300], dict(e.headers)


def get_text(url: str, timeout: float = 10.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.read().decode()


# --------------------------------------------------------------------------------------------
# Where the time goes: the servers' own cumulative timers, before and after each point


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
KEEL_SERIES = {
    "decode": "keel_image_decode_seconds",
    "preprocess": "keel_image_preprocess_seconds",
    "inference": "keel_inference_duration_seconds",  # per batch
    "queue": "keel_queue_wait_seconds",  # per request
    "batch": "keel_batch_size",  # inputs per batch
}


def keel_counters(base: str) -> dict:
    """_sum and _count of Keel's stage histograms for the image model (other labels summed)."""
    wanted = {f"{m}{s}" for m in KEEL_SERIES.values() for s in ("_sum", "_count")}
    totals = dict.fromkeys(wanted, 0.0)
    for line in get_text(base + "/metrics").splitlines():
        m = _SAMPLE.match(line)
        if not m or m.group(1) not in wanted:
            continue
        labels = dict(_LABEL.findall(m.group(2) or ""))
        if labels.get("model") == MODEL_NAME:
            totals[m.group(1)] += float(m.group(3))
    return totals


def keel_stages(before: dict, after: dict) -> dict:
    d = {k: after[k] - before[k] for k in after}
    sec = lambda key: d[KEEL_SERIES[key] + "_sum"]  # noqa: E731
    cnt = lambda key: d[KEEL_SERIES[key] + "_count"]  # noqa: E731
    images = d["keel_batch_size_sum"]  # inputs run through the model
    per = lambda s, n: round(s / n * 1e3, 3) if n else None  # noqa: E731
    return with_shares({
        "images": int(cnt("decode")),
        "decode_ms": per(sec("decode"), cnt("decode")),
        "preprocess_ms": per(sec("preprocess"), cnt("preprocess")),
        # A batch's compute time spread over the images in it.
        "inference_ms": per(sec("inference"), images),
        "queue_ms": per(sec("queue"), cnt("queue")),
        "batches": int(cnt("batch")),
        "mean_batch": round(images / cnt("batch"), 2) if cnt("batch") else None,
    })


def reference_counters(base: str) -> dict:
    return json.loads(get_text(base + "/stats"))


def reference_stages(before: dict, after: dict) -> dict:
    n = after["requests"] - before["requests"]
    per = lambda key: round((after[key] - before[key]) / n * 1e3, 3) if n else None  # noqa: E731
    return with_shares({"images": n, "decode_ms": per("decode_s"),
                        "preprocess_ms": per("preprocess_s"), "inference_ms": per("inference_s"),
                        "handler_ms": per("handler_s")})


def with_shares(stages: dict) -> dict:
    parts = [stages.get(k) for k in ("decode_ms", "preprocess_ms", "inference_ms")]
    total = sum(p for p in parts if p)
    for key, part in zip(("decode", "preprocess", "inference"), parts):
        stages[f"{key}_share"] = round(part / total, 4) if part is not None and total else None
    return stages


# --------------------------------------------------------------------------------------------
# One server


def bench_server(server: bench.Server, version: str, args, jpegs: list[Path], bodies: Path,
                 results: dict) -> None:
    entry = {"name": server.name, "kind": server.kind, "version": version,
             "command": shlex.join(server.cmd), "env": server.shown_env}
    results["services"].append(entry)
    counters, stages = ((keel_counters, keel_stages) if server.kind == "keel"
                        else (reference_counters, reference_stages))
    try:
        entry["ready_s"] = round(server.start(args.ready_timeout), 1)
        entry["idle_rss_mib"] = round(bench.tree_rss_kb(server.proc.pid) / 1024, 1)
        log(f"{server.name} ready in {entry['ready_s']}s, RSS {entry['idle_rss_mib']} MiB")

        # Check the answers (kept: the report compares the two services' labels).
        entry["predictions"] = {}
        for jpeg in jpegs:
            status, payload, headers = upload(server.base + "/predict", multipart_body(jpeg))
            if not (status == 200 and isinstance(payload, dict)
                    and isinstance(payload.get("label"), str)
                    and isinstance(payload.get("score"), (int, float))):
                raise bench.BenchError(f"{server.name} /predict {jpeg.name}: HTTP {status}: "
                                       f"{str(payload)[:300]}")
            answer = {"label": payload["label"], "score": round(payload["score"], 4)}
            timings = {k.lower(): v for k, v in headers.items()
                       if k.lower().startswith("x-keel-") and k.lower().endswith("-ms")}
            if timings:
                answer["headers"] = timings
            entry["predictions"][jpeg.stem] = answer
            log(f"{server.name}: {jpeg.stem} -> {answer['label']} ({answer['score']:.3f})")
        for stem, label in EXPECTED.items():
            got = entry["predictions"].get(stem, {}).get("label", "")
            if label not in got.lower():
                log(f"warning: {server.name} calls {stem} {got!r}, expected {label!r}")

        if args.warmup > 0:
            c = min(8, max(args.concurrency))
            log(f"{server.name}: warm-up c={c} {args.warmup:g}s")
            bench.run_wrk(server.base + "/predict", bodies, c, args.warmup, args.wrk_threads,
                          args.request_timeout)
            bench.wait_idle(server.proc.pid)

        for c in args.concurrency:
            before = counters(server.base)
            point = bench.measure(server, "predict", "jpeg", bodies, c, args.seconds, args)
            # measure() waited for the server to go idle: every request of the point, the ones
            # wrk abandoned at its end included, is in the counters now.
            point["stages"] = stages(before, counters(server.base))
            point.pop("text", None)
            point["images"] = f"{WIDTH}x{HEIGHT} JPEG q{QUALITY}"
            results["points"].append(point)
            s = point["stages"]
            log(f"{server.name:>10} c={c:<3} {point['rps']:8.1f} img/s  p50 {point['p50_ms']} ms  "
                f"p99 {point['p99_ms']} ms  err {point['errors_total']}  "
                f"RSS {point['peak_rss_mib']} MiB  CPU {point['cpu_cores']}  | per image: "
                f"decode {s['decode_ms']} ms, resize {s['preprocess_ms']} ms, "
                f"inference {s['inference_ms']} ms")
            if server.proc.poll() is not None:
                raise bench.BenchError(f"{server.name} died during the run:\n{server.log_tail()}")
        entry["log_tail"] = server.log_tail(5)
    finally:
        server.stop()


# --------------------------------------------------------------------------------------------
# The BENCHMARKS.md section


fmt, md_table = bench.fmt, bench.md_table


def pct(x) -> str:
    return "–" if x is None else f"{x * 100:.0f}%"


def goal_lines(by: dict) -> list[str]:
    c = GOAL_CONCURRENCY
    k, r = by.get(("keel", c)), by.get(("reference", c))
    if not (k and r):
        return [f"- images/s at c={c}: not measured (needs both services at concurrency {c})"]
    lines = []
    if r["rps"]:
        ratio = k["rps"] / r["rps"]
        met = "met" if ratio >= GOAL_RATIO else "missed"
        lines.append(f"- images/s at c={c}: Keel {fmt(k['rps'])} vs reference {fmt(r['rps'])} "
                     f"(ratio {ratio:.2f}x; goal ≥ {GOAL_RATIO:g}x: **{met}**)")
    if k["p99_ms"] is not None and r["p50_ms"] is not None:
        met = "met" if k["p99_ms"] <= r["p50_ms"] else "missed"
        lines.append(f"- Keel p99 at c={c} vs reference p50: {fmt(k['p99_ms'])} ms vs "
                     f"{fmt(r['p50_ms'])} ms (goal ≤: **{met}**)")
    lines.append(f"- peak RSS at c={c}: Keel {fmt(k['peak_rss_mib'], 0)} MiB, reference "
                 f"{fmt(r['peak_rss_mib'], 0)} MiB")
    return lines


def render_section(results: dict) -> str:
    m, st = results["machine"], results["settings"]
    points = results["points"]
    by = {(p["service"], p["concurrency"]): p for p in points}
    services = [s["name"] for s in results["services"]]
    out = [SECTION, "",
           "<!-- Generated by bench/images.py from bench/images-results.json; do not edit by "
           "hand (python3 bench/images.py --render-only). -->", ""]
    out += bench.caveats(st["seconds"], m, points)
    ref_v = st.get("reference_versions", {})
    out += [
        f"EfficientNet-Lite0 (`{st['model']}`), the same weights on both sides. Keel "
        f"(`{st.get('keel_bin', 'target/release/keel')} serve`, that one model, its defaults "
        "otherwise) against the Python reference `bench/images/reference/app.py`: FastAPI "
        "with an `UploadFile`, PIL decode, torchvision-style `Resize(256)` + `CenterCrop(224)` "
        "with PIL (bilinear), numpy `(x - 127) / 128`, and an ONNX Runtime session (default "
        "threads) on the same network, built from the same safetensors by "
        "`bench/images/reference/build_onnx.py`; inference inside `async def` (one request at "
        "a time), uvicorn with 1 worker"
        + (f" (onnxruntime {ref_v.get('onnxruntime')}, Pillow {ref_v.get('pillow')}, FastAPI "
           f"{ref_v.get('fastapi')}, uvicorn {ref_v.get('uvicorn')})" if ref_v else "") + ".",
        "",
        f"Load: `wrk` (`bench/wrk/upload.lua`), closed loop, {st['seconds']:g} s per point "
        f"after {st['warmup']:g} s of warm-up, one `file` part per multipart/form-data request, "
        f"rotating through {len(st['jpegs'])} photos from scikit-image's samples "
        f"({', '.join(st['jpegs'])}) cut to {WIDTH}x{HEIGHT} and saved as JPEG quality "
        f"{QUALITY} ({fmt(min(st['jpeg_bytes']) / 1024, 0)}–{fmt(max(st['jpeg_bytes']) / 1024, 0)} "
        f"KiB). {m.get('cpu', '?')}, {m.get('cores')} cores shared by the servers and wrk, "
        f"{m.get('date')}, git {m.get('git', '?')}. Command:",
        "",
        "```sh",
        results["command"],
        "```",
        "",
        f"Goals (issue: image classification, at concurrency {GOAL_CONCURRENCY}):",
        "",
    ]
    out += goal_lines(by) + [""]

    rows = []
    for c in sorted({p["concurrency"] for p in points}):
        for name in services:
            p = by.get((name, c))
            if not p:
                continue
            ref = by.get(("reference", c))
            ratio = (f"{p['rps'] / ref['rps']:.2f}×" if name != "reference" and ref
                     and ref["rps"] else "")
            rows.append([c, f"**{name}**" if name != "reference" else name, fmt(p["rps"]), ratio,
                         fmt(p["requests"]), fmt(p["p50_ms"]), fmt(p["p90_ms"]),
                         fmt(p["p99_ms"]), p["errors_total"], fmt(p["peak_rss_mib"], 0),
                         fmt(p["cpu_cores"], 2), fmt(p["loadgen_cpu_cores"], 2)])
    out += ["### Throughput and latency", "",
            md_table(["concurrency", "service", "images/s", "× reference", "requests",
                      "p50 (ms)", "p90 (ms)", "p99 (ms)", "errors", "peak RSS (MiB)",
                      "server CPU (cores)", "wrk CPU (cores)"], rows), "",
            "Columns as in the text benchmark above: images/s = 2xx answers / measured "
            "seconds; percentiles from wrk's histogram; peak RSS = highest sampled resident "
            "memory of the server's process tree during the point.", ""]

    rows = []
    for c in sorted({p["concurrency"] for p in points}):
        for name in services:
            p = by.get((name, c))
            if not p or "stages" not in p:
                continue
            s = p["stages"]
            rows.append([c, name, fmt(s.get("decode_ms"), 2), fmt(s.get("preprocess_ms"), 2),
                         fmt(s.get("inference_ms"), 2), pct(s.get("decode_share")),
                         pct(s.get("preprocess_share")), pct(s.get("inference_share")),
                         fmt(s.get("queue_ms"), 2) if "queue_ms" in s else "",
                         fmt(s.get("mean_batch"), 1) if "mean_batch" in s else ""])
    out += ["### Where the time goes", "",
            md_table(["concurrency", "service", "decode (ms/image)",
                      "resize + normalise (ms/image)", "inference (ms/image)", "decode share",
                      "resize share", "inference share", "queue wait (ms/request)",
                      "images per batch"], rows), "",
            "Each service's own timers, differenced over the point: Keel's `/metrics` "
            "histograms (`keel_image_decode_seconds`, `keel_image_preprocess_seconds`, "
            "`keel_inference_duration_seconds` per batch spread over the images in it, "
            "`keel_queue_wait_seconds`, `keel_batch_size`), the reference's `GET /stats` "
            "(`time.perf_counter` around PIL's decode, around resize + crop + numpy, and around "
            "`session.run` + softmax). Shares are of decode + resize + inference; the rest of a "
            "request (HTTP, multipart parsing, JSON, waiting) is not in them. Keel decodes on "
            "its blocking pool, one image per core at a time, while the model runs batches on "
            "its own threads, so its stages overlap; the reference runs them one after the "
            "other on the event loop.", ""]

    ref = next((s for s in results["services"] if s["name"] == "reference"), None)
    keel = next((s for s in results["services"] if s["name"] == "keel"), None)
    if ref or keel:
        rows = []
        stems = list((keel or ref).get("predictions", {}))
        for stem in stems:
            row = [stem]
            for s in (keel, ref):
                a = (s or {}).get("predictions", {}).get(stem)
                row.append(f"{a['label']} ({a['score']:.3f})" if a else "–")
            rows.append(row)
        same = sum(1 for r in rows if r[1] != "–" and r[1].split(" (")[0] == r[2].split(" (")[0])
        out += ["### Answers", "",
                md_table(["photo", "Keel top-1 (score)", "reference top-1 (score)"], rows), "",
                f"Same top-1 label on {same} of {len(rows)} photos." if keel and ref else "", ""]
    return "\n".join(out).rstrip() + "\n"


def write_section(markdown: Path, section: str) -> None:
    """Replaces this benchmark's section of BENCHMARKS.md (from its heading to the next `## `
    heading), or appends it; the rest of the file is kept as it is."""
    text = markdown.read_text() if markdown.exists() else "# Benchmarks\n"
    start = text.find(SECTION + "\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        nxt = text.find("\n## ", start + len(SECTION))
        rest = text[nxt + 1:] if nxt >= 0 else ""
        text = text[:start] + section + ("\n" + rest if rest else "")
    markdown.write_text(text)


# --------------------------------------------------------------------------------------------
# Main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20, help="load per point (default 20)")
    ap.add_argument("--warmup", type=float, default=None,
                    help="warm-up before measuring (default: min(5, --seconds))")
    ap.add_argument("--only", choices=["keel", "reference"],
                    help="run only Keel, or only the reference")
    ap.add_argument("--concurrency", type=bench.parse_list, default=[1, 8, 32],
                    help="connections (default 1,8,32)")
    ap.add_argument("--keel-bin", type=Path, default=None,
                    help="Keel binary (default target/release/keel, built if missing)")
    ap.add_argument("--keel-env", action="append", default=[], metavar="KEY=VAL",
                    type=lambda s: bench.parse_kv(s, "--keel-env"),
                    help="extra environment for Keel (repeatable)")
    ap.add_argument("--ref-env", action="append", default=[], metavar="KEY=VAL",
                    type=lambda s: bench.parse_kv(s, "--ref-env"),
                    help="extra environment for the reference (repeatable)")
    ap.add_argument("--model-dir", type=Path, default=MODEL_DIR,
                    help=f"image model folder (default models/{MODEL_NAME})")
    ap.add_argument("--wrk-threads", type=int, default=1,
                    help="wrk threads (default 1: the load generator shares the cores)")
    ap.add_argument("--request-timeout", type=float, default=120,
                    help="wrk's per-request timeout in seconds (default 120)")
    ap.add_argument("--ready-timeout", type=float, default=600,
                    help="seconds to wait for a server's /ready (default 600)")
    ap.add_argument("--out", type=Path, default=None,
                    help="results JSON (default bench/images-results.json; a smoke run's go "
                         "to .cache/bench-logs/images-results.smoke.json)")
    ap.add_argument("--markdown", type=Path, default=bench.BENCHMARKS_MD,
                    help="the file whose section is replaced (default BENCHMARKS.md)")
    ap.add_argument("--render-only", action="store_true",
                    help="only rewrite the section from --out")
    args = ap.parse_args(argv)

    if args.render_only:
        results = json.loads((args.out or OUT).read_text())
        write_section(args.markdown, render_section(results))
        log(f"wrote the image section of {args.markdown}")
        return 0

    smoke = args.seconds < bench.SMOKE_SECONDS
    out = args.out or (SMOKE_OUT if smoke else OUT)
    if args.warmup is None:
        args.warmup = min(5.0, args.seconds)
    model_dir = args.model_dir.resolve()
    # bench.measure() and bench.run_wrk() load with run.py's wrk script: point it at the
    # multipart one for this process.
    bench.LUA = UPLOAD_LUA

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, bench._on_signal)
    signal.signal(signal.SIGHUP, bench._on_signal)

    results = {
        "command": "python3 " + shlex.join(sys.argv),
        "argv": sys.argv,
        "machine": bench.machine_info(),
        "settings": {
            "seconds": args.seconds, "warmup": args.warmup, "concurrency": args.concurrency,
            "wrk_threads": args.wrk_threads, "request_timeout_s": args.request_timeout,
            "model": bench.rel(model_dir),
        },
        "services": [],
        "points": [],
    }
    tmp = Path(tempfile.mkdtemp(prefix="keel-bench-images-"))
    try:
        results["settings"]["wrk"] = bench.ensure_wrk()
        ensure_model(model_dir)
        versions = ensure_venv()  # its Pillow makes the JPEGs, even for a Keel-only run
        jpegs = ensure_jpegs()
        results["settings"]["jpegs"] = [j.stem for j in jpegs]
        results["settings"]["jpeg_bytes"] = [j.stat().st_size for j in jpegs]
        bodies = write_bodies(jpegs, tmp)

        servers = []
        if args.only != "reference":
            default_bin = args.keel_bin is None
            binary = (args.keel_bin or ROOT / "target" / "release" / "keel").resolve()
            version = bench.ensure_keel(binary, default_bin)
            results["settings"]["keel_bin"] = bench.rel(binary)
            servers.append((keel_server(binary, model_dir, dict(args.keel_env)), version))
        if args.only != "keel":
            results["settings"]["reference_versions"] = versions
            onnx_path = ensure_onnx(model_dir)
            version = ", ".join(f"{k} {versions[k]}" for k in
                                ("onnxruntime", "pillow", "numpy", "fastapi", "uvicorn"))
            servers.append((reference_server(onnx_path, model_dir, dict(args.ref_env)), version))

        for srv, version in servers:
            bench_server(srv, version, args, jpegs, bodies, results)
    except BaseException as e:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not stop the cleanup
        bench.stop_all()
        bench.LOG_DIR.mkdir(parents=True, exist_ok=True)
        partial = bench.LOG_DIR / "images-results.partial.json"
        results["error"] = f"{type(e).__name__}: {e}"
        partial.write_text(json.dumps(results, indent=2) + "\n")
        if isinstance(e, (bench.BenchError, KeyboardInterrupt)):
            log("interrupted" if isinstance(e, KeyboardInterrupt) else f"error: {e}")
            log(f"partial results in {bench.rel(partial)}; {bench.rel(out.resolve())} and "
                f"{bench.rel(args.markdown.resolve())} left as they were")
            return 130 if isinstance(e, KeyboardInterrupt) else 1
        raise
    finally:
        bench.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)

    results["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    section = render_section(results)
    if smoke:
        print(section)
        log(f"smoke run: wrote {bench.rel(out.resolve())}; "
            f"{bench.rel(args.markdown.resolve())} left as it was")
    else:
        write_section(args.markdown, section)
        log(f"wrote {bench.rel(out.resolve())} and the image section of "
            f"{bench.rel(args.markdown.resolve())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
