#!/usr/bin/env bash
# The web page (`GET /`) in a real browser: headless Chromium driven by Selenium, against a real
# `tandem serve` with the shared test models (embedded queue, no Redis, no network).
#   scripts/browser-test.sh [ARGS...]   (ARGS go to scripts/browser_test.py, e.g. --only phone)
# Installs Debian's chromium and chromium-driver when missing (as root), keeps a venv with the
# pinned selenium in target/browser-venv, builds target/debug/tandem. The page's screenshots
# (page-desktop.png, page-phone.png) go to target/screenshots, so a test run leaves the tree
# clean; `scripts/browser-test.sh --docs docs` refreshes the README's copies in docs/.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# 4.52.0 needs a newer certifi than the registry has.
SELENIUM_VERSION=4.51.0
shared="${TANDEM_SHARED_DIR:-$root/../shared}"
[ -f "$shared/models/efficientnet_lite2.onnx" ] || {
  echo "browser-test: the test models are expected in $shared/models (set TANDEM_SHARED_DIR)" >&2
  exit 1
}

# Debian's browser and its matching driver (Selenium's own driver download needs the network).
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  [ "$(id -u)" = 0 ] || { echo "browser-test: chromium and chromium-driver are missing; install them as root" >&2; exit 1; }
  echo "browser-test: installing chromium and chromium-driver"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null ||
    { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null; }
fi

# The venv, reused while it has the pinned selenium.
venv="$root/target/browser-venv"
if ! "$venv/bin/python" -c "import selenium, sys; sys.exit(selenium.__version__ != '$SELENIUM_VERSION')" 2>/dev/null; then
  echo "browser-test: making $venv with selenium $SELENIUM_VERSION"
  rm -rf "$venv"
  if ! python3 -m venv "$venv" 2>/dev/null; then
    # Debian's python3 keeps venv in its own package.
    [ "$(id -u)" = 0 ] && { apt-get install -y -q python3-venv >/dev/null 2>&1 ||
      { apt-get update -q >/dev/null && apt-get install -y -q python3-venv >/dev/null; }; }
    rm -rf "$venv"
    python3 -m venv "$venv"
  fi
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "selenium==$SELENIUM_VERSION"
fi

"$root/scripts/ensure-build-tools.sh"
"$root/scripts/fetch-onnxruntime.sh" >/dev/null
cargo build --locked --bin tandem

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
base="http://127.0.0.1:$port"
log="$(mktemp)"
./target/debug/tandem serve --addr "127.0.0.1:$port" --model-dir "$shared/models" \
  --accurate-model efficientnet_lite2.onnx --intra-threads 1 >"$log" 2>&1 &
server=$!
stop() {
  kill "$server" 2>/dev/null || true
  # Bounded: SIGTERM drains; past 10 s, SIGKILL.
  for _ in $(seq 100); do kill -0 "$server" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$server" 2>/dev/null || true
  rm -f "$log"
}
trap stop EXIT

ready=0
for _ in $(seq 600); do
  kill -0 "$server" 2>/dev/null || break
  if [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$base/health/ready")" = 200 ]; then ready=1; break; fi
  sleep 0.1
done
if [ "$ready" != 1 ]; then
  echo "browser-test: tandem serve was not ready at $base within 60 s; its log:" >&2
  cat "$log" >&2
  exit 1
fi

echo "browser-test: tandem serve at $base"
if ! timeout 300 "$venv/bin/python" "$root/scripts/browser_test.py" --base "$base" --shared "$shared" --docs "$root/target/screenshots" "$@"; then
  echo "browser-test: FAILED; the server's log:" >&2
  tail -n 40 "$log" >&2
  exit 1
fi
