#!/usr/bin/env bash
# Runs the service from a fresh clone: fetches ONNX Runtime, builds the release binary, then
# `tandem serve --pull-missing` with any extra arguments (e.g. `scripts/run.sh --redis-url
# redis://127.0.0.1:6379/`). `tandem` itself downloads the default model files that the
# configuration (flags or TANDEM_* variables) uses and lacks, and nothing else.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

"$root/scripts/ensure-build-tools.sh"
"$root/scripts/fetch-onnxruntime.sh"
echo "run.sh: building target/release/tandem (the first release build takes several minutes on 2 cores)" >&2
cargo build --release --locked

exec "$root/target/release/tandem" serve --pull-missing "$@"
