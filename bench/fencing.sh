#!/usr/bin/env bash
# Measures self-fencing on real PostgreSQL and prints a table and p50/max:
# a primary holding its Lease (file store) is cut off from the store with
# the partition sentinel, requests failing at once (`fail`) or hanging
# (`hang`). For every run: partition -> fence deadline (last successful
# renewal start + fence_after), deadline -> last postgres process gone in
# PGDATA (t_fence), and partition -> gone. Between runs the store is healed
# and the primary takes its lease back.
#
#   bench/fencing.sh                          # PostgreSQL 15 (Debian), 10 runs per mode
#   CAPSTAN_BENCH_ROUNDS=20 bench/fencing.sh
#   CAPSTAN_BENCH_PG_BIN=/opt/capstan-pg/18/bin CAPSTAN_BENCH_PG_VERSION=18 bench/fencing.sh
#
# Runs as root (like the tests): the instance manager runs as the postgres
# OS user on 127.0.0.1 ports 20800-20899.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo test --test instance_fencing -- --ignored --nocapture --test-threads=1 fence_times
