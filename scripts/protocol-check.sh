#!/usr/bin/env bash
# The service's interfaces, checked by third-party tools against real processes:
#   - `promtool check metrics` (Prometheus' own linter, Debian's `prometheus` package) on
#     GET /metrics of `tandem serve` (embedded queue), of `tandem serve` on Redis and of
#     `tandem worker --metrics-addr`, after a few predictions so the histograms have data:
#     any problem it prints fails the check;
#   - Schemathesis (pinned in scripts/protocol-check.requirements.txt, a venv under target/)
#     against /openapi.json of the embedded `serve` and of the Redis `serve` (with its worker):
#     every operation, every check (no 5xx; status codes, content types, headers and bodies as
#     documented, event streams event by event; schema-violating requests refused; the API key
#     enforced; other methods 405 with `Allow`; responses within 10 s), chosen in
#     scripts/protocol-check.schemathesis.toml with the two exceptions it explains; and, with
#     Schemathesis' response checks, what it does not send itself: POST /predict with
#     `Accept: text/event-stream` (each body form) and GET /job/{id}/events of a real job.
# Both `serve`s run with --api-key, so the documented 401s are real.
#   scripts/protocol-check.sh
# Needs python3 (with venv), curl, redis-server or a Redis at TANDEM_TEST_REDIS_URL (default
# redis://127.0.0.1:6379/), and the test models (TANDEM_SHARED_DIR, else ../shared). Installs
# promtool (Debian's `prometheus`) when missing, as root.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

shared="${TANDEM_SHARED_DIR:-$root/../shared}"
[ -f "$shared/models/efficientnet_lite2.onnx" ] || { echo "protocol-check: no test models in $shared/models" >&2; exit 1; }
# Requests Schemathesis may make per operation and phase (PROTOCOL_CHECK_MAX_EXAMPLES), and its
# limit on one request (an event stream of a real job ends within seconds, once it is final).
MAX_EXAMPLES="${PROTOCOL_CHECK_MAX_EXAMPLES:-50}"
REQUEST_TIMEOUT=15

# promtool: Debian packages it with the Prometheus server (which is not started here).
if ! command -v promtool >/dev/null; then
  [ "$(id -u)" = 0 ] || { echo "protocol-check: promtool is missing; install Debian's prometheus package as root" >&2; exit 1; }
  echo "protocol-check: installing prometheus (for promtool)"
  export DEBIAN_FRONTEND=noninteractive
  # Only promtool is wanted: the package's Prometheus service must not start (a policy-rc.d
  # that says no, for the install, unless the machine has one).
  policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy"
  fi
  installed=0
  apt-get install -y -q --no-install-recommends prometheus >/dev/null ||
    { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends prometheus >/dev/null; } ||
    installed=$?
  [ -z "$policy" ] || rm -f "$policy"
  [ "$installed" = 0 ] && command -v promtool >/dev/null || { echo "protocol-check: cannot install promtool" >&2; exit 1; }
fi

# Schemathesis, installed once per set of pins.
venv="$root/target/protocol-venv"
pins="$root/scripts/protocol-check.requirements.txt"
"$root/scripts/pinned-venv.sh" "$venv" "$pins"

"$root/scripts/ensure-build-tools.sh"
"$root/scripts/fetch-onnxruntime.sh" >/dev/null
cargo build --locked --bin tandem

work="$(mktemp -d)"
pids=()
redis_pidfile=""
redis_url="${TANDEM_TEST_REDIS_URL:-redis://127.0.0.1:6379/}"
prefix="tandem-protocol-check-$$-$RANDOM"
stop() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  # Bounded: SIGTERM drains; past 10 s, SIGKILL.
  for pid in "${pids[@]}"; do
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  if [ -n "$redis_pidfile" ]; then
    kill "$(cat "$redis_pidfile")" 2>/dev/null || true
  else
    # This run's keys only (its own prefix), in one bounded scan.
    timeout 20 redis-cli -u "$redis_url" --scan --pattern "$prefix:*" 2>/dev/null |
      timeout 20 xargs -r -n 500 redis-cli -u "$redis_url" del >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap stop EXIT

# Redis: the one named (test.sh exports it), else a throw-away one on a free port.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
if ! redis-cli -u "$redis_url" ping 2>/dev/null | grep -q PONG; then
  [ -z "${TANDEM_TEST_REDIS_URL:-}" ] && command -v redis-server >/dev/null ||
    { echo "protocol-check: no Redis answers at $redis_url" >&2; exit 1; }
  port="$(free_port)"
  redis_pidfile="$work/redis.pid"
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" \
    --daemonize yes --pidfile "$redis_pidfile" --logfile "$work/redis.log"
  redis_url="redis://127.0.0.1:$port/"
  for _ in $(seq 50); do redis-cli -u "$redis_url" ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done
fi

key="protocol-check-key"
auth=(-H "Authorization: Bearer $key")
models=(--model-dir "$shared/models" --accurate-model efficientnet_lite2.onnx --intra-threads 1)
# start NAME ARGS...: `tandem ARGS...` in the background, its log in $work/NAME.log.
start() {
  local name=$1
  shift
  "$root/target/debug/tandem" "$@" >"$work/$name.log" 2>&1 &
  pids+=("$!")
}
# ready NAME BASE: waits (at most 60 s) for BASE/health/ready to answer 200.
ready() {
  for _ in $(seq 600); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$2/health/ready")" = 200 ] && return 0
    sleep 0.1
  done
  echo "protocol-check: $1 was not ready at $2 within 60 s; its log:" >&2
  tail -n 40 "$work/$1.log" >&2
  exit 1
}

embedded_port="$(free_port)"
redis_serve_port="$(free_port)"
worker_port="$(free_port)"
embedded="http://127.0.0.1:$embedded_port"
redis_serve="http://127.0.0.1:$redis_serve_port"
worker="http://127.0.0.1:$worker_port"
redis_args=(--redis-url "$redis_url" --redis-prefix "$prefix")
start serve serve --addr "127.0.0.1:$embedded_port" --api-key "$key" "${models[@]}"
# The Redis one with the result cache and the cascade on, so that their answers (`final`, a
# job completed at once) are checked against the document too; 0.99 leaves the photos posted
# below to the worker (its metrics are checked).
start redis-serve serve --addr "127.0.0.1:$redis_serve_port" --api-key "$key" "${redis_args[@]}" "${models[@]}" \
  --cache-ttl 60 --refine-below 0.99
start worker worker --metrics-addr "127.0.0.1:$worker_port" "${redis_args[@]}" "${models[@]}"
ready serve "$embedded"
ready redis-serve "$redis_serve"
ready worker "$worker"
echo "protocol-check: serve at $embedded, serve on Redis at $redis_serve (prefix $prefix, cache and cascade on), its worker at $worker"

# A few predictions on each serve, each job waited for, so every histogram has data (the
# fast tier's in the serves, the accurate tier's in the embedded serve and the worker).
for base in "$embedded" "$redis_serve"; do
  for image in sample_01.jpg sample_02.jpg sample_03.jpg; do
    answer="$(curl -sS --max-time 30 "${auth[@]}" -H 'Content-Type: image/jpeg' --data-binary "@$shared/images/$image" "$base/predict")"
    id="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["job_id"])' "$answer")" ||
      { echo "protocol-check: POST $base/predict: $answer" >&2; exit 1; }
    status=""
    for _ in $(seq 6); do
      status="$(curl -sS --max-time 15 "${auth[@]}" "$base/job/$id?wait=10" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])')"
      [ "$status" = completed ] && break
    done
    [ "$status" = completed ] || { echo "protocol-check: job $id on $base is $status, not completed" >&2; exit 1; }
  done
done

# promtool on each /metrics: exit 0 and nothing printed (it prints one line per problem).
for target in "serve:$embedded" "redis-serve:$redis_serve" "worker:$worker"; do
  name="${target%%:*}"
  base="${target#*:}"
  curl -sSf --max-time 10 "$base/metrics" -o "$work/$name.metrics"
  # Not an empty or foreign page: the histograms the predictions filled are there.
  for series in tandem_inference_duration_seconds_count tandem_http_requests_total; do
    grep -q "^$series{" "$work/$name.metrics" ||
      { echo "protocol-check: $name's /metrics has no $series" >&2; cat "$work/$name.metrics" >&2; exit 1; }
  done
  if ! promtool check metrics <"$work/$name.metrics" >"$work/$name.promtool" 2>&1 || [ -s "$work/$name.promtool" ]; then
    echo "protocol-check: promtool check metrics on $name's /metrics ($base/metrics):" >&2
    cat "$work/$name.promtool" >&2
    exit 1
  fi
  echo "protocol-check: promtool: $name's /metrics: no problems ($(grep -c '^# TYPE' "$work/$name.metrics") metrics)"
done

# Schemathesis on each serve's document, against that serve.
for target in "serve:$embedded" "redis-serve:$redis_serve"; do
  name="${target%%:*}"
  base="${target#*:}"
  echo "protocol-check: schemathesis against $name ($base/openapi.json)"
  if ! (cd "$work" && timeout 300 "$venv/bin/schemathesis" --config-file "$root/scripts/protocol-check.schemathesis.toml" \
    run "$base/openapi.json" "${auth[@]}" --phases examples,coverage,fuzzing,stateful \
    --max-examples "$MAX_EXAMPLES" --request-timeout "$REQUEST_TIMEOUT" --generation-database none \
    --no-color --output-truncate true >"$work/$name.schemathesis" 2>&1); then
    cat "$work/$name.schemathesis" >&2
    echo "protocol-check: schemathesis found problems against $name; its log:" >&2
    tail -n 40 "$work/$name.log" >&2
    exit 1
  fi
  # Every operation of the document was tested, not merely none failed.
  selected="$(sed -n 's|^ *Selected: *[0-9]*/\([0-9]*\)$|\1|p' "$work/$name.schemathesis")"
  tested="$(sed -n 's|^ *Tested: *\([0-9]*\)$|\1|p' "$work/$name.schemathesis")"
  if [ -z "$selected" ] || [ "$tested" != "$selected" ]; then
    cat "$work/$name.schemathesis" >&2
    echo "protocol-check: schemathesis tested ${tested:-?} of ${selected:-?} operations against $name" >&2
    exit 1
  fi
  echo "protocol-check: schemathesis: $name: $tested operations, $(grep -E '^ +[0-9]+ generated' "$work/$name.schemathesis" | sed 's/^ *//')"
done

# Schemathesis does not send `Accept: text/event-stream`, so POST /predict's event stream is
# checked here, with Schemathesis' own response checks (the stream read event by event against
# `PredictEvent`, each event's JSON against its `contentSchema`), in each of the three forms.
for base in "$embedded" "$redis_serve"; do
  timeout 120 "$venv/bin/python" - "$base" "$key" "$shared/images/sample_01.jpg" <<'PY'
import base64, json, sys
import schemathesis

base, key, image = sys.argv[1], sys.argv[2], sys.argv[3]
data = open(image, "rb").read()
schema = schemathesis.openapi.from_url(base + "/openapi.json")
predict = schema["/predict"]["POST"]
forms = [
    ("image/jpeg", data),
    ("application/json", {"image_data": base64.b64encode(data).decode()}),
    ("multipart/form-data", {"image": data}),
]
for media_type, body in forms:
    headers = {"Accept": "text/event-stream", "Authorization": f"Bearer {key}"}
    case = predict.Case(body=body, media_type=media_type, headers=headers)
    response = case.call(timeout=30)
    case.validate_response(response)
    events = [line.split(":", 1)[1].strip() for line in response.text.splitlines() if line.startswith("event:")]
    assert response.status_code == 200 and events[0] == "fast" and events[-1] == "completed", (
        f"POST /predict ({media_type}) with Accept: text/event-stream: {response.status_code}, events {events}"
    )
    print(f"protocol-check: POST {base}/predict ({media_type}), event stream: {' '.join(events)}")
# GET /job/{id}/events of a real (ended) job: its final state, then the end of the stream; with
# that event's id as Last-Event-ID, 204.
job_id = json.loads(response.text.split("data:", 1)[1].split("\n", 1)[0])["job_id"]
job_events = schema["/job/{id}/events"]["GET"]
# The id is `completed-<attempts>`: `completed-1` after one run, `completed-0` for a job the
# result cache completed at once; it is read from the first stream, as a browser would.
last_event_id = None
for status in (200, 204):
    headers = {"Authorization": f"Bearer {key}"} | ({"Last-Event-ID": last_event_id} if last_event_id else {})
    case = job_events.Case(path_parameters={"id": job_id}, headers=headers)
    response = case.call(timeout=30)
    case.validate_response(response)
    assert response.status_code == status, f"GET /job/{job_id}/events: {response.status_code}, not {status}"
    ids = [line.split(":", 1)[1].strip() for line in response.text.splitlines() if line.startswith("id:")]
    if status == 200:
        assert ids and ids[-1].startswith("completed-"), f"GET /job/{job_id}/events: ids {ids}"
        last_event_id = ids[-1]
print(f"protocol-check: GET {base}/job/{{id}}/events of an ended job: its event, then 204 with Last-Event-ID")
PY
done
echo "protocol-check: ok"
