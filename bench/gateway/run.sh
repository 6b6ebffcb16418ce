#!/usr/bin/env bash
# The gateway's added latency: p50 and p99 of requests sent through Keel's gateway to a
# minimal upstream, against the same requests sent to that upstream directly, at 1,000 and
# 5,000 requests/s, on loopback only. Every run is bounded (RUN_SECONDS, at most 60 s).
#
# Usage: bench/gateway/run.sh    (builds keel and the load tools in release mode first)
# Keel runs whole (all middleware, logging at info to a file, the sentiment model loaded);
# the upstream is keel-http's example bench_upstream, the open-loop load generator
# keel-gateway's example bench_load.
# Env:   RUN_SECONDS (default 5), RATES (default "1000 5000"), LOG_LEVEL (default info)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET/release/examples
RUN_SECONDS=${RUN_SECONDS:-5}
RATES=${RATES:-"1000 5000"}

(cd "$ROOT" && CARGO_TARGET_DIR=$TARGET cargo build --release -q --bin keel \
  && CARGO_TARGET_DIR=$TARGET cargo build --release -q -p keel-gateway --example bench_load \
  && CARGO_TARGET_DIR=$TARGET cargo build --release -q -p keel-http --example bench_upstream)

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

wait_addr() { # file -> prints the address after "listening on"
  for _ in $(seq 100); do
    if grep -q "listening on" "$1" 2>/dev/null; then
      awk '/listening on/ {print $3; exit}' "$1"; return 0
    fi
    sleep 0.1
  done
  echo "no 'listening on' in $1" >&2; exit 1
}

"$BIN/bench_upstream" > "$WORK/upstream.out" &
PIDS+=($!)
UP=$(wait_addr "$WORK/upstream.out")

cat > "$WORK/keel.toml" <<TOML
[gateway.providers.bench]
kind = "openai"
base_url = "http://$UP/v1"
max_concurrency = 100000

[gateway.routes.bench]
targets = ["bench/bench"]
TOML
KEEL_CONFIG=$WORK/keel.toml LOG_LEVEL=${LOG_LEVEL:-info} LOG_FORMAT=json HOST=127.0.0.1 PORT=0 \
  MODELS="sentiment-minilm-l6=$ROOT/models/sentiment-minilm-l6" SHUTDOWN_GRACE_MS=0 \
  "$TARGET/release/keel" serve >> "$WORK/gateway.log" 2>&1 &
PIDS+=($!)
GW=""
for _ in $(seq 100); do
  GW=$(python3 -c 'import json,sys
for l in open(sys.argv[1]):
    try: e = json.loads(l)
    except ValueError: continue
    if e.get("message") == "listening": print("127.0.0.1:%d" % e["port"]); break' "$WORK/gateway.log")
  [ -n "$GW" ] && break
  sleep 0.1
done
[ -n "$GW" ] || { echo "keel did not start" >&2; cat "$WORK/gateway.log" >&2; exit 1; }

# Warm up both paths (connection pools, allocator).
"$BIN/bench_load" "http://$UP/v1/chat/completions" bench 500 1 > /dev/null
"$BIN/bench_load" "http://$GW/v1/chat/completions" bench 500 1 > /dev/null

printf '%-6s %-8s %9s %8s %8s %8s %7s\n' rate path achieved p50_us p99_us max_us errors
for rate in $RATES; do
  for path in direct gateway; do
    if [ "$path" = direct ]; then url="http://$UP/v1/chat/completions"; else url="http://$GW/v1/chat/completions"; fi
    : > "$WORK/gateway.log"
    line=$("$BIN/bench_load" "$url" bench "$rate" "$RUN_SECONDS")
    echo "$line" >> "$WORK/results.jsonl"
    python3 - "$line" "$rate" "$path" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
print(f"{sys.argv[2]:<6} {sys.argv[3]:<8} {r['achieved_rps']:>9} {r['p50_us']:>8} {r['p99_us']:>8} {r['max_us']:>8} {r['errors']:>7}")
PY
    if [ "$path" = gateway ] && [ "${LOG_LEVEL:-info}" = info ]; then
      # Inside the gateway: its time per request minus the upstream attempt's.
      python3 - "$WORK/gateway.log" <<'PY'
import json, sys
d = []
for line in open(sys.argv[1], errors="replace"):
    try:
        f = json.loads(line)
    except ValueError:
        continue
    if f.get("message") == "gateway" and f.get("upstream_ms") is not None:
        d.append((f["total_ms"] - f["upstream_ms"]) * 1000)
d.sort()
if d:
    print(f"       in-gateway (total - upstream): p50 {d[len(d) // 2]:.0f} us, "
          f"p99 {d[int((len(d) - 1) * 0.99)]:.0f} us, n={len(d)}")
PY
    fi
  done
done
python3 - "$WORK/results.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
for direct, gateway in zip(rows[::2], rows[1::2]):
    print(f"added at {direct['rate']:.0f}/s: p50 {gateway['p50_us'] - direct['p50_us']} us, "
          f"p99 {gateway['p99_us'] - direct['p99_us']} us")
PY
