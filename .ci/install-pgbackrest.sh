#!/usr/bin/env bash
# Installs pgBackRest from Debian trixie into a versioned tools directory,
# for backups of PostgreSQL 16+ (bookworm's 2.45 stops at 15).
#
#   .ci/install-pgbackrest.sh [tools dir]      (default /var/cache/capstan/tools)
#   -> <tools dir>/pgbackrest-<version>/bin/pgbackrest; the last line printed
#      is that path, for CAPSTAN_PGBACKREST.
#
# The .deb is fetched with a private apt state and unpacked with `dpkg -x`:
# `apt-get install -t trixie` would pull trixie's glibc and remove libssl3
# (and PostgreSQL, PgBouncer and nginx with it). trixie's binary runs on
# bookworm's libraries (same sonames). Idempotent: does nothing when a
# suitable binary is already installed.
set -euo pipefail

tools="${1:-/var/cache/capstan/tools}"
minimum="2.55"

version_ok() { # <binary>: its version is >= $minimum
  local v
  v="$("$1" version 2>/dev/null | awk '{print $2}')" || return 1
  [[ -n "$v" ]] && [[ "$(printf '%s\n%s\n' "$minimum" "$v" | sort -V | head -n1)" == "$minimum" ]]
}

for existing in "$tools"/pgbackrest-*/bin/pgbackrest; do
  if [[ -x "$existing" ]] && version_ok "$existing"; then
    echo "pgBackRest already in $existing" >&2
    echo "$existing"
    exit 0
  fi
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# apt downloads as the _apt user when it can reach the directory.
chmod 0755 "$work"

# The Debian mirror the machine already uses (deb822 or one-line sources).
mirror="$(
  { grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}'
    grep -hE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '{print $2}'
  } | grep -E '/debian/?$' | head -n1 || true
)"
mirror="${mirror:-http://deb.debian.org/debian}"

mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/deb"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie main" \
  >"$work/sources.list"
apt_private=(
  -o "Dir::Etc::SourceList=$work/sources.list"
  -o "Dir::Etc::SourceParts=/dev/null"
  -o "Dir::State::Lists=$work/lists"
  -o "Dir::Cache=$work/cache"
  -o "APT::Get::List-Cleanup=0"
)
apt-get "${apt_private[@]}" update -q >/dev/null
(cd "$work/deb" && apt-get "${apt_private[@]}" download -q pgbackrest/trixie >/dev/null)
deb="$(ls "$work"/deb/pgbackrest_*.deb | head -n1)"
version="$(dpkg-deb -f "$deb" Version)"
version="${version%%-*}" # 2.55.1-1 -> 2.55.1
dpkg -x "$deb" "$work/root"

target="$tools/pgbackrest-$version"
mkdir -p "$tools"
rm -rf "$target.partial"
mkdir -p "$target.partial/bin"
install -m 0755 "$work/root/usr/bin/pgbackrest" "$target.partial/bin/pgbackrest"
# The postgres OS user (tests, archive_command) must reach and run it.
chmod -R a+rX "$target.partial"
chmod a+x "$tools"
if ! version_ok "$target.partial/bin/pgbackrest"; then
  echo "pgBackRest $version from trixie is older than $minimum or does not run:" >&2
  "$target.partial/bin/pgbackrest" version >&2 || ldd "$target.partial/bin/pgbackrest" >&2 || true
  exit 1
fi
rm -rf "$target"
mv "$target.partial" "$target"
"$target/bin/pgbackrest" version >&2
echo "$target/bin/pgbackrest"
