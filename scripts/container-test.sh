#!/usr/bin/env bash
# The container image and compose.yaml, tested for real:
#   1. builds the image from the Dockerfile;
#   2. brings compose.yaml up (Redis, serve, 2 workers) and waits for every healthcheck;
#   3. runs scripts/e2e.sh against the published port;
#   4. posts 600 jobs, kills one worker container mid-run, and checks that every job completes;
#   5. kills the Redis container (SIGKILL: no save on the way down) and starts it again, and
#      checks that serve is ready again by itself (not restarted), that the jobs acknowledged
#      before are still there (the append-only file, fsynced on every write) and complete, and
#      that new jobs complete;
#   6. stops a worker in the middle of 60 jobs, and then serve, and checks they drained (exit 0
#      within the grace period, every job completed);
#   7. brings compose.embedded.yaml up and runs scripts/e2e.sh against it.
# Everything it started is removed at the end, also on failure. Exits non-zero on any failure.
#
# With a working Docker engine it uses Docker, `docker compose` and the public base images.
# Without one (these build machines: package registries only, no Docker Hub) it uses podman,
# buildah, runc and podman-compose from Debian (installed if missing), with local stand-ins for
# the public images (scripts/container-bases.sh) passed as build arguments and variables, and a
# containers.conf of its own for two quirks of such machines (crun fails: runc; the default
# rlimits exceed the hard limits: nofile 20000, nproc 4096).
#
# Models: TANDEM_SHARED_DIR/models (default ../shared/models) is mounted at /models, with
# efficientnet_lite2.onnx as the accurate model. Timings and the image size are printed at the end.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
shared="$(cd "${TANDEM_SHARED_DIR:-$root/../shared}" && pwd)"
[ -f "$shared/models/mobilenet_v2.onnx" ] || { echo "container-test: no models in $shared/models" >&2; exit 1; }
image_file="$shared/images/sample_01.jpg"

t0=$SECONDS
say() { printf 'container-test [%4ss] %s\n' "$((SECONDS - t0))" "$*" >&2; }
fail() { say "FAILED: $*"; exit 1; }

state="$root/target/container-test"
mkdir -p "$state"

# --- The engine -------------------------------------------------------------------------------
build_args=()
if docker info >/dev/null 2>&1; then
  engine=docker
  compose=(docker compose)
else
  engine=podman
  if ! command -v podman >/dev/null || ! command -v podman-compose >/dev/null ||
     ! command -v debootstrap >/dev/null || ! command -v runc >/dev/null || ! command -v iptables >/dev/null; then
    [ "$(id -u)" = 0 ] || fail "no Docker engine, and podman, podman-compose, runc and debootstrap are missing (install them, or run as root to have them installed)"
    # iptables: netavark, podman's network backend, sets up the build containers' network with it.
    say "installing podman, buildah, runc, podman-compose, debootstrap, iptables"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q podman buildah runc podman-compose debootstrap netavark aardvark-dns iptables >/dev/null 2>&1 ||
      { apt-get update -q >/dev/null && apt-get install -y -q podman buildah runc podman-compose debootstrap netavark aardvark-dns iptables >/dev/null; }
  fi
  cat >"$state/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]

[engine]
runtime = "runc"
EOF
  export CONTAINERS_CONF="$state/containers.conf"
  mapfile -t bases < <("$root/scripts/container-bases.sh")
  [ "${#bases[@]}" = 3 ] || fail "scripts/container-bases.sh made no base images"
  # Docker's image format keeps HEALTHCHECK (OCI's has no such field).
  build_args=(--format docker --build-arg "BASE_IMAGE=${bases[0]}" --build-arg "RUST_IMAGE=${bases[1]}")
  export REDIS_IMAGE="${bases[2]}"
  compose=(podman-compose)
fi
say "engine: $engine"

image="localhost/tandem:container-test"
project="tandem-ct"
embedded_project="tandem-ct-embedded"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
base="http://127.0.0.1:$port"

export TANDEM_IMAGE="$image"
export TANDEM_MODELS="$shared/models"
export TANDEM_ACCURATE_MODEL=efficientnet_lite2.onnx
export TANDEM_PULL_MISSING=false
export TANDEM_PORT="127.0.0.1:$port"
# A killed worker's jobs are taken over after this long (the default, 30 s, only makes the test slower).
export TANDEM_RECLAIM_AFTER=5

up() { "${compose[@]}" -p "$1" -f "$2" up -d --no-build >"$state/$1-up.log" 2>&1 || { cat "$state/$1-up.log" >&2; fail "compose up ($2)"; }; }
down() {
  "${compose[@]}" -p "$1" -f "$2" down -v >"$state/$1-down.log" 2>&1 || true
  # podman-compose leaves the project's network behind.
  $engine network rm "$1_default" >/dev/null 2>&1 || true
}
# The containers of one service of a project, by compose's labels (the same in both engines).
containers_of() {
  $engine ps -a --filter "label=com.docker.compose.project=$1" --filter "label=com.docker.compose.service=$2" \
    --format '{{.Names}}' | sort
}
healthy() {
  if [ "$engine" = podman ]; then
    # podman runs healthchecks from systemd timers; with no systemd, run the image's one now.
    podman healthcheck run "$1" >/dev/null 2>&1
  else
    [ "$(docker inspect --format '{{.State.Health.Status}}' "$1" 2>/dev/null)" = healthy ]
  fi
}
wait_healthy() { # CONTAINER SECONDS
  local deadline=$((SECONDS + $2))
  until healthy "$1"; do [ "$SECONDS" -lt "$deadline" ] || return 1; sleep 1; done
}
ready_workers() { curl -sf "$base/health/ready" | python3 -c 'import json,sys; print(json.load(sys.stdin)["workers"]["live"])' 2>/dev/null || echo -1; }
wait_ready() { # SECONDS [LIVE_WORKERS]
  local deadline=$((SECONDS + $1))
  until [ "$(ready_workers)" -ge "${2:-0}" ]; do [ "$SECONDS" -lt "$deadline" ] || return 1; sleep 1; done
}

dump_logs() {
  for p in "$project" "$embedded_project"; do
    for c in $($engine ps -a --filter "label=com.docker.compose.project=$p" --format '{{.Names}}'); do
      echo "----- logs of $c (last 30 lines)" >&2
      $engine logs --tail 30 "$c" >&2 2>&1 || true
    done
  done
}
prober=""
cleanup() {
  local rc=$?
  [ -n "$prober" ] && kill "$prober" 2>/dev/null
  [ "$rc" = 0 ] || dump_logs
  down "$project" compose.yaml
  down "$embedded_project" compose.embedded.yaml
  exit "$rc"
}
trap cleanup EXIT
# A CI timeout or Ctrl-C still tears down, with the logs.
trap 'exit 143' TERM
trap 'exit 130' INT
# A stack left over by an interrupted run would hold the names.
down "$project" compose.yaml
down "$embedded_project" compose.embedded.yaml

# --- 1. The image -----------------------------------------------------------------------------
say "building $image (first build: the whole dependency tree; later ones: Tandem's own code)"
build_started=$SECONDS
$engine build "${build_args[@]}" -t "$image" . >"$state/build.log" 2>&1 || { tail -40 "$state/build.log" >&2; fail "image build"; }
build_s=$((SECONDS - build_started))
size_bytes="$($engine image inspect --format '{{.Size}}' "$image")"
size_mb="$(python3 -c "print(f'{$size_bytes/1e6:.1f}')")"
say "image built in ${build_s}s: $size_mb MB"
$engine run --rm --entrypoint sh "$image" -c 'id -un; ls -la /usr/local/bin/tandem /usr/local/lib/onnxruntime; tandem --version' \
  >"$state/image-contents.txt" 2>&1 || { cat "$state/image-contents.txt" >&2; fail "the image does not run"; }
grep -qx tandem "$state/image-contents.txt" || fail "the image does not run as the tandem user"
# A fresh named volume at /models takes the image's ownership, so the tandem user can pull into it.
$engine volume create tandem-ct-models >/dev/null
$engine run --rm -v tandem-ct-models:/models --entrypoint sh "$image" -c 'touch /models/.probe && rm /models/.probe' \
  >/dev/null 2>&1 || { $engine volume rm tandem-ct-models >/dev/null 2>&1; fail "the tandem user cannot write a fresh /models volume"; }
$engine volume rm tandem-ct-models >/dev/null 2>&1 || true

# --- 2. The stack -----------------------------------------------------------------------------
say "compose.yaml up (redis, serve, 2 workers) on $base"
up "$project" compose.yaml
redis_c="$(containers_of "$project" redis)"
serve_c="$(containers_of "$project" serve)"
mapfile -t workers < <(containers_of "$project" worker)
[ -n "$redis_c" ] && [ -n "$serve_c" ] && [ "${#workers[@]}" = 2 ] ||
  fail "expected redis, serve and 2 workers, got: redis=$redis_c serve=$serve_c workers=${workers[*]}"
for c in "$redis_c" "$serve_c" "${workers[@]}"; do
  wait_healthy "$c" 180 || fail "$c is not healthy after 180 s"
done
wait_ready 60 2 || fail "serve is not ready with 2 live workers"
say "all healthy: $redis_c, $serve_c, ${workers[*]}"
redis_cli() { $engine exec "$redis_c" redis-cli --raw "$@"; }
[ "$(redis_cli CONFIG GET appendonly | tail -1)" = yes ] && [ "$(redis_cli CONFIG GET appendfsync | tail -1)" = always ] ||
  fail "Redis does not run with appendonly yes and appendfsync always"

# --- 3. End to end ----------------------------------------------------------------------------
"$root/scripts/e2e.sh" "$base" "$image_file" 120 >"$state/e2e.log" 2>&1 || { cat "$state/e2e.log" >&2; fail "scripts/e2e.sh"; }
sed 's/^/    /' "$state/e2e.log" >&2

# --- 4. A worker killed mid-run ---------------------------------------------------------------
victim="${workers[0]}"
victim_host="$($engine inspect --format '{{.Config.Hostname}}' "$victim")"
# Once 50 jobs are accepted: freeze the victim (so it cannot finish what it holds), read the jobs
# its consumer (named after its host name) holds in the group, kill it. Retried (up to 20 times)
# until it is caught holding some, so that the takeover is what is tested: a worker holds a job
# only while it runs it (about 20 ms), so the load is long enough (600 jobs, several seconds on a
# fast machine) for the 40 tries to catch one.
kill_victim_holding_jobs() {
  for _ in $(seq 40); do
    $engine pause "$victim" >/dev/null 2>&1 || return 1
    $engine exec "$redis_c" redis-cli --raw XPENDING tandem:jobs workers - + 1000 |
      paste - - - - | awk -v c="$victim_host-" 'index($2, c) == 1 { print $1 }' >"$state/victim-held"
    if [ -s "$state/victim-held" ]; then
      $engine kill "$victim" >/dev/null 2>&1
      return
    fi
    $engine unpause "$victim" >/dev/null 2>&1 || return 1
    sleep 0.2
  done
  return 1
}
export engine redis_c victim victim_host state
export -f kill_victim_holding_jobs
kill_jobs=600
say "$kill_jobs jobs; $engine kill $victim once 50 are accepted, while it holds jobs"
: >"$state/victim-held"
load_started=$SECONDS
python3 "$root/scripts/jobs_complete.py" "$base" "$image_file" --jobs "$kill_jobs" --concurrency 8 \
  --at 50 --run kill_victim_holding_jobs --timeout 300 --out "$state/jobs-kill.json" \
  >"$state/jobs-kill.txt" || { cat "$state/jobs-kill.txt" >&2; fail "not every job completed after the worker was killed"; }
kill_s=$((SECONDS - load_started))
held="$(wc -l <"$state/victim-held")"
[ "$held" -gt 0 ] || fail "the victim was never caught holding a job"
# The jobs the victim was running when it died were run again by the other worker: a second
# attempt. (Not every entry it held need show one: an entry read from the stream but not yet
# started has no attempt counted, and its first attempt is the other worker's.)
left="$(redis_cli XPENDING tandem:jobs workers | head -1)"
dead="$(redis_cli XLEN tandem:dead)"
[ "$left" = 0 ] || fail "$left jobs still pending in the consumer group after all completed"
[ "$dead" = 0 ] || fail "$dead jobs dead-lettered"
retried="$(python3 - "$state/jobs-kill.json" <<'EOF'
import json, sys
print(sum(1 for n in json.load(open(sys.argv[1]))["attempts"].values() if (n or 0) >= 2))
EOF
)"
[ "$retried" -ge 1 ] || fail "the killed worker held $held jobs, yet no job took a second attempt"
say "all $kill_jobs completed in ${kill_s}s; $victim was killed holding $held jobs; $retried jobs took a second attempt: $(cat "$state/jobs-kill.txt")"

# --- 5. Redis killed and started again -------------------------------------------------------
# SIGKILL, so Redis cannot save on the way down: what it comes back with is its append-only file.
kept_job="$(python3 -c 'import json,sys; print(next(iter(json.load(open(sys.argv[1]))["final"])))' "$state/jobs-kill.json")" ||
  fail "no completed job to look for after the Redis restart"
serve_started="$($engine inspect --format '{{.State.StartedAt}}' "$serve_c")"
# serve's readiness every 0.2 s through the restart: it should see the outage, then recover.
( for _ in $(seq 300); do curl -s -o /dev/null -w '%{http_code}\n' --max-time 1 "$base/health/ready" || true; sleep 0.2; done ) \
  >"$state/ready-during-restart.txt" 2>/dev/null &
prober=$!
last_job="$(curl -sf -H 'content-type: image/jpeg' --data-binary @"$image_file" "$base/predict" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["job_id"] or "")')" || fail "POST /predict before the Redis kill"
[ -n "$last_job" ] || fail "no job id just before the Redis kill"
say "killing $redis_c just after job $last_job was acknowledged, then starting it"
$engine kill "$redis_c" >/dev/null 2>&1 || fail "$engine kill $redis_c"
sleep 2
$engine start "$redis_c" >/dev/null 2>&1 || fail "$engine start $redis_c"
redis_started=$SECONDS
wait_ready 120 1 || fail "serve did not become ready again after the Redis restart"
recover_s=$((SECONDS - redis_started))
kill "$prober" 2>/dev/null || true
prober=""
not_ready="$(grep -vc '^200$' "$state/ready-during-restart.txt" || true)"
[ "$not_ready" -gt 0 ] || fail "serve never reported not ready while Redis was down"
[ "$($engine inspect --format '{{.State.StartedAt}}' "$serve_c")" = "$serve_started" ] || fail "serve was restarted"
job_status() { curl -sf "$base/job/$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])'; }
kept="$(job_status "$kept_job")" || fail "job $kept_job, completed before the Redis kill, is gone"
[ "$kept" = completed ] || fail "job $kept_job is $kept after the Redis kill"
deadline=$((SECONDS + 120))
until [ "$(job_status "$last_job" || echo gone)" = completed ]; do
  [ "$SECONDS" -lt "$deadline" ] || fail "job $last_job, acknowledged just before the Redis kill, is $(job_status "$last_job" || echo gone)"
  sleep 0.5
done
python3 "$root/scripts/jobs_complete.py" "$base" "$image_file" --jobs 20 --concurrency 4 --timeout 120 \
  >"$state/jobs-after-redis.txt" || { cat "$state/jobs-after-redis.txt" >&2; fail "jobs after the Redis restart"; }
say "serve not ready for $not_ready probes, ready again ${recover_s}s after Redis started, not restarted; both earlier jobs kept and completed; 20 new jobs completed"

# --- 6. Drain on stop -------------------------------------------------------------------------
# A worker stopped in the middle of 60 jobs finishes what it holds and exits 0 within the grace
# period; the other worker does the rest.
survivor="${workers[1]}"
$engine start "$victim" >/dev/null 2>&1 || fail "$engine start $victim"
wait_ready 120 2 || fail "two live workers again"
stop_survivor() {
  local started=$SECONDS
  $engine stop -t 30 "$survivor" >/dev/null 2>&1 || return 1
  echo $((SECONDS - started)) >"$state/stop-seconds"
}
export survivor
export -f stop_survivor
python3 "$root/scripts/jobs_complete.py" "$base" "$image_file" --jobs 60 --concurrency 8 \
  --at 20 --run stop_survivor --timeout 120 >"$state/jobs-drain.txt" ||
  { cat "$state/jobs-drain.txt" >&2; fail "not every job completed with a worker stopped mid-run"; }
stop_s="$(cat "$state/stop-seconds")"
code="$($engine inspect --format '{{.State.ExitCode}}' "$survivor")"
[ "$code" = 0 ] || fail "$survivor exited $code on SIGTERM (expected a clean drain, 0)"
[ "$stop_s" -lt 30 ] || fail "$survivor took ${stop_s}s to stop, past the 30 s grace period"
started=$SECONDS
$engine stop -t 30 "$serve_c" >/dev/null 2>&1 || fail "$engine stop $serve_c"
serve_stop_s=$((SECONDS - started))
code="$($engine inspect --format '{{.State.ExitCode}}' "$serve_c")"
[ "$code" = 0 ] || fail "$serve_c exited $code on SIGTERM (expected a clean drain, 0)"
say "a worker stopped mid-run in ${stop_s}s (exit 0), serve in ${serve_stop_s}s (exit 0); all 60 jobs completed"
down "$project" compose.yaml

# --- 7. Embedded, one container ---------------------------------------------------------------
say "compose.embedded.yaml up"
up "$embedded_project" compose.embedded.yaml
embedded_c="$(containers_of "$embedded_project" tandem)"
wait_healthy "$embedded_c" 180 || fail "$embedded_c is not healthy"
wait_ready 60 || fail "the embedded service is not ready"
"$root/scripts/e2e.sh" "$base" "$image_file" 120 >"$state/e2e-embedded.log" 2>&1 ||
  { cat "$state/e2e-embedded.log" >&2; fail "scripts/e2e.sh against the embedded container"; }
say "embedded container: e2e passed"

say "PASSED: image $size_mb MB built in ${build_s}s; $kill_jobs jobs with a worker killed (holding $held): ${kill_s}s; Redis killed and started: ready after ${recover_s}s; whole test $((SECONDS - t0))s"
