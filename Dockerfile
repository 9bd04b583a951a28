# syntax=docker/dockerfile:1
# Capstan operator image. It also carries the binary that the init container
# of every PostgreSQL and PgBouncer pod copies into the pod (so stock
# PostgreSQL and PgBouncer images run the Capstan agents).
#
#   docker build -t capstan:dev .
#   kind load docker-image capstan:dev

FROM docker.io/library/rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY e2e e2e
# A fully static binary: it must run in any image the pods use.
RUN cargo build --release --locked --target x86_64-unknown-linux-musl --bin capstan \
 && cp target/x86_64-unknown-linux-musl/release/capstan /capstan

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /capstan /usr/local/bin/capstan
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/capstan"]
CMD ["operator"]
