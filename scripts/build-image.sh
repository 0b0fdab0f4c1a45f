#!/usr/bin/env bash
# Builds the asg-batch image with Podman from `scratch` (Containerfile):
#   scripts/build-image.sh BINARY IMAGE
# e.g. scripts/build-image.sh target/release/asg-batch asg-batch:0.1.0 (what `make image` runs).
# The context holds the binary at /usr/local/bin/asg-batch, the process-job shim
# asg-batch-shim found beside BINARY (`cargo build --release --bins`) at
# /usr/local/bin/asg-batch-shim, every shared library `ldd` lists for them (at the path the
# dynamic loader looks for it), the CA bundle, and passwd/group/nsswitch.conf; it prints
# that file list.
set -euo pipefail
bin=${1:?usage: build-image.sh BINARY IMAGE}
image=${2:?usage: build-image.sh BINARY IMAGE}
cd "$(dirname "$0")/.."
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
root=$ctx/rootfs
shim=$(dirname "$bin")/asg-batch-shim
if [[ ! -x $shim ]]; then
  echo "build-image.sh: no $shim beside $bin (build with cargo build --release --bins)" >&2
  exit 1
fi
install -D -m 0755 "$bin" "$root/usr/local/bin/asg-batch"
install -D -m 0755 "$shim" "$root/usr/local/bin/asg-batch-shim"
# Shared libraries: `ldd` prints `name => /path (addr)` and the loader as `/path (addr)`.
ldd "$bin" "$shim" | awk '/=> \// {print $3} /^[ \t]*\/[^ ]+ \(/ {print $1}' | sort -u | while read -r lib; do
  install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
done
if ldd "$bin" "$shim" | grep -q 'not found'; then
  echo "build-image.sh: $bin or $shim has unresolved libraries" >&2
  exit 1
fi
install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
mkdir -p "$root/etc"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > "$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' > "$root/etc/group"
# glibc resolves names itself (files and dns are built into libc 2.34+); say in which order.
printf 'hosts: files dns\n' > "$root/etc/nsswitch.conf"
mkdir -m 1777 "$root/tmp"
cp Containerfile "$ctx/Containerfile"
(cd "$root" && find . -type f | sed 's|^\.||' | sort)
podman build --quiet --no-cache --pull=never -f "$ctx/Containerfile" -t "$image" "$ctx"
