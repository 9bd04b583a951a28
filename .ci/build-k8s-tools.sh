#!/usr/bin/env bash
# Builds the real Kubernetes control plane and test tools from Go modules
# (e2e/k8s-tools: go.mod, go.sum) into a cache outside the checkout:
#
#   kube-apiserver kube-controller-manager kube-scheduler  k8s.io/kubernetes
#   etcd                                                   go.etcd.io/etcd/server/v3
#   helm                                                   helm.sh/helm/v4/cmd/helm
#   promtool prometheus                                    github.com/prometheus/prometheus/cmd/{promtool,prometheus}
#   kstatus                                                e2e/k8s-tools/cmd/kstatus (sigs.k8s.io/cli-utils)
#   crds/*.yaml  the Prometheus Operator's PodMonitor, ServiceMonitor and
#                PrometheusRule CRDs, copied from the module version (and sum)
#                named on go.mod's `// crds:` line
#
#   BIN=$(bash .ci/build-k8s-tools.sh | tail -n1)
#   "$BIN/kube-apiserver" --version
#
# The last line of stdout is the bin directory,
# ${CAPSTAN_K8S_TOOLS_DIR:-/var/cache/capstan/k8s-tools}/<key>/bin; the key
# names the versions and hashes go.mod, go.sum, cmd/kstatus, the Go version
# and the ldflags. When every binary and CRD file exists for the key the
# script only prints the directory. Build logs go to stderr. Test tools only: never in the product.
#
# Caches: GOCACHE=/var/cache/capstan/go-build, GOMODCACHE=/var/cache/capstan/go-mod
# (CAPSTAN_GOCACHE / CAPSTAN_GOMODCACHE override them). Network: the Go module
# proxy on a cold machine; Debian's mirror only if etcd fails to build.
# Versions are changed in e2e/k8s-tools/gen-gomod.sh, not here.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mod="$repo/e2e/k8s-tools"
tools=(kube-apiserver kube-controller-manager kube-scheduler etcd helm promtool prometheus kstatus)
crds=(podmonitors servicemonitors prometheusrules)

export GOTOOLCHAIN=local CGO_ENABLED=0 GOWORK=off GOFLAGS="-mod=readonly -buildvcs=false"
export GOCACHE="${CAPSTAN_GOCACHE:-/var/cache/capstan/go-build}"
export GOMODCACHE="${CAPSTAN_GOMODCACHE:-/var/cache/capstan/go-mod}"

# The versions are the ones go.mod pins (written by gen-gomod.sh).
modver() { awk -v m="$1" '$1 == m && $2 ~ /^v/ { print $2; exit }' "$mod/go.mod"; }
k8s="$(modver k8s.io/kubernetes)"
etcd="$(modver go.etcd.io/etcd/server/v3)"
helm="$(modver helm.sh/helm/v4)"
prom="$(modver github.com/prometheus/prometheus)"
# `// crds: <module> <version> <h1 sum>` (gen-gomod.sh): not a Go dependency.
read -r po_mod po po_sum < <(awk '$1 == "//" && $2 == "crds:" { print $3, $4, $5; exit }' "$mod/go.mod") || true
for v in k8s etcd helm prom po po_sum; do
  [[ -n "${!v}" ]] || { echo "build-k8s-tools: no $v version in $mod/go.mod" >&2; exit 1; }
done
k8s_minor="${k8s#v1.}" k8s_minor="${k8s_minor%%.*}"
# Prometheus tags its Go module v0.3MM.P for release 3.MM.P.
prom_minor="${prom#v0.}" prom_minor="${prom_minor%%.*}"
prom_release="$((prom_minor / 100)).$((prom_minor % 100)).${prom##*.}"

kube_ldflags=""
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  kube_ldflags+=" -X $p.gitVersion=$k8s -X $p.gitMajor=1 -X $p.gitMinor=$k8s_minor"
  kube_ldflags+=" -X $p.gitCommit= -X $p.gitTreeState=archive"
done
# etcd's version.Version is a variable of go.etcd.io/etcd/api/v3 that already
# holds its module version; GitSHA is unknown for a module build.
etcd_ldflags=""
helm_ldflags="-X helm.sh/helm/v4/internal/version.version=$helm -X helm.sh/helm/v4/internal/version.metadata="
prom_ldflags="-X github.com/prometheus/common/version.Version=$prom_release -X github.com/prometheus/common/version.Branch=$prom"

pkg_of() {
  case "$1" in
    kube-*) echo "k8s.io/kubernetes/cmd/$1" ;;
    etcd) echo go.etcd.io/etcd/server/v3 ;;
    helm) echo helm.sh/helm/v4/cmd/helm ;;
    promtool) echo github.com/prometheus/prometheus/cmd/promtool ;;
    prometheus) echo github.com/prometheus/prometheus/cmd/prometheus ;;
    kstatus) echo ./cmd/kstatus ;;
  esac
}
ldflags_of() {
  case "$1" in
    kube-*) echo "$kube_ldflags" ;;
    etcd) echo "$etcd_ldflags" ;;
    helm) echo "$helm_ldflags" ;;
    promtool | prometheus) echo "$prom_ldflags" ;;
    kstatus) echo "" ;;
  esac
}

hash="$( { cat "$mod/go.mod" "$mod/go.sum" "$mod/cmd/kstatus/main.go"; go env GOVERSION; echo "$kube_ldflags|$etcd_ldflags|$helm_ldflags|$prom_ldflags"; } \
  | sha256sum | cut -c1-12)"
key="k8s-$k8s-etcd-$etcd-helm-$helm-prom-$prom-po-$po-$hash"
root="${CAPSTAN_K8S_TOOLS_DIR:-/var/cache/capstan/k8s-tools}"
bin="$root/$key/bin"

crds_copied() {
  local c
  for c in "${crds[@]}"; do [[ -f "$bin/crds/monitoring.coreos.com_$c.yaml" ]] || return 1; done
}
all_built() {
  local t
  for t in "${tools[@]}"; do [[ -x "$bin/$t" ]] || return 1; done
  crds_copied
}
if all_built; then
  echo "$bin"
  exit 0
fi

mkdir -p "$root/$key" "$GOCACHE" "$GOMODCACHE"
# One builder per key at a time; a second caller waits and then finds the binaries.
exec 9>"$root/$key/.lock"
flock 9
if all_built; then
  echo "$bin"
  exit 0
fi

mkdir -p "$bin"
work="$(mktemp -d "$root/$key/.build.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# Fallback for etcd: Debian trixie's etcd-server (3.5.x), fetched with a
# private apt state (the system's apt configuration is never touched) and
# unpacked with dpkg -x. Never `apt-get install -t trixie`.
etcd_from_debian() {
  local uri apt
  uri="$(awk '/^URIs:/ && $2 !~ /security/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
  uri="${uri:-http://deb.debian.org/debian}"
  mkdir -p "$work/apt/lists/partial" "$work/apt/cache/archives/partial" "$work/deb"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri trixie main" >"$work/apt/sources.list"
  apt=(-o "Dir::Etc::SourceList=$work/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$work/apt/lists" -o "Dir::Cache=$work/apt/cache")
  apt-get "${apt[@]}" -qq update >&2
  (cd "$work/deb" && apt-get "${apt[@]}" -qq download etcd-server/trixie >&2)
  dpkg -x "$work"/deb/etcd-server_*.deb "$work/deb/x"
  install -m 0755 "$work/deb/x/usr/bin/etcd" "$1"
}
# The CRDs as the Prometheus Operator publishes them
# (example/prometheus-operator-crd/ of its module), fetched outside this
# module (nothing imports it) and checked against the pinned sum.
copy_crds() {
  local json dir sum c
  json="$(cd "$work" && GOFLAGS= go mod download -json "$po_mod@$po")" || return 1
  dir="$(sed -n 's/^\t"Dir": "\(.*\)",$/\1/p' <<<"$json")"
  sum="$(sed -n 's/^\t"Sum": "\(.*\)",$/\1/p' <<<"$json")"
  if [[ "$sum" != "$po_sum" ]]; then
    echo "build-k8s-tools: $po_mod@$po has sum $sum, go.mod pins $po_sum" >&2
    return 1
  fi
  mkdir -p "$work/crds"
  for c in "${crds[@]}"; do
    install -m 0644 "$dir/example/prometheus-operator-crd/monitoring.coreos.com_$c.yaml" "$work/crds/" || return 1
  done
}

# Fallback for helm, promtool and prometheus: `go install pkg@version` with
# the tool's own go.mod (none has replace directives).
go_install() {
  local pkg="$1" version="$2" ldflags="$3" out="$4"
  GOBIN="$work/gobin" GOFLAGS=-buildvcs=false go install -p 2 -trimpath -ldflags "-s -w $ldflags" "$pkg@$version" >&2
  install -m 0755 "$work/gobin/$(basename "$pkg")" "$out"
}

failed=()
for t in "${tools[@]}"; do
  [[ -x "$bin/$t" ]] && continue
  start=$SECONDS
  echo "build-k8s-tools: building $t ($(pkg_of "$t"))" >&2
  if (cd "$mod" && go build -p 2 -trimpath -ldflags "-s -w $(ldflags_of "$t")" -o "$work/$t" "$(pkg_of "$t")" >&2); then
    :
  else
    echo "build-k8s-tools: $t failed to build from e2e/k8s-tools" >&2
    case "$t" in
      etcd) etcd_from_debian "$work/$t" || true ;;
      helm) go_install helm.sh/helm/v4/cmd/helm "$helm" "$helm_ldflags" "$work/$t" || true ;;
      promtool | prometheus) go_install "$(pkg_of "$t")" "$prom" "$prom_ldflags" "$work/$t" || true ;;
    esac
  fi
  if [[ -x "$work/$t" ]]; then
    mv "$work/$t" "$bin/$t"
    echo "build-k8s-tools: $t done in $((SECONDS - start)) s" >&2
  else
    failed+=("$t")
  fi
done

if ! crds_copied; then
  if copy_crds; then
    mkdir -p "$bin/crds"
    for c in "${crds[@]}"; do mv "$work/crds/monitoring.coreos.com_$c.yaml" "$bin/crds/"; done
    echo "build-k8s-tools: Prometheus Operator $po CRDs in $bin/crds" >&2
  else
    failed+=("crds")
  fi
fi

if ((${#failed[@]})); then
  echo "build-k8s-tools: failed: ${failed[*]}" >&2
  exit 1
fi
echo "$bin"
