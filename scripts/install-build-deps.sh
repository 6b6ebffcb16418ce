#!/usr/bin/env bash
# Installs what building Keel needs beyond the Rust toolchain, when missing: the
# `llama-cpp-2` crate builds llama.cpp from its vendored source with CMake and generates its
# bindings with bindgen, which needs libclang. Run by `make run`, `make test` and the builds.
set -euo pipefail
need=()
command -v cmake >/dev/null || need+=(cmake)
# libclang itself, not libclang-cpp (a different library some images carry without it).
compgen -G '/usr/lib/llvm-*/lib/libclang.so*' >/dev/null \
    || compgen -G '/usr/lib/*/libclang-[0-9]*.so*' >/dev/null || need+=(libclang-dev)
[ ${#need[@]} -eq 0 ] && exit 0
echo "install-build-deps: installing ${need[*]}" >&2
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
