#!/usr/bin/env bash
# Coverage-guided fuzzing of every parser of untrusted bytes (cargo-fuzz, nightly toolchain):
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
# A crash fails the run (its input is saved under fuzz/artifacts/). Without a nightly toolchain
# or cargo-fuzz this says so and exits 0: the stable property-test pass (tests/fuzz.rs) still
# runs in every `scripts/test.sh`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
seconds="${1:-15}"
shift || true
targets=("$@")
[ "${#targets[@]}" -gt 0 ] || targets=(base64 json_body multipart_body image v2_request)

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz: no nightly toolchain; skipping the cargo-fuzz pass"
  exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  if ! cargo install cargo-fuzz --locked --quiet; then
    echo "fuzz: cargo-fuzz could not be installed; skipping the cargo-fuzz pass"
    exit 0
  fi
fi

cd "$root/fuzz"
# Seed the image target with the sample photos so it starts from valid files.
mkdir -p corpus/image
cp -n "$root"/../shared/images/sample_0{1,5,9}.jpg corpus/image/ 2>/dev/null || true
for target in "${targets[@]}"; do
  echo "fuzz: $target for ${seconds}s"
  log="$(mktemp)"
  if ! cargo +nightly fuzz run "$target" -- -max_total_time="$seconds" -rss_limit_mb=2048 >"$log" 2>&1; then
    tail -40 "$log"
    echo "fuzz: $target failed (a crash leaves its input under fuzz/artifacts/$target/)"
    exit 1
  fi
  grep -E "^Done [0-9]+ runs" "$log" || tail -3 "$log"
  rm -f "$log"
done
