#!/usr/bin/env bash
# Runs Keel's cargo-fuzz (libFuzzer) targets, each for a bounded time; used by `make fuzz`.
#
#   FUZZ_SECONDS=60 scripts/fuzz.sh              # every target, 60 s each (the default)
#   FUZZ_SECONDS=600 scripts/fuzz.sh tokenize    # one target
#
# Exits non-zero when a target crashes (panic, failed assertion, sanitizer report, timeout,
# out-of-memory); the input is saved under fuzz/artifacts/<target>/. Reproduce one with
#   RUSTC_BOOTSTRAP=1 .cache/cargo-fuzz/bin/cargo-fuzz run <target> fuzz/artifacts/<target>/<file>
#
# Works on the stable toolchain: cargo-fuzz passes -Z flags (-Zsanitizer, sancov), which
# RUSTC_BOOTSTRAP=1 lets a stable compiler accept. cargo-fuzz itself is installed into
# .cache/cargo-fuzz on first use. The tokenize target needs the models (`make models`).
#
# Settings (environment):
#   FUZZ_SECONDS    time per target, in seconds (default 60)
#   FUZZ_SANITIZER  address (default) or none
#   FUZZ_RSS_MB     libFuzzer's memory limit per target (default 4096)
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD

SECONDS_PER_TARGET=${FUZZ_SECONDS:-60}
SANITIZER=${FUZZ_SANITIZER:-address}
RSS_MB=${FUZZ_RSS_MB:-4096}
CARGO_FUZZ_VERSION=0.13.2
CARGO_FUZZ_ROOT=$ROOT/.cache/cargo-fuzz
CARGO_FUZZ=$CARGO_FUZZ_ROOT/bin/cargo-fuzz
CORPUS_ROOT=$ROOT/.cache/fuzz-corpus
LOG_ROOT=$ROOT/.cache/fuzz-logs

# Target name and its -max_len: whole request bodies for HTTP (above the harness's 16 KiB
# body limit, so 413 is reached), a few texts for the tokenizer.
declare -A MAX_LEN=([http_request]=65536 [tokenize]=4096)
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
    TARGETS=(http_request tokenize)
fi
for t in "${TARGETS[@]}"; do
    if [ -z "${MAX_LEN[$t]:-}" ]; then
        echo "fuzz.sh: unknown target '$t' (known: ${!MAX_LEN[*]})" >&2
        exit 2
    fi
done

export RUSTC_BOOTSTRAP=1

if [ ! -x "$CARGO_FUZZ" ]; then
    echo "==> installing cargo-fuzz $CARGO_FUZZ_VERSION into $CARGO_FUZZ_ROOT"
    cargo install --locked --root "$CARGO_FUZZ_ROOT" cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi

cd "$ROOT/fuzz"

# One build for all the targets asked for (cargo-fuzz builds in fuzz/target, git-ignored):
# optimized (--release), with debug assertions and overflow checks (-a) so that arithmetic
# overflow panics instead of wrapping silently.
echo "==> building fuzz targets (sanitizer: $SANITIZER)"
start=$(date +%s)
if [ ${#TARGETS[@]} -eq 1 ]; then
    "$CARGO_FUZZ" build --release -a -s "$SANITIZER" "${TARGETS[0]}"
else
    "$CARGO_FUZZ" build --release -a -s "$SANITIZER"
fi
echo "==> build took $(($(date +%s) - start)) s"

mkdir -p "$LOG_ROOT"
failed=()
summary=()
for t in "${TARGETS[@]}"; do
    # The run grows its corpus in a scratch copy, so fuzz/corpus keeps only the seeds.
    corpus=$CORPUS_ROOT/$t
    mkdir -p "$corpus"
    if [ -d "$ROOT/fuzz/corpus/$t" ]; then
        cp -R "$ROOT/fuzz/corpus/$t/." "$corpus/"
    fi
    log=$LOG_ROOT/$t.log
    echo "==> fuzzing $t for ${SECONDS_PER_TARGET}s (corpus: ${corpus#"$ROOT"/}, log: ${log#"$ROOT"/})"
    set +e
    "$CARGO_FUZZ" run --release -a -s "$SANITIZER" "$t" "$corpus" -- \
        -max_total_time="$SECONDS_PER_TARGET" \
        -max_len="${MAX_LEN[$t]}" \
        -rss_limit_mb="$RSS_MB" \
        -timeout=30 \
        -print_final_stats=1 \
        >"$log" 2>&1
    rc=$?
    set -e
    # The last status line (#runs, cov, ft, corp, exec/s, rss), then libFuzzer's totals.
    last=$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
    line="$t: rc=$rc execs=${execs:-?} exec/s=${rate:-?} | $last"
    echo "    $line"
    summary+=("$line")
    if [ "$rc" -ne 0 ]; then
        failed+=("$t")
        echo "---- $t failed (exit $rc); end of $log:"
        tail -n 60 "$log"
        echo "----"
    fi
done

echo "==> summary"
printf '    %s\n' "${summary[@]}"
if [ ${#failed[@]} -ne 0 ]; then
    echo "==> FAILED: ${failed[*]} (inputs under fuzz/artifacts/, logs under ${LOG_ROOT#"$ROOT"/})" >&2
    exit 1
fi
echo "==> no crash"
