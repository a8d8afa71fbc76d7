# Multi-stage build of confirmd. The builder compiles with the committed sqlx offline data
# (.sqlx/), so no database is needed at build time; the runtime image holds only the binary.

FROM rust:1.95-slim-bookworm AS builder
WORKDIR /src
ENV SQLX_OFFLINE=true CARGO_TERM_COLOR=never
# Dependencies first, in their own layer: source edits then rebuild only confirmd itself.
# The benchmarks' package is a workspace member: cargo needs its manifest (and a target) to load
# the workspace, though it builds only confirmd (the default member).
COPY Cargo.toml Cargo.lock ./
COPY benches/harness/Cargo.toml ./benches/harness/
RUN mkdir -p src benches/harness/src && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs benches/harness/src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src
COPY src ./src
COPY migrations ./migrations
COPY config ./config
COPY .sqlx ./.sqlx
# The dummy build left fresher artifacts for the crate itself: make cargo rebuild it.
RUN touch src/main.rs src/lib.rs && cargo build --release --locked

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home /app --shell /usr/sbin/nologin confirmd \
    && mkdir -p /app /data && chown confirmd /app /data
COPY --from=builder /src/target/release/confirmd /usr/local/bin/confirmd
COPY config /app/config
WORKDIR /app
USER confirmd
ENV CONFIRMD_ENV=production
EXPOSE 3000
ENTRYPOINT ["confirmd"]
CMD ["serve"]
