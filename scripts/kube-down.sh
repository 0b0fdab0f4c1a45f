#!/usr/bin/env bash
# Stops what scripts/kube-up.sh started in KUBE_DIR (argument, or $KUBE_DIR, or .tools/kube)
# and removes etcd's data; the certificates and logs stay for inspection, unless --purge
# (second argument) removes the whole directory.
set -uo pipefail
cd "$(dirname "$0")/.."
dir=${1:-${KUBE_DIR:-.tools/kube}}
stop() { # stop NAME: SIGTERM, up to 10 s, then SIGKILL
  local f=$dir/$1.pid pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if kill "$pid" 2>/dev/null; then
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}
stop kube-apiserver
stop etcd
rm -rf "$dir/etcd-data"
# The watchdog is last: it may be the caller.
if [ -f "$dir/watchdog.pid" ]; then
  w=$(cat "$dir/watchdog.pid"); rm -f "$dir/watchdog.pid"
  [ "$w" = "$$" ] || kill "$w" 2>/dev/null || true
fi
[ "${2:-}" = --purge ] && rm -rf "$dir"
exit 0
