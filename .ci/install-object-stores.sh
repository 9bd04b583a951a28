#!/usr/bin/env bash
# Installs the object-store emulators the Azure and GCS backup tests run
# pgBackRest against, into versioned directories outside the checkout:
#
#   azurite          npm package `azurite`              <tools>/azurite-<v>/node_modules/.bin/azurite-blob
#   fake-gcs-server  Go module github.com/fsouza/fake-gcs-server  <tools>/fake-gcs-server-<v>/bin/fake-gcs-server
#
#   eval "$(bash .ci/install-object-stores.sh [tools dir])"
#   -> prints `export CAPSTAN_AZURITE=...` and `export CAPSTAN_FAKE_GCS=...`
#      (last two lines of stdout); logs go to stderr.
#
# Default tools dir /var/cache/capstan/tools. Idempotent: an existing
# binary of the pinned version is reused. Test tools only, never in the
# product. Network: the npm registry and the Go module proxy on a cold
# machine.
set -euo pipefail

AZURITE_VERSION="${AZURITE_VERSION:-3.37.0}"
FAKE_GCS_VERSION="${FAKE_GCS_VERSION:-v1.56.1}"
tools="${1:-/var/cache/capstan/tools}"
mkdir -p "$tools"
chmod a+x "$tools"

# --- azurite (npm) -----------------------------------------------------------
azurite_dir="$tools/azurite-$AZURITE_VERSION"
azurite_bin="$azurite_dir/node_modules/.bin/azurite-blob"
if [[ ! -x "$azurite_bin" ]]; then
  echo "install-object-stores: npm install azurite@$AZURITE_VERSION into $azurite_dir" >&2
  rm -rf "$azurite_dir.partial"
  mkdir -p "$azurite_dir.partial"
  # Its own package.json, so npm installs here and never walks up.
  echo '{"name":"capstan-azurite","private":true}' >"$azurite_dir.partial/package.json"
  (cd "$azurite_dir.partial" &&
    npm install --no-audit --no-fund --no-update-notifier --loglevel=error \
      --cache "$tools/.npm-cache" "azurite@$AZURITE_VERSION" >&2)
  rm -rf "$azurite_dir"
  mv "$azurite_dir.partial" "$azurite_dir"
fi
"$azurite_bin" --version >&2

# --- fake-gcs-server (Go module proxy) ---------------------------------------
export PATH="$PATH:/usr/local/go/bin"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOWORK=off GOFLAGS=-buildvcs=false
export GOCACHE="${CAPSTAN_GOCACHE:-/var/cache/capstan/go-build}"
export GOMODCACHE="${CAPSTAN_GOMODCACHE:-/var/cache/capstan/go-mod}"
gcs_dir="$tools/fake-gcs-server-$FAKE_GCS_VERSION"
gcs_bin="$gcs_dir/bin/fake-gcs-server"
if [[ ! -x "$gcs_bin" ]]; then
  echo "install-object-stores: go install github.com/fsouza/fake-gcs-server@$FAKE_GCS_VERSION" >&2
  rm -rf "$gcs_dir.partial"
  mkdir -p "$gcs_dir.partial/bin"
  start=$SECONDS
  GOBIN="$gcs_dir.partial/bin" go install -p 2 -trimpath -ldflags "-s -w" \
    "github.com/fsouza/fake-gcs-server@$FAKE_GCS_VERSION" >&2
  chmod -R a+rX "$gcs_dir.partial"
  rm -rf "$gcs_dir"
  mv "$gcs_dir.partial" "$gcs_dir"
  echo "install-object-stores: fake-gcs-server built in $((SECONDS - start)) s" >&2
fi
[[ -x "$gcs_bin" ]] || { echo "install-object-stores: no $gcs_bin" >&2; exit 1; }

echo "export CAPSTAN_AZURITE=$azurite_bin"
echo "export CAPSTAN_FAKE_GCS=$gcs_bin"
