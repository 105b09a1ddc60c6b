#!/usr/bin/env bash
# Local stand-ins for the three public images the container build and compose.yaml use, for
# machines that reach the package registries but not Docker Hub:
#
#   localhost/tandem-base/debian:bookworm-slim  for debian:bookworm-slim  (debootstrap --variant=minbase,
#                                               trimmed the way the official slim image is)
#   localhost/tandem-base/rust:bookworm         for rust:*-slim-bookworm (that base, gcc, this machine's
#                                               own Rust toolchain and certificate authorities)
#   localhost/tandem-base/redis:bookworm        for redis:7-bookworm     (that base and Debian's redis-server)
#
# The Dockerfile and compose.yaml take these names as build arguments / variables, so the same
# files build unchanged. Each image is made only if podman does not have it yet (a CI machine
# keeps them between runs); TANDEM_REBUILD_BASES=1 makes them again. Needs root, podman,
# debootstrap and the Debian mirror apt already uses. Prints the three names, one per line.
set -euo pipefail

debian_image=localhost/tandem-base/debian:bookworm-slim
rust_image=localhost/tandem-base/rust:bookworm
redis_image=localhost/tandem-base/redis:bookworm

# The mirror apt uses here (deb822 or one-line sources), else Debian's own.
mirror="${DEBIAN_MIRROR:-$(
  { grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}'
    grep -hs '^deb ' /etc/apt/sources.list | awk '{print $2}'; } | grep -v security | head -1 || true
)}"
mirror="${mirror:-http://deb.debian.org/debian}"

have() { [ "${TANDEM_REBUILD_BASES:-0}" != 1 ] && podman image exists "$1"; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

if ! have "$debian_image"; then
  echo "container-bases: debootstrap bookworm from $mirror -> $debian_image" >&2
  rootfs="$work/rootfs"
  debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 ||
    { tail -20 "$work/debootstrap.log" >&2; exit 1; }
  # What the official slim image does (debuerreotype's slimify): no docs, man pages or
  # translations, now or in what apt installs later; no package lists or .deb cache.
  cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
EOF
  cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";
EOF
  echo 'APT::Install-Recommends "false";' >"$rootfs/etc/apt/apt.conf.d/docker-no-recommends"
  security="${mirror%/debian}/debian-security"
  cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb $security bookworm-security main
EOF
  find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$rootfs"/usr/share/{man,info,lintian}/* "$rootfs"/var/cache/apt/*.bin \
    "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log
  find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
  tar -C "$rootfs" -c . | podman import --quiet \
    --change 'CMD ["bash"]' --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    - "$debian_image" >/dev/null
  rm -rf "$rootfs"
fi

if ! have "$rust_image"; then
  # This machine's one toolchain (no other can be fetched here): rustc, cargo and the standard
  # library for the host, without docs or sources.
  sysroot="$(rustc --print sysroot)"
  echo "container-bases: $(rustc --version) from $sysroot -> $rust_image" >&2
  mkdir -p "$work/rust/toolchain/bin"
  cp -a "$sysroot/bin/rustc" "$sysroot/bin/cargo" "$sysroot/bin/rustdoc" "$work/rust/toolchain/bin/"
  cp -a "$sysroot/lib" "$work/rust/toolchain/"
  [ -d "$sysroot/libexec" ] && cp -a "$sysroot/libexec" "$work/rust/toolchain/"
  # The certificate authorities this machine adds to the system's (a registry proxy's, say), so
  # that cargo and pip in the build reach the registries as they do here.
  mkdir -p "$work/rust/ca"
  find /usr/local/share/ca-certificates -name '*.crt' -exec cp {} "$work/rust/ca/" \; 2>/dev/null || true
  cat >"$work/rust/Dockerfile" <<EOF
FROM $debian_image
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates gcc libc6-dev make \
    && rm -rf /var/lib/apt/lists/*
COPY ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates >/dev/null
COPY toolchain /usr/local/rust
ENV CARGO_HOME=/usr/local/cargo PATH=/usr/local/cargo/bin:/usr/local/rust/bin:\$PATH
RUN cargo --version && rustc --version
EOF
  podman build --quiet -t "$rust_image" "$work/rust" >/dev/null
fi

if ! have "$redis_image"; then
  echo "container-bases: Debian's redis-server -> $redis_image" >&2
  mkdir -p "$work/redis"
  # As the official image: data in /data, run as the redis user, `redis-server` the command.
  cat >"$work/redis/Dockerfile" <<EOF
FROM $debian_image
RUN apt-get update && apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/* && mkdir /data && chown redis:redis /data
WORKDIR /data
USER redis
EXPOSE 6379
CMD ["redis-server", "--protected-mode", "no"]
EOF
  podman build --quiet -t "$redis_image" "$work/redis" >/dev/null
fi

printf '%s\n' "$debian_image" "$rust_image" "$redis_image"
