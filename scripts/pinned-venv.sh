#!/usr/bin/env bash
# Makes (or keeps) a Python venv holding exactly the pins of a requirements file:
#   scripts/pinned-venv.sh VENV_DIR REQUIREMENTS_FILE
# The venv is made again only when the pins change (a copy of them is kept in VENV_DIR/.pins).
set -euo pipefail
venv="$1"
pins="$2"
if ! cmp -s "$pins" "$venv/.pins" 2>/dev/null; then
  echo "pinned-venv: making $venv from $(basename "$pins")" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$pins"
  cp "$pins" "$venv/.pins"
fi
