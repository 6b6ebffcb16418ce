#!/usr/bin/env bash
# Installs the system tools the tests use, when missing: promtool (Debian's prometheus
# package) lints /metrics; nginx fronts the replicas in the scale-out test; redis-server holds
# the shared rate limits in the limiter's tests; shellcheck lets actionlint check the CI
# workflow's shell steps as hosted runners (which have it) do. Run by `make test` (after
# scripts/install-build-deps.sh, which installs what the llama.cpp build needs).
set -euo pipefail
need=()
command -v promtool >/dev/null || need+=(prometheus)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v openssl >/dev/null || need+=(openssl)
command -v redis-server >/dev/null || need+=(redis-server)
command -v shellcheck >/dev/null || need+=(shellcheck)
[ ${#need[@]} -eq 0 ] && exit 0
echo "install-test-deps: installing ${need[*]}" >&2
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
