#!/usr/bin/env bash
# Runs every test, from a fresh clone: fetches ONNX Runtime if it is missing, makes sure a Redis
# answers (starting a throw-away one on a free port if none does), then `cargo test`, then
# scripts/openapi-check.sh (the API document), scripts/protocol-check.sh (promtool and
# Schemathesis against real processes), scripts/v2-client-test.sh (the Open Inference Protocol
# with tritonclient), scripts/netns-test.sh (hosts in network namespaces), scripts/failover-test.sh
# (Redis Sentinel failover), scripts/browser-test.sh (the web page in a real browser), then
# scripts/container-test.sh (the image and compose files).
# Extra arguments go to `cargo test` (e.g. `scripts/test.sh --test golden`).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

"$root/scripts/ensure-build-tools.sh"
"$root/scripts/fetch-onnxruntime.sh"

# The test models and photos: TANDEM_SHARED_DIR, else ../shared beside the repository (the
# tests read the same variable).
shared="${TANDEM_SHARED_DIR:-$root/../shared}"
if [ ! -f "$shared/models/mobilenet_v2.onnx" ]; then
  echo "the test models are expected in $shared/models (set TANDEM_SHARED_DIR to the directory that holds models/ and images/)" >&2
  exit 1
fi

# Redis for the integration tests: use the one the caller names, else one on 6379, else start one.
if [ -z "${TANDEM_TEST_REDIS_URL:-}" ]; then
  if command -v redis-cli >/dev/null && redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; then
    export TANDEM_TEST_REDIS_URL="redis://127.0.0.1:6379/"
  elif command -v redis-server >/dev/null; then
    port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
    redis_dir="$(mktemp -d)"
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$redis_dir" \
      --daemonize yes --pidfile "$redis_dir/redis.pid" --logfile "$redis_dir/redis.log"
    trap 'kill "$(cat "$redis_dir/redis.pid")" 2>/dev/null; rm -rf "$redis_dir"' EXIT
    for _ in $(seq 50); do redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done
    export TANDEM_TEST_REDIS_URL="redis://127.0.0.1:$port/"
  else
    echo "no Redis answers on 127.0.0.1:6379 and redis-server is not installed" >&2
    exit 1
  fi
fi
echo "integration tests use Redis at $TANDEM_TEST_REDIS_URL"

if [ "$#" -gt 0 ]; then
  exec cargo test --locked "$@"
fi
# Everything but the fault suite, then the fault suite on its own: one test at a time (each
# runs several processes on a small machine) and with its figures printed.
cargo test --locked -- --skip faultsuite_
cargo test --locked --test faults -- --nocapture --test-threads=1
# The served OpenAPI document, through a real OpenAPI 3.1 validator, and Swagger UI offline.
"$root/scripts/openapi-check.sh"
# The interfaces through third-party tools against real processes (embedded and on this Redis):
# promtool on every /metrics, Schemathesis on the served document (installs promtool from
# Debian's prometheus package when missing, as root).
"$root/scripts/protocol-check.sh"
# The Open Inference Protocol (KServe v2) through NVIDIA's tritonclient, embedded and on Redis.
"$root/scripts/v2-client-test.sh"
# Across hosts: network namespaces, Redis 20 ms away, a worker and a serve cut off and back
# (needs root; skipped, loudly, without). TANDEM_SKIP_NETNS=1 skips it.
if [ "${TANDEM_SKIP_NETNS:-0}" = 1 ]; then
  echo "test.sh: TANDEM_SKIP_NETNS=1: scripts/netns-test.sh skipped" >&2
else
  "$root/scripts/netns-test.sh"
fi
# Redis Sentinel: the primary killed under load, the replica promoted, serve and workers follow.
"$root/scripts/failover-test.sh"
# The web page in headless Chromium against a real serve (scripts/browser-test.sh installs
# Debian's chromium and chromium-driver when missing). TANDEM_SKIP_BROWSER=1 skips it.
if [ "${TANDEM_SKIP_BROWSER:-0}" = 1 ]; then
  echo "test.sh: TANDEM_SKIP_BROWSER=1: scripts/browser-test.sh skipped" >&2
else
  "$root/scripts/browser-test.sh"
fi
# The container image and compose files, built and run for real: with Docker, or as root with
# podman (which scripts/container-test.sh installs from Debian's packages if missing).
# TANDEM_SKIP_CONTAINERS=1 skips it; so does a machine with neither, loudly.
if [ "${TANDEM_SKIP_CONTAINERS:-0}" = 1 ]; then
  echo "test.sh: TANDEM_SKIP_CONTAINERS=1: scripts/container-test.sh skipped" >&2
elif ! docker info >/dev/null 2>&1 && [ "$(id -u)" != 0 ]; then
  echo "test.sh: WARNING: scripts/container-test.sh skipped: no Docker engine, and not root (for podman)" >&2
else
  "$root/scripts/container-test.sh"
fi
