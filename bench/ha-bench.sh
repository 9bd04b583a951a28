#!/usr/bin/env bash
# High-availability measurements on the e2e harness (real PostgreSQL and
# PgBouncer processes, the operator and instance managers as release
# builds), each over $CAPSTAN_HA_BENCH_ITERATIONS (default 20) iterations on
# one cluster, printing p50/p99/max:
#
#   bench/ha-bench.sh rto         # freeze the primary -> first write through the pooler
#   bench/ha-bench.sh kill9       # SIGKILL the postmaster -> first write by the restarted server
#   bench/ha-bench.sh switchover  # pgbench -c 8 across switchovers: errors, longest wait, clientHoldMs
#   bench/ha-bench.sh ackwrites   # synchronous quorum 1: acknowledged commits lost by failovers (goal 0)
#   bench/ha-bench.sh all
#
# Needs root, nftables, PostgreSQL 17 ($CAPSTAN_PG17_BIN, default
# /opt/capstan-pg/17/bin), PgBouncer and pgbench (PostgreSQL 15's, or
# $CAPSTAN_PGBENCH). The full log goes to /tmp/ha-bench-<mode>.log.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-all}"
case "$mode" in
  rto | kill9 | switchover | ackwrites) filter="bench_$mode" ;;
  all) filter="bench_" ;;
  *) echo "usage: $0 rto|kill9|switchover|ackwrites|all" >&2; exit 2 ;;
esac
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/capstan/target}"
export CAPSTAN_PG17_BIN="${CAPSTAN_PG17_BIN:-/opt/capstan-pg/17/bin}"
cargo build --release --bin capstan
log="/tmp/ha-bench-$mode.log"
CAPSTAN_BIN="$CARGO_TARGET_DIR/release/capstan" \
  cargo test --release -p capstan-e2e --test e2e -- --ignored --nocapture --test-threads 1 "ha_bench::$filter" 2>&1 \
  | tee "$log" | grep -E '^ha-bench|test result|panicked'
