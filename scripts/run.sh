#!/usr/bin/env bash
# Runs the service from a fresh clone: fetches ONNX Runtime, builds the release binary, pulls
# the default models if the configured ones are missing, then `tandem serve` with any extra
# arguments (e.g. `scripts/run.sh --redis-url redis://127.0.0.1:6379/`).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

"$root/scripts/ensure-build-tools.sh"
"$root/scripts/fetch-onnxruntime.sh"
cargo build --release --locked --quiet

model_dir="${TANDEM_MODEL_DIR:-models}"
path_of() { case "$1" in /*) echo "$1" ;; *) echo "$model_dir/$1" ;; esac; }
for file in "${TANDEM_FAST_MODEL:-mobilenet_v2.onnx}" "${TANDEM_ACCURATE_MODEL:-resnet50.onnx}" "${TANDEM_LABELS:-imagenet_classes.txt}"; do
  if [ ! -f "$(path_of "$file")" ]; then
    "$root/target/release/tandem" models pull --model-dir "$model_dir"
    break
  fi
done

exec "$root/target/release/tandem" serve "$@"
