#!/usr/bin/env bash
# Installs what building Keel needs beyond the Rust toolchain, when missing: the
# `llama-cpp-2` crate builds llama.cpp from its vendored source with CMake and generates its
# bindings with bindgen, which needs libclang. Run by `make run`, `make test` and the builds.
set -euo pipefail
need=()
command -v cmake >/dev/null || need+=(cmake)
ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1 || ls /usr/lib/*/libclang*.so* >/dev/null 2>&1 \
    || need+=(libclang-dev)
[ ${#need[@]} -eq 0 ] && exit 0
echo "install-build-deps: installing ${need[*]}" >&2
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
