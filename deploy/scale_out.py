#!/usr/bin/env python3
"""Scale-out, proven on loopback: N Keel replicas behind nginx, load running, and a rolling
restart (SIGTERM, start again, wait until ready) of every replica, one at a time.

Exits non-zero if any request failed. Used by the integration tests (short) and by the
benchmark (to compare 1 and 2 replicas). Standard library only, plus nginx from Debian.

    python3 deploy/scale_out.py --keel target/release/keel --replicas 3 --json out.json
    python3 deploy/scale_out.py --keel target/release/keel --replicas 2 --no-restart --seconds 20
"""

import argparse
import http.client
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
TEXTS = [
    "A warm, funny and beautifully acted film.",
    "Dull, lifeless and far too long.",
    "The plot meanders but the cast is superb and the ending lands.",
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port, path, timeout=2.0):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        r.read()
        return r.status
    finally:
        conn.close()


class Replica:
    def __init__(self, keel, port, model, threads, tmp):
        self.keel, self.port, self.model, self.threads = keel, port, model, threads
        # The embedded RAG store is one process's: each replica gets its own directory.
        self.storage = os.path.join(tmp, f"data-{port}")
        self.proc = None

    def start(self):
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "MODELS": f"sentiment={self.model}",
            "LOG_LEVEL": "warn",
            "LOG_FORMAT": "json",
            "SHUTDOWN_GRACE_MS": "1000",
            "INFERENCE_THREADS": str(self.threads),
            "PERSISTENT_STORAGE_DIR": self.storage,
        }
        self.proc = subprocess.Popen([self.keel, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def wait_ready(self, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"replica on {self.port} exited with {self.proc.returncode}")
            try:
                if get(self.port, "/ready") == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"replica on {self.port} not ready after {timeout}s")

    def stop(self, timeout=60):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return "killed"
        return self.proc.returncode if self.proc else None


NGINX_CONF = """
worker_processes 1;
user root;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    upstream keel {{
{servers}
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://keel;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # A replica that is restarting refuses connections or answers 503: try the next.
            # Inference is a pure function, so retrying a POST is safe.
            proxy_next_upstream error timeout http_503 non_idempotent;
            proxy_next_upstream_tries 3;
            proxy_connect_timeout 1s;
            proxy_read_timeout 60s;
        }}
    }}
}}
"""


def start_nginx(tmp, port, replica_ports):
    servers = "\n".join(f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=1s;" for p in replica_ports)
    conf = pathlib.Path(tmp) / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, port=port, servers=servers))
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    proc = subprocess.Popen([nginx, "-c", str(conf), "-p", tmp], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            get(port, "/health")
            return proc
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("nginx did not start: " + proc.stderr.read().decode() if proc.poll() is not None else "nginx did not start")


class Load:
    """Closed-loop clients, each with a keep-alive connection to nginx."""

    def __init__(self, port, clients):
        self.port, self.clients = port, clients
        self.ok = 0
        self.failures = []
        self.latencies = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(clients)]

    def run(self, i):
        conn = None
        body = json.dumps({"text": TEXTS[i % len(TEXTS)]})
        while not self.stop.is_set():
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            t = time.perf_counter()
            try:
                conn.request("POST", "/predict", body=body, headers={"content-type": "application/json"})
                r = conn.getresponse()
                r.read()
                with self.lock:
                    if r.status == 200:
                        self.ok += 1
                        self.latencies.append(time.perf_counter() - t)
                    else:
                        self.failures.append(f"status {r.status}")
            except (OSError, http.client.HTTPException) as e:
                with self.lock:
                    self.failures.append(f"{type(e).__name__}: {e}")
                conn.close()
                conn = None

    def __enter__(self):
        self.started = time.monotonic()
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)
        self.elapsed = time.monotonic() - self.started


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keel", default=str(ROOT / "target" / "release" / "keel"))
    p.add_argument("--model", default=str(ROOT / "models" / "sentiment-minilm-l6"))
    p.add_argument("--replicas", type=int, default=3)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--threads", type=int, default=1, help="INFERENCE_THREADS per replica")
    p.add_argument("--seconds", type=float, default=3.0, help="load before and after the restarts (or in all, with --no-restart)")
    p.add_argument("--no-restart", action="store_true")
    p.add_argument("--json", help="write the result here")
    args = p.parse_args()

    tmp = tempfile.mkdtemp(prefix="keel-scale-")
    replicas = [Replica(args.keel, free_port(), args.model, args.threads, tmp) for _ in range(args.replicas)]
    nginx = None
    result = {"replicas": args.replicas, "clients": args.clients, "restarts": []}
    try:
        for r in replicas:
            r.start()
        for r in replicas:
            r.wait_ready()
        lb_port = free_port()
        nginx = start_nginx(tmp, lb_port, [r.port for r in replicas])
        with Load(lb_port, args.clients) as load:
            time.sleep(args.seconds)
            if not args.no_restart:
                for r in replicas:
                    t = time.monotonic()
                    status = r.stop()
                    r.start()
                    r.wait_ready()
                    result["restarts"].append({"port": r.port, "exit_status": status, "seconds": round(time.monotonic() - t, 2)})
                time.sleep(args.seconds)
        lat = sorted(load.latencies)
        result.update(
            ok=load.ok,
            failed=len(load.failures),
            failures=load.failures[:20],
            seconds=round(load.elapsed, 2),
            requests_per_second=round(load.ok / load.elapsed, 1),
            p50_ms=round(lat[len(lat) // 2] * 1e3, 1) if lat else None,
            p99_ms=round(lat[int(len(lat) * 0.99)] * 1e3, 1) if lat else None,
        )
    finally:
        for r in replicas:
            r.stop()
        if nginx:
            nginx.terminate()
            nginx.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        pathlib.Path(args.json).write_text(text)
    bad_exit = [r for r in result["restarts"] if r["exit_status"] != 0]
    return 0 if result["failed"] == 0 and result["ok"] > 0 and not bad_exit else 1


if __name__ == "__main__":
    sys.exit(main())
