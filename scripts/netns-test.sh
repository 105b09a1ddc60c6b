#!/usr/bin/env bash
# Tandem across hosts, simulated (scripts/netns_test.py): network namespaces joined by a bridge,
# Redis 20 ms from the serve and worker hosts, 5,000 jobs through 2 serve x 3 workers counted
# exactly once, a worker host cut off past --reclaim-after and back, a serve host cut off from
# Redis and back, 2 % packet loss between the hosts, and the p50 cost of the distance.
# Everything it makes (namespaces, processes) is removed at the end, also on failure.
#   scripts/netns-test.sh [--jobs N] [--only SCENARIO]
# Needs root (network namespaces), iproute2, iptables (installed when missing), curl,
# redis-server, the test models (TANDEM_SHARED_DIR, else ../shared). Not root: skipped, loudly.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
if [ "$(id -u)" != 0 ]; then
  echo "netns-test: WARNING: skipped: network namespaces need root" >&2
  exit 0
fi
# iptables drops packets for the loss scenario (Debian's package, when missing).
if ! command -v iptables >/dev/null; then
  echo "netns-test: installing iptables (Debian's package)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends iptables >/dev/null ||
    { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends iptables >/dev/null; }
fi
for tool in ip curl redis-server redis-cli iptables; do
  command -v "$tool" >/dev/null || { echo "netns-test: $tool is missing" >&2; exit 1; }
done
cargo build --locked --bin tandem
exec python3 "$root/scripts/netns_test.py" --binary "$root/target/debug/tandem" "$@"
