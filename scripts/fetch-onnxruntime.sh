#!/usr/bin/env bash
# Fetches the ONNX Runtime shared library that `tandem` loads at run time.
#
# `ort` is built with `load-dynamic`, so the library is not linked in: it comes from the
# official `onnxruntime` wheel on PyPI (the only place this project can fetch it from) and is
# unpacked into `.onnxruntime/` (git-ignored), where `tandem` looks for it. Set ORT_DYLIB_PATH
# to use a library from somewhere else instead.
set -euo pipefail

ORT_VERSION="${ORT_VERSION:-1.31.1}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/.onnxruntime"
lib="$dest/libonnxruntime.so.$ORT_VERSION"

if [ -f "$lib" ]; then
  echo "onnxruntime $ORT_VERSION already in $dest"
  exit 0
fi

python="$(command -v python3 || command -v python)" || { echo "python3 with pip is needed to fetch onnxruntime" >&2; exit 1; }
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# The wheel's native library does not depend on the Python version; pin one tag so pip
# resolves the same file on every machine.
# The machine's architecture (x86_64 or aarch64: the two the wheel is published for).
arch="$(uname -m)"
case "$arch" in
  x86_64 | aarch64) ;;
  arm64) arch=aarch64 ;;
  *) echo "no onnxruntime wheel for $arch (x86_64 and aarch64 only)" >&2; exit 1 ;;
esac
"$python" -m pip download --quiet --no-deps --only-binary=:all: \
  --platform "manylinux_2_28_$arch" --platform "manylinux_2_27_$arch" --platform "manylinux_2_17_$arch" \
  --python-version 3.11 --implementation cp \
  --dest "$tmp" "onnxruntime==$ORT_VERSION"

mkdir -p "$dest"
"$python" - "$tmp" "$dest" <<'PY'
import glob, os, sys, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
wheel = glob.glob(os.path.join(tmp, "onnxruntime-*.whl"))[0]
with zipfile.ZipFile(wheel) as zf:
    for name in zf.namelist():
        base = os.path.basename(name)
        if base.startswith("libonnxruntime") and ".so" in base:
            with zf.open(name) as src, open(os.path.join(dest, base), "wb") as out:
                out.write(src.read())
PY
ln -sf "libonnxruntime.so.$ORT_VERSION" "$dest/libonnxruntime.so"
echo "onnxruntime $ORT_VERSION unpacked into $dest"
