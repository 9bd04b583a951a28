#!/usr/bin/env bash
# Major-upgrade measurement on the e2e harness (real PostgreSQL 17 and 18,
# PgBouncer, the operator and instance managers as release builds): a
# ~1 GB database (pgbench scale 70) upgraded 17 -> 18 while a writer commits
# through the pooler. Prints the write outage as the client saw it, the
# poolers' hold (status.upgrade.downtimeMs), pg_upgrade's time and the whole
# upgrade including re-cloned replicas.
#
# Needs root, PostgreSQL 17 and 18 ($CAPSTAN_PG17_BIN/$CAPSTAN_PG18_BIN,
# default /opt/capstan-pg/<major>/bin), PgBouncer and pgbench. The full log
# goes to /tmp/upgrade-bench.log.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/capstan/target}"
export CAPSTAN_PG17_BIN="${CAPSTAN_PG17_BIN:-/opt/capstan-pg/17/bin}"
export CAPSTAN_PG18_BIN="${CAPSTAN_PG18_BIN:-/opt/capstan-pg/18/bin}"
export PATH="$PATH:/usr/local/go/bin"
export CAPSTAN_K8S_BIN="${CAPSTAN_K8S_BIN:-$(bash .ci/build-k8s-tools.sh | tail -n1)}"
cargo build --release --bin capstan
log=/tmp/upgrade-bench.log
CAPSTAN_BIN="$CARGO_TARGET_DIR/release/capstan" \
  cargo test --release -p capstan-e2e --test e2e -- --ignored --nocapture upgrade_bench:: 2>&1 \
  | tee "$log" | grep -E '^upgrade-bench|SKIP|test result|panicked'
# A harness that could not start skips the scenario: that is no measurement.
grep -q '^upgrade-bench whole' "$log" 2>/dev/null || grep -q '^upgrade-bench status.upgrade' "$log"
