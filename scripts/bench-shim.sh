#!/usr/bin/env bash
# Per-attempt cost of the process executor's shim (issue 13): N trivial attempts
# (`asg-batch-shim --state DIR -- sh -c true` when asg-batch-shim sits beside BIN, else
# `BIN shim --state DIR -- sh -c true`, as the agent starts them) one after another,
# beside the floor (the same `sh -c true` forked directly). Prints wall and user+sys CPU
# per attempt; compare builds in one run, one right after the other:
#
#   scripts/bench-shim.sh BIN [BIN...]        # N=500 by default (BENCH_SHIM_N)
set -euo pipefail
N=${BENCH_SHIM_N:-500}
WORK=$(mktemp -d /tmp/asg-batch-bench-shim.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
echo "machine: $(nproc) cores; load: $(cut -d' ' -f1-3 /proc/loadavg); state dir on $(df --output=fstype "$WORK" | tail -1)"
per() { # label, then the command timed; prints per-attempt figures
    local label=$1
    shift
    local TIMEFORMAT='%R %U %S' # bash's `time`: wall, and CPU of the children it waited for
    { time "$@"; } 2>"$WORK/time"
    read -r wall user sys <"$WORK/time"
    awk -v l="$label" -v n="$N" -v w="$wall" -v u="$user" -v s="$sys" \
        'BEGIN { printf "%-40s %8.2f ms wall %8.2f ms CPU (%.2f user + %.2f sys) per attempt\n", l, 1000*w/n, 1000*(u+s)/n, 1000*u/n, 1000*s/n }'
}
floor() { for ((i = 0; i < N; i++)); do sh -c true; done; }
# The attempt directories are made before the timed loop, as the agent makes them itself
# (a `mkdir` process per attempt would add a fork+exec the agent does not pay).
DIR=
attempt_dirs() {
    DIR=$(mktemp -d "$WORK/attempts.XXXXXX")
    (cd "$DIR" && seq 0 $((N - 1)) | xargs mkdir)
}
shims() {
    for ((i = 0; i < N; i++)); do
        "$@" --state "$DIR/$i" -- sh -c true >/dev/null
    done
}
per "floor: sh -c true" floor
for bin in "$@"; do
    small=$(dirname "$bin")/asg-batch-shim
    attempt_dirs
    if [[ -x $small ]]; then
        per "shim: $small" shims "$small"
    else
        per "shim: $(basename "$bin") shim" shims "$bin" shim
    fi
done
