#!/usr/bin/env bash
# Backup measurements with pgBackRest on real PostgreSQL (a posix repository)
# and a pgbench database, printing `backup-bench:` lines:
#   - full backup: `pgbackrest backup` run by hand vs through capstan::backup's
#     Runner, alternating, median of $CAPSTAN_BENCH_ROUNDS (goal: overhead <= 5 %)
#   - restore to the latest point (files), and verification by restore
#     (restore + recovery + catalog/pg_amcheck/sentinel checks)
#   - WAL archive lag under `pgbench -c 4` (goal <= archive_timeout)
#   - a volume repository behind the repository host (`repo-host-bench:`
#     lines): full backup through it vs to a local directory, and restores
#
#   bench/backup.sh                               # PostgreSQL 17, scale 70 (~1 GB), 3 rounds
#   CAPSTAN_BENCH_SCALE=10 bench/backup.sh        # a quick run
#   CAPSTAN_BENCH_PG_VERSION=18 bench/backup.sh   # /opt/capstan-pg/18 or $CAPSTAN_PG18_BIN
#
# Needs root (servers run as the postgres user), pgBackRest 2.55
# ($CAPSTAN_PGBACKREST, from .ci/install-pgbackrest.sh) and ~4 GB free under
# $CAPSTAN_BENCH_DIR (default /var/tmp). Other knobs: CAPSTAN_BENCH_ROUNDS,
# CAPSTAN_BENCH_PGBENCH_SECONDS (60), CAPSTAN_BENCH_ARCHIVE_TIMEOUT (60 s).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/capstan/target}"
if [[ -z "${CAPSTAN_PGBACKREST:-}" ]]; then
  CAPSTAN_PGBACKREST="$(bash .ci/install-pgbackrest.sh | tail -n1)"
  export CAPSTAN_PGBACKREST
fi
log=/tmp/backup-bench.log
cargo test --release --test backup_pgbackrest -- --ignored --nocapture --test-threads=1 bench_backup 2>&1 \
  | tee "$log" | grep -E '^backup-bench|test result|panicked'
cargo test --release --test backup_repo_host -- --ignored --nocapture --test-threads=1 bench_repo_host 2>&1 \
  | tee -a "$log" | grep -E '^repo-host-bench|test result|panicked'
