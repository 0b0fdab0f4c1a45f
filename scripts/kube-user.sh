#!/usr/bin/env bash
# Mints a client certificate for a named identity, signed by the test cluster's CA, and a
# kubeconfig that uses it (kube-apiserver takes the CN as the user and each O as a group).
#   scripts/kube-user.sh KUBE_DIR NAME USER [GROUP...]
# Writes KUBE_DIR/users/NAME.{crt,key,kubeconfig}; prints the kubeconfig's path.
# KUBE_DIR is what scripts/kube-up.sh made (pki/ca.{crt,key} and the server's URL in server-url).
set -euo pipefail
[ $# -ge 3 ] || { echo "usage: $0 KUBE_DIR NAME USER [GROUP...]" >&2; exit 2; }
dir=$1 name=$2 user=$3
shift 3
pki=$dir/pki
out=$dir/users
mkdir -p "$out"
subj="/CN=$user"
for g in "$@"; do subj+="/O=$g"; done
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$out/$name.key" 2>/dev/null
openssl req -new -key "$out/$name.key" -subj "$subj" -out "$out/$name.csr" 2>/dev/null
openssl x509 -req -in "$out/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -set_serial "0x$(openssl rand -hex 16)" \
  -days 30 -out "$out/$name.crt" \
  -extfile <(printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n') 2>/dev/null
rm -f "$out/$name.csr"
b64() { base64 -w0 < "$1"; }
cat > "$out/$name.kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: kube
  cluster:
    server: $(cat "$dir/server-url")
    certificate-authority-data: $(b64 "$pki/ca.crt")
users:
- name: $name
  user:
    client-certificate-data: $(b64 "$out/$name.crt")
    client-key-data: $(b64 "$out/$name.key")
contexts:
- name: $name
  context:
    cluster: kube
    user: $name
current-context: $name
KC
echo "$out/$name.kubeconfig"
