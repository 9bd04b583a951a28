#!/usr/bin/env bash
# Measures the proxy tier on this machine with real PostgreSQL 15 and
# PgBouncer: client hold time over repeated switchovers under pgbench load
# (p50/max), errors seen by pgbench (must be 0), and transactions per second
# through the pooler versus straight to PostgreSQL (TLS in both cases).
#
#   SWITCHES=10 TPS_SECONDS=15 CLIENTS=8 bench/pooler-switch.sh
#
# Needs: postgresql-15 (initdb, pgbench, psql), pgbouncer; runs as root
# (PostgreSQL and PgBouncer run as the postgres user). Debug build: the
# supervisor is not on the data path, PgBouncer is.
set -euo pipefail
cd "$(dirname "$0")/.."
export SWITCHES="${SWITCHES:-10}" TPS_SECONDS="${TPS_SECONDS:-15}" CLIENTS="${CLIENTS:-8}"
cargo test --test pooler_bench -- --ignored --nocapture --test-threads 1 2>&1 \
  | tee /tmp/pooler-switch.log | grep -oE 'pooler-switch:.*|test result.*|panicked.*'
