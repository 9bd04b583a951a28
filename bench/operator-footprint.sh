#!/usr/bin/env bash
# Operator footprint on the e2e harness: 100 clusters with simulated pods,
# time to all Ready and idle RSS of the operator (release build).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/capstan/target}"
cargo build --release --bin capstan
CAPSTAN_BIN="$CARGO_TARGET_DIR/release/capstan" \
  cargo test --release -p capstan-e2e --test footprint -- --ignored --nocapture 2>&1 \
  | grep -E '^(clusters|apply|time|operator|API)'
