#!/usr/bin/env bash
# The Open Inference Protocol (KServe v2) as a third party speaks it: NVIDIA's own
# `tritonclient[http]` (pinned in scripts/v2-client-test.requirements.txt, in a venv under
# target/) against a real `tandem serve`, embedded and in Redis mode (serve + a worker): health,
# readiness, metadata, and inference with encoded JPEGs (BYTES) and preprocessed FP32 tensors, in
# JSON and binary, top-1 checked against ../shared/images/golden.csv (scripts/v2_client_test.py).
#   scripts/v2-client-test.sh
# Needs python3 (with venv), curl, redis for the second half (TANDEM_TEST_REDIS_URL, else
# redis://127.0.0.1:6379/), and the test models (TANDEM_SHARED_DIR, else ../shared).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

shared="${TANDEM_SHARED_DIR:-$root/../shared}"
[ -f "$shared/models/mobilenet_v2.onnx" ] || { echo "v2-client-test: no test models in $shared/models" >&2; exit 1; }
redis_url="${TANDEM_TEST_REDIS_URL:-redis://127.0.0.1:6379/}"

venv="$root/target/v2-client-venv"
pins="$root/scripts/v2-client-test.requirements.txt"
"$root/scripts/pinned-venv.sh" "$venv" "$pins"

cargo build --locked --bin tandem

work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
models=(--model-dir "$shared/models" --accurate-model efficientnet_lite2.onnx --intra-threads 1)

# Waits up to 60 s for $1/health/ready; $2 is the process, $3 its log.
wait_ready() {
  for _ in $(seq 600); do
    curl -sf "$1/health/ready" >/dev/null 2>&1 && return 0
    kill -0 "$2" 2>/dev/null || { cat "$3" >&2; echo "v2-client-test: tandem exited" >&2; return 1; }
    sleep 0.1
  done
  cat "$3" >&2; echo "v2-client-test: not ready after 60 s" >&2; return 1
}

run_clients() {
  "$venv/bin/python" "$root/scripts/v2_client_test.py" --url "$1" --mode "$2" --images "$shared/images" \
    --fast mobilenet_v2 --accurate efficientnet_lite2
}

# Embedded: one process runs both tiers.
port="$(free_port)"
"$root/target/debug/tandem" serve --addr "127.0.0.1:$port" "${models[@]}" >"$work/embedded.log" 2>&1 &
pids+=($!)
wait_ready "http://127.0.0.1:$port" "${pids[-1]}" "$work/embedded.log"
run_clients "127.0.0.1:$port" embedded

# Redis: serve has only the fast model; a worker in another process runs the accurate one.
prefix="tandem-v2-client-$$"
port="$(free_port)"
"$root/target/debug/tandem" serve --addr "127.0.0.1:$port" "${models[@]}" \
  --redis-url "$redis_url" --redis-prefix "$prefix" >"$work/serve.log" 2>&1 &
pids+=($!)
wait_ready "http://127.0.0.1:$port" "${pids[-1]}" "$work/serve.log"
"$root/target/debug/tandem" worker "${models[@]}" --redis-url "$redis_url" --redis-prefix "$prefix" \
  >"$work/worker.log" 2>&1 &
pids+=($!)
run_clients "127.0.0.1:$port" redis
if command -v redis-cli >/dev/null; then
  redis-cli -u "$redis_url" --scan --pattern "$prefix:*" | xargs -r redis-cli -u "$redis_url" del >/dev/null || true
fi
echo "v2-client-test: tritonclient passed against embedded and Redis-mode serve"
