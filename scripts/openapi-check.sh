#!/usr/bin/env bash
# Checks the API document as a client meets it: builds tandem, starts `tandem serve` with the
# shared test models, fetches /openapi.json and validates it as OpenAPI 3.1 with a real
# validator (openapi-spec-validator, pinned in scripts/openapi-check.requirements.txt, in a
# venv under target/), and checks that Swagger UI at /docs/ loads offline: the page and every
# script and stylesheet it references are served by tandem itself (200), and nothing in the page
# or its configuration points at another host.
#   scripts/openapi-check.sh
# Needs python3 (with venv), curl, and the test models (TANDEM_SHARED_DIR, else ../shared).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

shared="${TANDEM_SHARED_DIR:-$root/../shared}"
[ -f "$shared/models/mobilenet_v2.onnx" ] || { echo "openapi-check: no test models in $shared/models" >&2; exit 1; }

# The validator, installed once per set of pins.
venv="$root/target/openapi-venv"
pins="$root/scripts/openapi-check.requirements.txt"
"$root/scripts/pinned-venv.sh" "$venv" "$pins"

cargo build --locked --bin tandem

work="$(mktemp -d)"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
base="http://127.0.0.1:$port"
"$root/target/debug/tandem" serve --addr "127.0.0.1:$port" --model-dir "$shared/models" \
  --accurate-model efficientnet_lite2.onnx --intra-threads 1 >"$work/serve.log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 600); do
  curl -sf "$base/health/ready" >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || { cat "$work/serve.log" >&2; echo "openapi-check: tandem serve exited" >&2; exit 1; }
  sleep 0.1
done
curl -sf "$base/health/ready" >/dev/null || { cat "$work/serve.log" >&2; echo "openapi-check: not ready" >&2; exit 1; }

# The document, validated against the OpenAPI 3.1 schema (not just "some" version).
curl -sSf "$base/openapi.json" -o "$work/openapi.json"
"$venv/bin/python" - "$work/openapi.json" <<'PY'
import json, sys
from openapi_spec_validator import OpenAPIV31SpecValidator, validate
from openapi_spec_validator.readers import read_from_filename

spec, _ = read_from_filename(sys.argv[1])
assert spec.get("openapi") == "3.1.0", f"openapi is {spec.get('openapi')!r}, not 3.1.0"
validate(spec, cls=OpenAPIV31SpecValidator)
print(f"openapi-check: /openapi.json is valid OpenAPI 3.1 ({len(spec['paths'])} paths)")
PY

# Swagger UI, offline: every file the page loads comes from here.
curl -sSf "$base/docs/" -o "$work/docs.html"
"$venv/bin/python" - "$base" "$work/docs.html" <<'PY'
import re, sys, urllib.parse, urllib.request

base, page = sys.argv[1], sys.argv[2]
html = open(page, encoding="utf-8").read()
here = urllib.parse.urlsplit(base).netloc
refs = re.findall(r'(?:src|href)\s*=\s*["\']([^"\']+)["\']', html, flags=re.I)
scripts = [r for r in refs if r.split("?")[0].endswith(".js")]
styles = [r for r in refs if r.split("?")[0].endswith(".css")]
assert scripts and styles, f"no scripts or stylesheets in /docs/: {refs}"

def fetch(url):
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.status, response.read().decode("utf-8", "replace")

for ref in refs:
    url = urllib.parse.urljoin(base + "/docs/", ref)
    host = urllib.parse.urlsplit(url).netloc
    assert host == here, f"/docs/ loads {ref} from {host}, not from tandem"
    status, _ = fetch(url)
    assert status == 200, f"{url}: HTTP {status}"
# Swagger UI's configuration: where it reads the document, and no validator badge (which
# would send the document to validator.swagger.io).
_, initializer = fetch(base + "/docs/swagger-initializer.js")
assert '"url": "/openapi.json"' in initializer, initializer
assert re.search(r'https?://', initializer) is None, f"the initializer names another host:\n{initializer}"
assert re.search(r'https?://', html) is None, f"the page names another host:\n{html}"
print(f"openapi-check: /docs/ and its {len(refs)} files are served by tandem ({len(scripts)} scripts, {len(styles)} stylesheets)")
PY
echo "openapi-check: ok"
