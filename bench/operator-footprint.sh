#!/usr/bin/env bash
# Operator footprint on the e2e harness: 100 clusters with simulated pods,
# time to all Ready and idle RSS of the operator (release build). Measures
# the static musl binary the image ships when the musl target and musl-gcc
# are installed (`rustup target add x86_64-unknown-linux-musl`, Debian's
# musl-tools), the glibc build otherwise; glibc's malloc keeps ~7 MiB more.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/capstan/target}"
musl=x86_64-unknown-linux-musl
if rustup target list --installed 2>/dev/null | grep -qx "$musl" && command -v musl-gcc >/dev/null; then
  cargo build --release --locked --target "$musl" --bin capstan
  bin="$CARGO_TARGET_DIR/$musl/release/capstan"
else
  cargo build --release --bin capstan
  bin="$CARGO_TARGET_DIR/release/capstan"
fi
echo "operator binary: $bin ($(file -b "$bin" | cut -d, -f1-2))"
# Every cluster resyncs every 20 s, so the idle window (60 s) sees each
# one reconciled about three times without any change.
CAPSTAN_BIN="$bin" CAPSTAN_RESYNC_SECONDS=20 CAPSTAN_FOOTPRINT_IDLE_SECONDS=60 \
  cargo test --release -p capstan-e2e --test e2e -- --ignored --nocapture footprint:: 2>&1 \
  | grep -E '^(clusters|apply|time|operator|API)'
