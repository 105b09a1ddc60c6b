#!/usr/bin/env bash
# Redis failover under load (scripts/failover_test.py): a primary, a replica and three sentinels
# (real redis-server and redis-server --sentinel processes) on 127.0.0.1, one serve and two workers
# given a redis+sentinel:// URL; the primary killed under load, the replica promoted, and the
# service following it without a restart. Prints what the failover lost and what WAIT would cost.
#   scripts/failover-test.sh [--seconds N]
# Needs redis-server, redis-cli and the test models (TANDEM_SHARED_DIR, else ../shared).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
for tool in redis-server redis-cli; do
  command -v "$tool" >/dev/null || { echo "failover-test: $tool is missing" >&2; exit 1; }
done
cargo build --locked --bin tandem
exec python3 "$root/scripts/failover_test.py" --binary "$root/target/debug/tandem" "$@"
