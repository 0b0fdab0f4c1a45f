#!/usr/bin/env bash
# Starts a real etcd and kube-apiserver (built by scripts/kube-build.sh) on free loopback
# ports, in the background, the way controller-runtime's envtest does: serving certificates
# from a fresh CA, client-certificate authentication (admin in system:masters), RBAC
# authorization, ServiceAccount signing keys (tokens and TokenRequest work). No
# kube-controller-manager runs: no namespace finalization, garbage collection or
# ServiceAccount token controller.
#
# Environment (all optional):
#   KUBE_DIR        state directory (certs, etcd data, logs, pid files)   [.tools/kube]
#   KUBE_PORT       kube-apiserver's secure port                          [a free port]
#   ETCD_PORT       etcd's client port                                    [a free port]
#   KUBE_OWNER_PID  if set, both servers are stopped, and KUBE_DIR removed, when that
#                   process exits (a watchdog polls it every second)
# Writes KUBE_DIR/kubeconfig (admin), KUBE_DIR/server-url; waits for /readyz; prints the
# kubeconfig's path. Stop with scripts/kube-down.sh (same KUBE_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
log() { printf '[kube-up] %s\n' "$*" >&2; }

dir=${KUBE_DIR:-$root/.tools/kube}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
bin=$root/.tools/kube/bin
if [ ! -x "$bin/kube-apiserver" ] || [ ! -x "$bin/etcd" ]; then
  "$root/scripts/kube-build.sh"
fi

alive() { [ -f "$dir/$1.pid" ] && kill -0 "$(cat "$dir/$1.pid")" 2>/dev/null; }
if alive kube-apiserver && alive etcd; then
  log "already running: $(cat "$dir/server-url")"
  echo "$dir/kubeconfig"
  exit 0
fi
"$root/scripts/kube-down.sh" "$dir" >/dev/null 2>&1 || true

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
kport=${KUBE_PORT:-$(free_port)}
eport=${ETCD_PORT:-$(free_port)}
pport=$(free_port)
url=https://127.0.0.1:$kport
echo "$url" > "$dir/server-url"
echo "http://127.0.0.1:$eport" > "$dir/etcd-url"

# PKI: a CA, the serving certificate (127.0.0.1, localhost), the ServiceAccount key pair.
pki=$dir/pki
rm -rf "$pki" "$dir/users" "$dir/etcd-data"
mkdir -p "$pki"
ec() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
ec "$pki/ca.key"
openssl req -x509 -new -key "$pki/ca.key" -subj "/CN=asg-batch-test-ca" -days 30 -out "$pki/ca.crt" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
ec "$pki/serving.key"
openssl req -new -key "$pki/serving.key" -subj "/CN=kube-apiserver" 2>/dev/null |
  openssl x509 -req -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -set_serial "0x$(openssl rand -hex 16)" -days 30 \
    -out "$pki/serving.crt" 2>/dev/null \
    -extfile <(printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n')
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$pki/sa.key" 2>/dev/null
openssl pkey -in "$pki/sa.key" -pubout -out "$pki/sa.pub"

# Run a server in its own session, detached from this shell; log and pid into $dir.
start() { # start NAME CMD...
  local name=$1; shift
  setsid "$@" >"$dir/$name.log" 2>&1 < /dev/null &
  echo $! > "$dir/$name.pid"
}
start etcd "$bin/etcd" --name=kube --data-dir="$dir/etcd-data" \
  --listen-client-urls="http://127.0.0.1:$eport" --advertise-client-urls="http://127.0.0.1:$eport" \
  --listen-peer-urls="http://127.0.0.1:$pport" --initial-advertise-peer-urls="http://127.0.0.1:$pport" \
  --initial-cluster="kube=http://127.0.0.1:$pport" --unsafe-no-fsync --log-level=warn
start kube-apiserver "$bin/kube-apiserver" \
  --etcd-servers="http://127.0.0.1:$eport" \
  --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$kport" \
  --cert-dir="$pki" --tls-cert-file="$pki/serving.crt" --tls-private-key-file="$pki/serving.key" \
  --client-ca-file="$pki/ca.crt" \
  --authorization-mode=RBAC \
  --service-account-issuer="$url" \
  --service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
  --service-cluster-ip-range=10.0.0.0/24 \
  --allow-privileged=true
if [ -n "${KUBE_OWNER_PID:-}" ]; then
  # Watchdog: stop both servers when the owner (a test process) is gone.
  setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done; exec "$2" "$3" --purge' \
    watchdog "$KUBE_OWNER_PID" "$root/scripts/kube-down.sh" "$dir" >/dev/null 2>&1 < /dev/null &
  echo $! > "$dir/watchdog.pid"
fi

"$root/scripts/kube-user.sh" "$dir" admin asg-batch-admin system:masters >/dev/null
cp "$dir/users/admin.kubeconfig" "$dir/kubeconfig"

# Wait for /readyz (kube-apiserver needs etcd, then its post-start hooks: RBAC bootstrap, ...).
# A server that exits ends the wait at once; on a loaded machine (load ~20) readiness took
# longer than the 90 s this once allowed.
deadline=$((SECONDS + ${KUBE_READY_TIMEOUT:-300}))
until curl -fsS --max-time 2 --cacert "$pki/ca.crt" --cert "$dir/users/admin.crt" --key "$dir/users/admin.key" \
    "$url/readyz" >/dev/null 2>&1; do
  for p in etcd kube-apiserver; do
    if ! alive "$p"; then
      log "$p exited; the end of $dir/$p.log:"; tail -n 30 "$dir/$p.log" >&2
      "$root/scripts/kube-down.sh" "$dir" >/dev/null 2>&1 || true
      exit 1
    fi
  done
  if [ $SECONDS -ge $deadline ]; then
    log "kube-apiserver not ready after ${KUBE_READY_TIMEOUT:-300} s; the end of $dir/kube-apiserver.log:"
    tail -n 30 "$dir/kube-apiserver.log" >&2
    "$root/scripts/kube-down.sh" "$dir" >/dev/null 2>&1 || true
    exit 1
  fi
  sleep 0.2
done
log "ready: $url (etcd on 127.0.0.1:$eport), kubeconfig $dir/kubeconfig"
echo "$dir/kubeconfig"
