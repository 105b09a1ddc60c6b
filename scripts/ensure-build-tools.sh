#!/usr/bin/env bash
# Build tools beyond Rust and a C compiler: `nasm`, for libjpeg-turbo's SIMD code (the default
# `jpeg-simd` feature). Installs it with apt-get when missing and possible; otherwise says how
# to build without it.
set -euo pipefail
command -v nasm >/dev/null && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing nasm (for libjpeg-turbo's SIMD code)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q nasm >/dev/null 2>&1 ||
    { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nasm >/dev/null; }
  command -v nasm >/dev/null && exit 0
fi
echo "nasm is needed to build libjpeg-turbo's SIMD code: install it (e.g. apt-get install nasm)," >&2
echo "or build without it: cargo build --no-default-features" >&2
exit 1
