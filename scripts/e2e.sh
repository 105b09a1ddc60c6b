#!/usr/bin/env bash
# End-to-end check of any running Tandem deployment:
#   scripts/e2e.sh http://127.0.0.1:8000 [IMAGE] [TIMEOUT_SECONDS]
# Checks health and readiness, posts an image, polls its job and prints both tiers' answers.
# Needs curl and python3. Exits non-zero if any step fails.
set -euo pipefail

base="${1:?usage: scripts/e2e.sh BASE_URL [IMAGE] [TIMEOUT_SECONDS]}"
base="${base%/}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
image="${2:-$root/../shared/images/sample_01.jpg}"
timeout="${3:-60}"
[ -f "$image" ] || { echo "no image at $image" >&2; exit 2; }

json() { python3 -c 'import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1], {}, {"d": d}))' "$1"; }

# `call WHAT URL [CURL ARGS...]` prints the response body. On an error status it prints the
# status and the server's own JSON error (which `curl -f` would throw away) and exits 1.
call() {
  local what="$1" url="$2" out status body
  shift 2
  out="$(curl -sS -w '\n%{http_code}' "$@" "$url")" || { echo "$what: no answer from $url" >&2; exit 1; }
  status="${out##*$'\n'}"
  body="${out%$'\n'*}"
  if [ "$status" -ge 400 ] 2>/dev/null || [ "$status" = 000 ]; then
    echo "$what failed: HTTP $status from $url" >&2
    echo "$body" >&2
    exit 1
  fi
  printf '%s\n' "$body"
}

echo "== $base"
health="$(call health "$base/health")"
echo "health:  $health"
ready="$(curl -sS -w '\n%{http_code}' "$base/health/ready")"
echo "ready:   $(echo "$ready" | head -1) (HTTP $(echo "$ready" | tail -1))"
[ "$(echo "$ready" | tail -1)" = 200 ] || { echo "not ready" >&2; exit 1; }

answer="$(call predict "$base/predict" -X POST -H 'content-type: image/jpeg' --data-binary @"$image")"
job_id="$(echo "$answer" | json 'd["job_id"] or ""')"
echo "fast:    $(echo "$answer" | json '"%s (%.3f, %s, %.1f ms)" % (d["sync"]["label"], d["sync"]["score"], d["sync"]["model"], d["sync"]["inference_ms"])')"
if [ -z "$job_id" ]; then
  echo "no job: $(echo "$answer" | json 'd.get("async_error")')" >&2
  exit 1
fi
echo "job:     $job_id"

deadline=$((SECONDS + timeout))
while :; do
  job="$(call job "$base/job/$job_id")"
  status="$(echo "$job" | json 'd["status"]')"
  case "$status" in
    completed)
      echo "accurate: $(echo "$job" | json '"%s (%.3f, %s, %.1f ms, queued %s ms)" % (d["result"]["label"], d["result"]["score"], d["result"]["model"], d["inference_ms"], d.get("queue_ms"))')"
      echo "agree:   $(echo "$job" | json 'd["agrees_with_sync"]')"
      exit 0 ;;
    failed)
      echo "job failed: $(echo "$job" | json 'd.get("error")')" >&2
      exit 1 ;;
  esac
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "job still $status after ${timeout}s" >&2
    exit 1
  fi
  sleep 0.2
done
