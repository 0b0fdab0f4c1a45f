#!/usr/bin/env bash
# Builds the real kube-apiserver and etcd from Go modules (DESIGN.md §5, issue 10), caches
# both outside the clone keyed by version, and links them into .tools/kube/bin/.
# Idempotent: when the cache holds both binaries this takes well under a second.
#
# Versions are pinned by the scratch modules tests/kube/apiserver/go.mod (k8s.io/kubernetes,
# every staging module replaced by its v0.35.x tag) and tests/kube/etcd/go.mod
# (go.etcd.io/etcd/server/v3, whose root package is etcd's main).
#
# Cache: ${ASG_BATCH_CACHE:-/work/cache}/kube/ (or ~/.cache/asg-batch/kube/ when that is not
# writable). Go's own module and build caches stay where Go keeps them (~/go, ~/.cache/go-build).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
log() { printf '[kube-build] %s\n' "$*" >&2; }

modver() { # modver DIR MODULE -> the version DIR/go.mod requires of MODULE
  awk -v m="$2" '$1 == m && $2 ~ /^v/ { print $2; exit } $1 == "require" && $2 == m { print $3; exit }' "$1/go.mod"
}
KUBE_VERSION=$(modver tests/kube/apiserver k8s.io/kubernetes)
ETCD_VERSION=$(modver tests/kube/etcd go.etcd.io/etcd/server/v3)
[ -n "$KUBE_VERSION" ] && [ -n "$ETCD_VERSION" ] || { log "cannot read the pinned versions from tests/kube/*/go.mod"; exit 1; }

cache=${ASG_BATCH_CACHE:-/work/cache}
if ! mkdir -p "$cache/kube" 2>/dev/null || [ ! -w "$cache/kube" ]; then
  cache=${XDG_CACHE_HOME:-$HOME/.cache}/asg-batch
  mkdir -p "$cache/kube"
fi
apiserver=$cache/kube/kube-apiserver-$KUBE_VERSION/kube-apiserver
etcd=$cache/kube/etcd-$ETCD_VERSION/etcd

link() {
  mkdir -p .tools/kube/bin
  ln -sfn "$apiserver" .tools/kube/bin/kube-apiserver
  ln -sfn "$etcd" .tools/kube/bin/etcd
}
if [ -x "$apiserver" ] && [ -x "$etcd" ]; then
  link
  exit 0
fi

command -v go >/dev/null || { log "go is not on PATH (Go 1.26 and the Go module proxy are needed)"; exit 1; }
# One build at a time (parallel tests may all call this script).
exec 9>"$cache/kube/.lock"
flock 9

build() { # build OUT MODDIR PACKAGE LDFLAGS
  local out=$1 dir=$2 pkg=$3 ldflags=$4
  [ -x "$out" ] && return 0
  log "building $pkg into $out (cold: several minutes)"
  mkdir -p "$(dirname "$out")"
  local start=$SECONDS
  (cd "$dir" && CGO_ENABLED=0 go build -trimpath -o "$out.tmp" -ldflags "$ldflags" "$pkg")
  mv -f "$out.tmp" "$out"
  log "built $(basename "$out") in $((SECONDS - start)) s"
}

minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
kv=k8s.io/component-base/version
cv=k8s.io/client-go/pkg/version
kube_ldflags="-s -w"
for p in $kv $cv; do
  kube_ldflags+=" -X $p.gitVersion=$KUBE_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
  kube_ldflags+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
done
build "$apiserver" tests/kube/apiserver k8s.io/kubernetes/cmd/kube-apiserver "$kube_ldflags"
build "$etcd" tests/kube/etcd go.etcd.io/etcd/server/v3 "-s -w"
link
log "ready: kube-apiserver $KUBE_VERSION, etcd $ETCD_VERSION in $cache/kube"
