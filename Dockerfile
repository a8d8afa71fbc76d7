# syntax=docker/dockerfile:1
# Multi-stage build of confirmd. The builder compiles with the committed sqlx offline data
# (.sqlx/), so no database is needed at build time; the runtime image holds only the binary.
#
# The builder copies the whole build context (.dockerignore keeps target/, .git and node_modules
# out) instead of listing the crate's files one by one: a hand-written list broke the build as
# soon as Cargo.toml named a file the list forgot. What a dependency layer would save, BuildKit's
# cache mounts save instead: cargo's registry and the target folder persist between builds, so a
# source edit recompiles confirmd and nothing else. `.ci/dockerfile-replay` runs this stage's
# COPY and RUN lines in CI, without a Docker engine, from exactly what the context holds.

FROM rust:1.95-slim-bookworm AS builder
WORKDIR /src
ENV SQLX_OFFLINE=true CARGO_TERM_COLOR=never
COPY . .
# The target folder is a cache mount, gone when the step ends: the binary is copied out of it.
# --no-default-features leaves out the `tools` feature (bench, demo, the mail catcher and the
# crates they need): the image runs the service only. .ci/run checks both.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --no-default-features --bin confirmd \
    && mkdir -p out && cp target/release/confirmd out/confirmd

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home /app --shell /usr/sbin/nologin confirmd \
    && mkdir -p /app /data && chown confirmd /app /data
COPY --from=builder /src/out/confirmd /usr/local/bin/confirmd
COPY config /app/config
WORKDIR /app
USER confirmd
ENV CONFIRMD_ENV=production
EXPOSE 3000
ENTRYPOINT ["confirmd"]
CMD ["serve"]
