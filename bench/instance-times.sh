#!/usr/bin/env bash
# Measures the instance manager on real PostgreSQL and prints a table:
# bootstrap of a primary and a replica, restart after `kill -9` of the
# postmaster (until a write succeeds), promotion (API call until the first
# write), and rejoin of a diverged old primary with pg_rewind.
#
#   bench/instance-times.sh                    # PostgreSQL 15 (Debian), 3 rounds
#   CAPSTAN_BENCH_ROUNDS=5 bench/instance-times.sh
#   CAPSTAN_BENCH_PG_BIN=/opt/capstan-pg/18/bin CAPSTAN_BENCH_PG_VERSION=18 bench/instance-times.sh
#
# Runs as root (like the tests): each instance manager runs as the postgres
# OS user on 127.0.0.1 ports 20500-20699.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo test --test instance_bench -- --ignored --nocapture --test-threads=1 instance_times
