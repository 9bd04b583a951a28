#!/usr/bin/env bash
# Smoke test of the real control plane built by .ci/build-k8s-tools.sh:
# etcd, kube-apiserver, kube-controller-manager and kube-scheduler in a fresh
# network namespace (unshare -n: only loopback, plus 10.244.0.0/16 routed to
# lo inside it; nothing is added to the host's interfaces). Creates a
# Deployment, waits for the real ReplicaSet and Pod, and for the scheduler to
# report that no node fits. Prints start-up times and each process's RSS.
#
#   bash e2e/k8s-tools/smoke.sh [BIN_DIR]     # needs root (unshare -n)
#
# CAPSTAN_SMOKE_KEEP=1 keeps the work directory (certs, logs, etcd data).
# APISERVER_EXTRA_FLAGS="..." adds flags to kube-apiserver (to probe them).
# KCM_CREDENTIALS=admin (default): kube-controller-manager runs as a
# system:masters client, its default ServiceAccount appears ~0.6 s after it
# starts. KCM_CREDENTIALS=serviceaccounts: as system:kube-controller-manager
# with --use-service-account-credentials (kubeadm's way; ~6 s, each controller
# gets its own ServiceAccount token first).
# Every process it starts is stopped when it exits, also on failure.
set -euo pipefail

if [[ "${CAPSTAN_SMOKE_IN_NETNS:-}" != 1 ]]; then
  repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
  bin="${1:-$(bash "$repo/.ci/build-k8s-tools.sh" | tail -n1)}"
  exec env CAPSTAN_SMOKE_IN_NETNS=1 unshare -n bash "${BASH_SOURCE[0]}" "$bin"
fi

bin="$1"
ip link set lo up
# The whole 10.244/16 is local inside this namespace (AnyIP): bind to any of it.
ip route add local 10.244.0.0/16 dev lo

work="$(mktemp -d /tmp/capstan-k8s-smoke.XXXXXX)"
pids=()
names=()
ok=0

cleanup() {
  local i pid
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    pid="${pids[i]}"
    kill -TERM "$pid" 2>/dev/null || continue
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if ((!ok)); then
    for n in "${names[@]}"; do
      echo "---- last lines of $n.log" >&2
      tail -n 25 "$work/$n.log" >&2 || true
    done
  fi
  if [[ "${CAPSTAN_SMOKE_KEEP:-}" == 1 ]]; then
    echo "kept $work" >&2
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
# wait_for SECONDS DESCRIPTION COMMAND...
wait_for() {
  local limit="$1" what="$2" deadline
  shift 2
  deadline=$(($(date +%s) + limit))
  until "$@" >/dev/null 2>&1; do
    for i in "${!pids[@]}"; do
      if ! kill -0 "${pids[i]}" 2>/dev/null; then
        echo "${names[i]} exited while waiting for $what" >&2
        return 1
      fi
    done
    if (($(date +%s) >= deadline)); then
      echo "timed out after ${limit}s waiting for $what" >&2
      return 1
    fi
    sleep 0.1
  done
}
start() {
  local name="$1"
  shift
  names+=("$name")
  "$@" >"$work/$name.log" 2>&1 &
  pids+=("$!")
  echo "started $name (pid $!): $*" >&2
}
rss() { awk '/^VmRSS|^VmHWM/ { printf "%s %d MB  ", $1, $2 / 1024 }' "/proc/$1/status"; }

echo "== versions"
"$bin/kube-apiserver" --version
"$bin/kube-controller-manager" --version
"$bin/kube-scheduler" --version
"$bin/etcd" --version | sed -n 1p
"$bin/helm" version --short
"$bin/promtool" --version | sed -n 1p

echo "== certificates"
addr=10.244.0.1
c="$work/pki"
mkdir -p "$c"
(
  cd "$c"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=capstan-e2e-ca -keyout ca.key -out ca.crt 2>/dev/null
  # leaf NAME SUBJECT [SAN]
  leaf() {
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "$2" \
      -keyout "$1.key" -out "$1.csr" 2>/dev/null
    {
      echo "basicConstraints=CA:FALSE"
      echo "keyUsage=critical,digitalSignature,keyEncipherment"
      if [[ -n "${3:-}" ]]; then
        echo "extendedKeyUsage=serverAuth"
        echo "subjectAltName=$3"
      else
        echo "extendedKeyUsage=clientAuth"
      fi
    } >"$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
      -extfile "$1.ext" -out "$1.crt" 2>/dev/null
  }
  leaf apiserver /CN=kube-apiserver \
    "IP:$addr,IP:10.96.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  leaf admin "/O=system:masters/CN=capstan-e2e-admin"
  leaf controller-manager /CN=system:kube-controller-manager
  leaf scheduler /CN=system:kube-scheduler
  openssl genrsa -out sa.key 2048 2>/dev/null
  openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
)

kubeconfig() { # NAME -> $work/NAME.kubeconfig with client cert pki/NAME.crt
  local k="$work/$1.kubeconfig"
  kubectl config set-cluster e2e --kubeconfig="$k" --server="https://$addr:6443" \
    --certificate-authority="$c/ca.crt" --embed-certs >/dev/null
  kubectl config set-credentials "$1" --kubeconfig="$k" --client-certificate="$c/$1.crt" \
    --client-key="$c/$1.key" --embed-certs >/dev/null
  kubectl config set-context e2e --kubeconfig="$k" --cluster=e2e --user="$1" >/dev/null
  kubectl config use-context e2e --kubeconfig="$k" >/dev/null
}
kubeconfig admin
kubeconfig controller-manager
kubeconfig scheduler
export KUBECONFIG="$work/admin.kubeconfig"

echo "== etcd"
t0="$(now)"
start etcd "$bin/etcd" --name=e2e --data-dir="$work/etcd" --unsafe-no-fsync \
  --listen-client-urls=http://127.0.0.1:2379 --advertise-client-urls=http://127.0.0.1:2379 \
  --listen-peer-urls=http://127.0.0.1:2380 --initial-advertise-peer-urls=http://127.0.0.1:2380 \
  --initial-cluster=e2e=http://127.0.0.1:2380 --log-level=warn
wait_for 30 "etcd /health" sh -c 'curl -sf http://127.0.0.1:2379/health | grep -q "\"health\":\"true\""'
echo "etcd healthy after $(since "$t0") s"

echo "== kube-apiserver"
t0="$(now)"
# shellcheck disable=SC2086 # APISERVER_EXTRA_FLAGS is a list of flags
start kube-apiserver "$bin/kube-apiserver" \
  --etcd-servers=http://127.0.0.1:2379 \
  --advertise-address="$addr" --bind-address="$addr" --secure-port=6443 \
  --tls-cert-file="$c/apiserver.crt" --tls-private-key-file="$c/apiserver.key" \
  --client-ca-file="$c/ca.crt" \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-account-key-file="$c/sa.pub" --service-account-signing-key-file="$c/sa.key" \
  --service-cluster-ip-range=10.96.0.0/16 \
  --authorization-mode=Node,RBAC --allow-privileged=true \
  ${APISERVER_EXTRA_FLAGS:-}
wait_for 60 "kube-apiserver /readyz" curl -sf --cacert "$c/ca.crt" "https://$addr:6443/readyz"
echo "kube-apiserver ready after $(since "$t0") s"
kubectl get --raw /version
echo

echo "== kube-controller-manager, kube-scheduler"
t0="$(now)"
case "${KCM_CREDENTIALS:-admin}" in
  admin) kcm_kubeconfig="$work/admin.kubeconfig" kcm_sa=false ;;
  serviceaccounts) kcm_kubeconfig="$work/controller-manager.kubeconfig" kcm_sa=true ;;
  *) echo "KCM_CREDENTIALS: admin or serviceaccounts" >&2; exit 2 ;;
esac
start kube-controller-manager "$bin/kube-controller-manager" \
  --kubeconfig="$kcm_kubeconfig" \
  --authentication-kubeconfig="$kcm_kubeconfig" \
  --authorization-kubeconfig="$kcm_kubeconfig" \
  --leader-elect=false --use-service-account-credentials="$kcm_sa" \
  --root-ca-file="$c/ca.crt" --service-account-private-key-file="$c/sa.key" \
  --cluster-signing-cert-file="$c/ca.crt" --cluster-signing-key-file="$c/ca.key" \
  --bind-address=127.0.0.1 --secure-port=10257
start kube-scheduler "$bin/kube-scheduler" \
  --kubeconfig="$work/scheduler.kubeconfig" \
  --authentication-kubeconfig="$work/scheduler.kubeconfig" \
  --authorization-kubeconfig="$work/scheduler.kubeconfig" \
  --leader-elect=false --bind-address=127.0.0.1 --secure-port=10259
wait_for 60 "kube-controller-manager /healthz" curl -skf https://127.0.0.1:10257/healthz
echo "kube-controller-manager healthy after $(since "$t0") s"
wait_for 60 "kube-scheduler /healthz" curl -skf https://127.0.0.1:10259/healthz
echo "kube-scheduler healthy after $(since "$t0") s"

echo "== a Deployment"
# The default ServiceAccount comes from the controller-manager; pods need it.
wait_for 60 "ServiceAccount default/default" kubectl get serviceaccount default
echo "ServiceAccount default/default after $(since "$t0") s"
t0="$(now)"
kubectl create deployment smoke --image=registry.invalid/smoke:1 --replicas=1
wait_for 60 "a ReplicaSet of Deployment smoke" \
  sh -c '[ -n "$(kubectl get rs -l app=smoke -o name)" ]'
wait_for 60 "a Pod of Deployment smoke" \
  sh -c '[ -n "$(kubectl get pods -l app=smoke -o name)" ]'
echo "ReplicaSet and Pod after $(since "$t0") s"
wait_for 60 "FailedScheduling for the Pod" \
  sh -c 'kubectl get events --field-selector reason=FailedScheduling -o name | grep -q .'
kubectl get deploy,rs,pods -o wide
kubectl get events --field-selector reason=FailedScheduling \
  -o custom-columns=REASON:.reason,MESSAGE:.message --no-headers
# Written by the apiserver's endpoint reconciler (none with --endpoint-reconciler-type=none).
echo "Service kubernetes endpoints: $(kubectl get endpointslices -n default kubernetes \
  -o jsonpath='{.endpoints[*].addresses}' 2>/dev/null || echo none)"

echo "== RSS"
for i in "${!pids[@]}"; do
  printf '%-24s %s\n' "${names[i]}" "$(rss "${pids[i]}")"
done
ok=1
echo "smoke test passed"
