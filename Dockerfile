# syntax=docker/dockerfile:1
#
# Tandem's one image: `tandem serve` by default, `tandem worker` (or any other subcommand) when
# that is the command. See "Run with containers" in the README, and compose.yaml.
#
#   docker build -t tandem .
#   docker build --build-arg JPEG_SIMD=false --build-arg ORT_VERSION=1.31.1 -t tandem .
#
# The base images are build arguments, so a machine without Docker Hub builds this same file from
# local equivalents (scripts/container-bases.sh makes them with debootstrap).
ARG RUST_IMAGE=docker.io/library/rust:1.95-slim-bookworm
ARG BASE_IMAGE=docker.io/library/debian:bookworm-slim

# --- cargo-chef: the dependency tree is built in a layer of its own, keyed on the dependency
# recipe only, so a change to Tandem's own code does not download or rebuild any crate.
FROM ${RUST_IMAGE} AS chef
ARG CARGO_CHEF_VERSION=0.1.78
RUN cargo install --locked --root /usr/local cargo-chef@${CARGO_CHEF_VERSION} \
    && rm -rf "${CARGO_HOME:-/usr/local/cargo}/registry"
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
# libjpeg-turbo's SIMD code (the `jpeg-simd` feature, about 2x faster JPEG decoding) needs nasm.
ARG JPEG_SIMD=true
# No debug line tables in the image's binary (Cargo.toml keeps them for local builds): about a
# fifth of the size; panics still name their functions.
ENV CARGO_PROFILE_RELEASE_DEBUG=none CARGO_PROFILE_RELEASE_STRIP=debuginfo
RUN if [ "$JPEG_SIMD" = true ]; then \
        apt-get update && apt-get install -y --no-install-recommends nasm && rm -rf /var/lib/apt/lists/*; \
    fi
COPY --from=planner /src/recipe.json recipe.json
RUN features="$([ "$JPEG_SIMD" = true ] || echo --no-default-features)" \
    && cargo chef cook --release --locked --bin tandem $features --recipe-path recipe.json
# Only what the binary is built from, so a change to the docs or scripts does not rebuild it.
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY benches benches
RUN features="$([ "$JPEG_SIMD" = true ] || echo --no-default-features)" \
    && cargo build --release --locked --bin tandem $features \
    && cp target/release/tandem /usr/local/bin/tandem \
    && rm -rf target/release/.fingerprint/tandem-* target/release/deps/tandem-* target/release/deps/libtandem-*

# --- ONNX Runtime: the shared library from the official `onnxruntime` wheel on PyPI, fetched by
# the same script as outside containers. Tandem is built against ONNX Runtime's API 1.31 (`ort`'s
# `api-31`): ORT_VERSION must be 1.31 or later.
FROM ${RUST_IMAGE} AS onnxruntime
ARG ORT_VERSION=1.31.1
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-pip \
    && rm -rf /var/lib/apt/lists/*
COPY scripts/fetch-onnxruntime.sh /ort/scripts/
RUN ORT_VERSION="$ORT_VERSION" /ort/scripts/fetch-onnxruntime.sh

# --- The runtime: the binary, ONNX Runtime and a user to run them as; nothing else.
FROM ${BASE_IMAGE}
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin tandem \
    && mkdir /models && chown tandem:tandem /models
COPY --from=onnxruntime /ort/.onnxruntime/ /usr/local/lib/onnxruntime/
COPY --from=builder /usr/local/bin/tandem /usr/local/bin/tandem
# Every setting is a TANDEM_* variable (see `tandem serve --help`); these are the ones a
# container needs to differ from the defaults. TANDEM_METRICS_ADDR is the worker's listener (and
# `tandem healthcheck` asks it); `serve` does not read it.
ENV ORT_DYLIB_PATH=/usr/local/lib/onnxruntime/libonnxruntime.so \
    TANDEM_ADDR=0.0.0.0:8000 \
    TANDEM_METRICS_ADDR=0.0.0.0:9100 \
    TANDEM_MODEL_DIR=/models \
    TANDEM_DRAIN_TIMEOUT=8
# The model files: mount a volume (or a directory) here; `tandem models pull`, or
# TANDEM_PULL_MISSING=true, fills it.
VOLUME /models
USER tandem
EXPOSE 8000 9100
# SIGTERM starts the drain: `serve` finishes open requests, `worker` its jobs, within
# TANDEM_DRAIN_TIMEOUT, which stays under `docker stop`'s default 10 s.
STOPSIGNAL SIGTERM
# The start period covers a first start that downloads the models (TANDEM_PULL_MISSING).
HEALTHCHECK --interval=10s --timeout=5s --start-period=300s --retries=3 CMD ["tandem", "healthcheck"]
ENTRYPOINT ["tandem"]
CMD ["serve"]
