# Keel in a container: build the binary, fetch the default models from package registries,
# and run as a non-root user. Models can also be mounted at /app/models instead.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY crates ./crates
RUN cargo build --release --bin keel

FROM python:3.11-slim-bookworm AS models
WORKDIR /src
COPY scripts ./scripts
COPY assets ./assets
RUN bash scripts/fetch-models.sh && bash scripts/fetch-onnxruntime.sh

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /app keel
WORKDIR /app
COPY --from=build /src/target/release/keel /usr/local/bin/keel
COPY --from=models /src/models ./models
USER 10001
# Listens on 0.0.0.0: with a gateway provider key (OPENAI_API_KEY, ANTHROPIC_API_KEY) set,
# also set KEEL_API_KEYS, or Keel refuses to start (KEEL_ALLOW_OPEN_GATEWAY=true overrides).
ENV PORT=8080 LOG_FORMAT=json
EXPOSE 8080
STOPSIGNAL SIGTERM
CMD ["keel", "serve"]
