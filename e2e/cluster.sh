#!/usr/bin/env bash
# Start and stop a real Kubernetes control plane on 127.0.0.1 with fake nodes, no containers:
# etcd, kube-apiserver (certificates made here, SAN 127.0.0.1, RBAC), kube-controller-manager
# (pods, garbage collection, namespace deletion), kube-scheduler and kwok (nodes and pods that
# report Ready without running anything). Every process binds 127.0.0.1 only, on free ports
# chosen at start, and is stopped by the process id recorded at start.
#
#   e2e/cluster.sh up       start; prints the kubeconfig path (also $RUN/kubeconfig)
#   e2e/cluster.sh down     stop every recorded process, delete state, keep logs
#   e2e/cluster.sh status   list the recorded processes and whether they run
#
# HOTSHARD_E2E_RUN picks the state directory (default $E2E_CACHE/cluster), so several clusters
# (e.g. one per pytest session) can coexist. HOTSHARD_E2E_NODES sets the fake node count (2).
set -euo pipefail
# NB: no job control, even when inherited (SHELLOPTS with monitor): a background job would lead
# its own process group, and setsid would then fork (start() copes, but need not).
set +m
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RUN=${HOTSHARD_E2E_RUN:-$E2E_CACHE/cluster}
NODES=${HOTSHARD_E2E_NODES:-2}
PKI=$RUN/pki
PIDS=$RUN/pids
LOGS=$RUN/logs
KUBECONFIG_PATH=$RUN/kubeconfig
KWOK_STAGES=$E2E_CACHE/kwok-$KWOK_VERSION/stages
# Start order; `down` stops in the reverse order.
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)
# Seconds to wait for each component to report healthy; a cold start on a busy 2-core machine
# takes the apiserver ~10 s, so 120 s leaves room without hiding a hang for long.
READY_TIMEOUT=${HOTSHARD_E2E_READY_TIMEOUT:-120}

log() { printf '[cluster %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# sign NAME SUBJECT EXTENSIONS: a P-256 key and a certificate signed by the run's CA.
sign() {
  local name=$1 subject=$2 extensions=$3
  openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
    -keyout "$PKI/$name.key" -out "$PKI/$name.csr" -subj "$subject" 2>/dev/null
  printf '%s\n' "$extensions" >"$PKI/$name.ext"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" \
    -CAcreateserial -days 7 -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
}

make_pki() {
  mkdir -p "$PKI"
  openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -days 7 \
    -keyout "$PKI/ca.key" -out "$PKI/ca.crt" -subj /CN=hotshard-e2e-ca 2>/dev/null
  sign apiserver /CN=kube-apiserver \
    "$(printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth')"
  # system:masters is bound to cluster-admin; the controllers and kwok share this identity.
  sign admin "/O=system:masters/CN=hotshard-e2e-admin" "extendedKeyUsage=clientAuth"
  openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
  openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
}

write_kubeconfig() {
  local port=$1 b64="base64 -w0"
  cat >"$KUBECONFIG_PATH" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: hotshard-e2e
  cluster:
    server: https://127.0.0.1:$port
    certificate-authority-data: $($b64 <"$PKI/ca.crt")
users:
- name: hotshard-e2e-admin
  user:
    client-certificate-data: $($b64 <"$PKI/admin.crt")
    client-key-data: $($b64 <"$PKI/admin.key")
contexts:
- name: hotshard-e2e
  context: {cluster: hotshard-e2e, user: hotshard-e2e-admin}
current-context: hotshard-e2e
EOF
  chmod 600 "$KUBECONFIG_PATH"
}

# start NAME BINARY ARGS...: run detached in its own session, record the pid.
# NB: the process writes its own pid just before it execs the binary. setsid forks when its
# caller leads a process group, and then $! is a pid that exits at once; the recorded pid is
# the component's either way. $! is kept (JOBS) to read an exit status if it dies early.
declare -A JOBS=()
start() {
  local name=$1 binary=$2; shift 2
  [[ -x $binary ]] || die "$binary is missing: run e2e/build.sh (or make cluster-up)"
  rm -f "$PIDS/$name.pid"
  # shellcheck disable=SC2016  # $$ and $@ are the inner shell's
  setsid bash -c 'echo "$$" >"$0.tmp" && mv "$0.tmp" "$0" && exec "$@"' "$PIDS/$name.pid" \
    "$binary" "$@" >"$LOGS/$name.log" 2>&1 </dev/null &
  JOBS[$name]=$!
  local i
  for ((i = 0; i < 500; i++)); do
    is_running "$name" && break
    sleep 0.02
  done
  is_running "$name" || died "$name"
  log "started $name (pid $(<"$PIDS/$name.pid"))"
}

# died NAME: fail, saying how NAME's process ended and where its log is.
died() {
  local name=$1 rc=0 job=${JOBS[$1]:-}
  tail -n 20 "$LOGS/$name.log" >&2
  if [[ -n $job ]]; then
    wait "$job" 2>/dev/null || rc=$?
    log "$name: launcher pid $job ended with status $rc; recorded pid $(cat "$PIDS/$name.pid" \
      2>/dev/null || echo none); processes naming it: $(pgrep -f -- "$name" | tr '\n' ' ')"
  fi
  die "$name exited; log: $LOGS/$name.log"
}

# wait_for NAME WHAT COMMAND...: poll COMMAND until it succeeds, failing if NAME's process exits.
wait_for() {
  local name=$1 what=$2; shift 2
  local deadline=$((SECONDS + READY_TIMEOUT))
  until "$@" >/dev/null 2>&1; do
    is_running "$name" || died "$name"
    ((SECONDS < deadline)) || die "no $what after ${READY_TIMEOUT}s; log: $LOGS/$name.log"
    sleep 0.5
  done
  log "$what"
}

https_ok() {
  curl -sf --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" "$1"
}

# pid_of NAME: the recorded pid, if its process still runs the binary we started.
pid_of() {
  local file=$PIDS/$1.pid pid
  [[ -f $file ]] || return 1
  pid=$(<"$file")
  [[ -r /proc/$pid/cmdline ]] || return 1
  # Guard against a recycled pid: the command line must name the component.
  # NB: not a pipe into grep -q: under pipefail, grep exiting first fails the check.
  local cmdline
  cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
  [[ $cmdline == *"$1"* ]] || return 1
  echo "$pid"
}

is_running() { pid_of "$1" >/dev/null; }

kubectl_() { "$KUBE_BIN/kubectl" --kubeconfig "$KUBECONFIG_PATH" "$@"; }

fake_nodes() {
  local i
  for ((i = 0; i < NODES; i++)); do
    cat <<EOF
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-$i
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    type: kwok
    kubernetes.io/hostname: kwok-node-$i
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    topology.kubernetes.io/zone: zone-$i
---
EOF
  done
}

up() {
  local name
  for name in "${COMPONENTS[@]}"; do
    ! is_running "$name" || die "$name already runs from $RUN; run '$0 down' first"
  done
  rm -f "$PIDS"/*.pid
  bash "$E2E_DIR/build.sh" --check || die "binaries missing under $E2E_CACHE: run e2e/build.sh"
  rm -rf "$RUN/etcd" "$PKI"
  mkdir -p "$PIDS" "$LOGS" "$RUN/etcd"
  make_pki
  local etcd_port etcd_peer api_port kcm_port sched_port kwok_port
  etcd_port=$(free_port) etcd_peer=$(free_port) api_port=$(free_port)
  kcm_port=$(free_port) sched_port=$(free_port) kwok_port=$(free_port)
  write_kubeconfig "$api_port"

  start etcd "$ETCD_BIN/etcd" --name hotshard-e2e --data-dir "$RUN/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" \
    --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-cluster "hotshard-e2e=http://127.0.0.1:$etcd_peer" \
    --unsafe-no-fsync --quota-backend-bytes 1073741824
  wait_for etcd "etcd healthy" curl -sf "http://127.0.0.1:$etcd_port/health"

  start kube-apiserver "$KUBE_BIN/kube-apiserver" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" \
    --etcd-servers "http://127.0.0.1:$etcd_port" --cert-dir "$RUN/apiserver" \
    --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
    --client-ca-file "$PKI/ca.crt" --authorization-mode Node,RBAC \
    --service-account-issuer "https://127.0.0.1:$api_port" \
    --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
    --service-cluster-ip-range 10.96.0.0/16 --endpoint-reconciler-type none \
    --allow-privileged=true
  wait_for kube-apiserver "kube-apiserver ready" https_ok "https://127.0.0.1:$api_port/readyz"

  local common=(--kubeconfig "$KUBECONFIG_PATH" --authentication-kubeconfig "$KUBECONFIG_PATH"
    --authorization-kubeconfig "$KUBECONFIG_PATH" --bind-address 127.0.0.1 --leader-elect=false)
  start kube-controller-manager "$KUBE_BIN/kube-controller-manager" "${common[@]}" \
    --secure-port "$kcm_port" --cert-dir "$RUN/kcm" \
    --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
    --use-service-account-credentials=false
  start kube-scheduler "$KUBE_BIN/kube-scheduler" "${common[@]}" \
    --secure-port "$sched_port" --cert-dir "$RUN/scheduler"
  # Their serving certificates are self-signed at start, hence -k; only liveness is read.
  wait_for kube-controller-manager "kube-controller-manager healthy" \
    curl -skf "https://127.0.0.1:$kcm_port/healthz"
  wait_for kube-scheduler "kube-scheduler healthy" curl -skf "https://127.0.0.1:$sched_port/healthz"

  local stages=()
  local file
  for file in "$KWOK_STAGES"/*.yaml; do stages+=(--config "$file"); done
  start kwok "$KWOK_BIN/kwok" --kubeconfig "$KUBECONFIG_PATH" "${stages[@]}" \
    --manage-all-nodes=false --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
    --node-ip 127.0.0.1 --node-lease-duration-seconds 40 \
    --server-address "127.0.0.1:$kwok_port"
  wait_for kwok "kwok healthy" curl -sf "http://127.0.0.1:$kwok_port/healthz"

  fake_nodes | kubectl_ apply -f - >/dev/null
  wait_for kwok "$NODES nodes Ready" kubectl_ wait --for condition=Ready node --all --timeout 5s
  # Pods are refused until the namespace's default ServiceAccount exists.
  wait_for kube-controller-manager "default ServiceAccount" kubectl_ get serviceaccount default -n default
  log "up: $NODES Ready nodes; export KUBECONFIG=$KUBECONFIG_PATH"
  echo "$KUBECONFIG_PATH"
}

down() {
  local i name pid
  for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
    name=${COMPONENTS[i]}
    if pid=$(pid_of "$name"); then
      kill -TERM "$pid" 2>/dev/null || true
      local deadline=$((SECONDS + 15))
      while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
      if kill -0 "$pid" 2>/dev/null; then
        log "$name (pid $pid) ignored SIGTERM; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
      fi
      log "stopped $name (pid $pid)"
    fi
    rm -f "$PIDS/$name.pid"
  done
  rm -rf "$RUN/etcd" "$PKI" "$RUN/apiserver" "$RUN/kcm" "$RUN/scheduler" "$KUBECONFIG_PATH"
  log "down; logs kept in $LOGS"
}

status() {
  local name pid rc=0
  for name in "${COMPONENTS[@]}"; do
    if pid=$(pid_of "$name"); then echo "$name running (pid $pid)"; else echo "$name stopped"; rc=1; fi
  done
  return $rc
}

case ${1:-} in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
