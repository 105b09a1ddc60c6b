#!/usr/bin/env bash
# What the container costs: `POST /predict` latency (c=1 and c=8) of the same binary run three
# ways, one at a time, in alternating rounds on one machine: natively, in the image with the host's network, and
# in the image behind a published port (the usual compose set-up).
#   scripts/container-bench.sh [ROUNDS] [SECONDS]      (defaults: 3 rounds of 8 s per variant)
# Run scripts/container-test.sh first: it builds localhost/tandem:container-test (and sets up
# podman where there is no Docker). The binary for the native runs and for the load generator
# is copied out of that image, so the three variants differ only in how they are run. Prints a
# JSON line per measurement, then the medians and the ratios to native.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
rounds="${1:-3}"
seconds="${2:-8}"
shared="$(cd "${TANDEM_SHARED_DIR:-$root/../shared}" && pwd)"
image=localhost/tandem:container-test
if docker info >/dev/null 2>&1; then engine=docker; else engine=podman; export CONTAINERS_CONF="$root/target/container-test/containers.conf"; fi
$engine image exists "$image" 2>/dev/null || $engine image inspect "$image" >/dev/null || { echo "no $image: run scripts/container-test.sh first" >&2; exit 1; }

work="$(mktemp -d)"
native_pid=""
cleanup() {
  [ -n "$native_pid" ] && kill "$native_pid" 2>/dev/null
  $engine rm -f tandem-bench-host tandem-bench-port >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
id="$($engine create "$image")"
$engine cp "$id:/usr/local/bin/tandem" "$work/tandem" >/dev/null
$engine cp "$id:/usr/local/lib/onnxruntime/." "$work/ort" >/dev/null
$engine rm -v "$id" >/dev/null 2>&1
tandem="$work/tandem"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
common=(--model-dir /models --accurate-model efficientnet_lite2.onnx)

# One variant runs at a time (started, measured at c=1 and c=8, stopped), so none competes with
# another's background work for the cores.
start_variant() {
  case "$1" in
    native)
      ORT_DYLIB_PATH="$work/ort/libonnxruntime.so" "$tandem" serve --model-dir "$shared/models" \
        --accurate-model efficientnet_lite2.onnx --addr "127.0.0.1:$2" 2>>"$work/native.log" &
      native_pid=$! ;;
    container-host-net)
      $engine run -d --name tandem-bench-host --network host -v "$shared/models:/models:ro" \
        -e TANDEM_ADDR="127.0.0.1:$2" "$image" serve "${common[@]}" >/dev/null 2>&1 ;;
    container-published)
      $engine run -d --name tandem-bench-port -p "127.0.0.1:$2:8000" -v "$shared/models:/models:ro" \
        "$image" serve "${common[@]}" >/dev/null 2>&1 ;;
  esac
  for _ in $(seq 120); do curl -sf "http://127.0.0.1:$2/health/ready" >/dev/null && return; sleep 0.5; done
  echo "$1 did not become ready" >&2
  exit 1
}
stop_variant() {
  if [ "$1" = native ]; then kill "$native_pid"; wait "$native_pid" 2>/dev/null || true; native_pid=""
  else $engine rm -f tandem-bench-host tandem-bench-port >/dev/null 2>&1 || true; fi
}

variants=(native container-host-net container-published)
for round in $(seq "$rounds"); do
  # The order turns each round, so no variant always runs first.
  for i in 0 1 2; do
    variant="${variants[$(((i + round) % 3))]}"
    port="$(free_port)"
    start_variant "$variant" "$port"
    for c in 1 8; do
      "$tandem" bench --url "http://127.0.0.1:$port" --image "$shared/images/sample_01.jpg" \
        --concurrency "$c" --duration "$seconds" --json |
        python3 -c 'import json,sys; r=json.load(sys.stdin)["routes"]["predict"]; print(json.dumps({"round": int(sys.argv[1]), "variant": sys.argv[2], "c": int(sys.argv[3]), "rps": r["throughput_rps"], "p50_ms": r["latency"]["p50_ms"], "p99_ms": r["latency"]["p99_ms"], "errors": r["errors"]}))' \
          "$round" "$variant" "$c" | tee -a "$work/results.jsonl"
    done
    stop_variant "$variant"
  done
done

python3 - "$work/results.jsonl" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("\nmedians over rounds; ratio = variant / native in the same round, median over rounds")
print(f"{'variant':22} {'c':>2} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8} {'p50 ratio':>10} {'req/s ratio':>12}")
for c in (1, 8):
    for v in ("native", "container-host-net", "container-published"):
        mine = [r for r in rows if r["c"] == c and r["variant"] == v]
        base = {r["round"]: r for r in rows if r["c"] == c and r["variant"] == "native"}
        med = lambda k: statistics.median(r[k] for r in mine)
        p50r = statistics.median(r["p50_ms"] / base[r["round"]]["p50_ms"] for r in mine)
        rpsr = statistics.median(r["rps"] / base[r["round"]]["rps"] for r in mine)
        print(f"{v:22} {c:>2} {med('p50_ms'):8.2f} {med('p99_ms'):8.2f} {med('rps'):8.1f} {p50r:10.2f} {rpsr:12.2f}")
EOF
