#!/usr/bin/env bash
# End-to-end figures of issue 13, measured on this machine in one run, each printed beside
# its floor (the same machine forking and executing `sh -c true` one after another).
#
#   make bench-e2e                       # everything (takes several minutes)
#   BENCH_SIZES="500 2000" BENCH_ARRAYS="3000" make bench-e2e
#   ASG_BATCH_BIN=/path/to/asg-batch scripts/bench-e2e.sh   # measure another build (a baseline)
#   BENCH_SIZES= BENCH_ARRAYS= scripts/bench-e2e.sh        # only the hold part (empty skips a part)
#   BENCH_SCALE=100 (default): with the latency part, created → SetDesiredCapacity for N jobs
#   at 100/s, each needing an instance of its own (0 skips it)
#   BENCH_BACKLOG=50000 (default): the latency part again beside that many settled Runnable
#   jobs of another queue (0 skips it)
#
# Figures:
# - floor: wall time of 5,000 `sh -c true` forked one after another, and its CPU time (the
#   shell's and the 5,000 processes'); "CPU × floor" compares dev's CPU (its own, its shims'
#   and its jobs') with that CPU for as many jobs: a ratio that a busy machine disturbs less
#   than the wall-clock one;
# - `asg-batch dev --exit-when-done`: wall time and max RSS for N independent trivial jobs
#   (`sh -c true`, 100m cpu, 16Mi) on a local compute environment of 10 instances × 8 cpu,
#   and "done": the time until dev printed that every job finished (the wall time adds its
#   shutdown: agents stopped, temporary records and logs removed);
# - the same for one array job of N children;
# - 10,000 finished jobs kept (dev's --data-dir), then `asg-batch apiserver` on that data and
#   `asg-batch controller` against it: RSS of each after the controller's second pass, and
#   the controller's first pass duration.
set -euo pipefail

cd "$(dirname "$0")/.."
SIZES=${BENCH_SIZES-"500 2000 5000"}
ARRAYS=${BENCH_ARRAYS-"3000 10000"}
HOLD=${BENCH_HOLD-10000}
LATENCY_N=${BENCH_LATENCY-1000}
SCALE_N=${BENCH_SCALE-100}
BACKLOG_N=${BENCH_BACKLOG-50000}
FLOOR_N=${BENCH_FLOOR:-5000}
WORK=$(mktemp -d /tmp/asg-batch-bench.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

if [[ -z "${ASG_BATCH_BIN:-}" ]]; then
    # --bins: asg-batch-shim beside asg-batch (process jobs start under it).
    cargo build --release --bins >&2
    BIN=${CARGO_TARGET_DIR:-target}/release/asg-batch
else
    BIN=$ASG_BATCH_BIN
fi
echo "binary: $BIN"
py=python3
[[ -x .venv/bin/python ]] && py=.venv/bin/python
echo "machine: $(nproc) cores; load: $(cut -d' ' -f1-3 /proc/loadavg)"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
mib() { awk -v k="$1" 'BEGIN { printf "%.0f", k / 1024 }'; }

environment() { # a local compute environment of 10 instances × 8 cpu and its queue
    cat <<'EOF'
apiVersion: asgbatch.io/v1alpha1
kind: ComputeEnvironment
metadata:
  name: bench
spec:
  local:
    executor: process
  minInstances: 0
  maxInstances: 10
  instanceShape:
    cpu: "8"
    memory: 32Gi
  scaleInAfterIdleSeconds: 600
---
apiVersion: asgbatch.io/v1alpha1
kind: JobQueue
metadata:
  name: bench
spec:
  priority: 1
  computeEnvironments: [bench]
EOF
}

jobs_manifest() { # N independent jobs
    environment
    for ((i = 0; i < $1; i++)); do
        printf -- '---\napiVersion: asgbatch.io/v1alpha1\nkind: BatchJob\nmetadata:\n  name: j-%d\n  namespace: default\nspec:\n  queue: bench\n  process:\n    command: ["sh", "-c", "true"]\n  resources:\n    cpu: 100m\n    memory: 16Mi\n' "$i"
    done
}

array_manifest() { # one array job of N children
    environment
    printf -- '---\napiVersion: asgbatch.io/v1alpha1\nkind: BatchJob\nmetadata:\n  name: arr\n  namespace: default\nspec:\n  queue: bench\n  arrayProperties:\n    size: %d\n  process:\n    command: ["sh", "-c", "true"]\n  resources:\n    cpu: 100m\n    memory: 16Mi\n' "$1"
}

# Starts `dev` in the background on MANIFEST, its kubeconfig $WORK/NAME.kubeconfig and its
# log $WORK/NAME.log; sets $dev to its pid once it applied the manifest (or after SECONDS).
start_dev() { # NAME MANIFEST SECONDS
    local port
    port=$(free_port)
    "$BIN" dev --listen "127.0.0.1:$port" --kubeconfig "$WORK/$1.kubeconfig" \
        -f "$2" >"$WORK/$1.log" 2>&1 &
    dev=$!
    PIDS+=("$dev")
    for _ in $(seq $(($3 * 10))); do grep -q "^applied" "$WORK/$1.log" 2>/dev/null && break; sleep 0.1; done
}

# Runs `dev` on a manifest to completion; prints "wall_seconds max_rss_kib cpu_seconds
# done_seconds" (CPU: user + sys of dev and the processes it waited for, its shims and
# jobs; done: until dev printed that every job finished, before it stops its agents and
# removes its temporary files — the wall time includes that).
run_dev() {
    local manifest=$1
    shift
    local port t0 done_at
    port=$(free_port)
    rm -f "$WORK/done"
    t0=$(now)
    /usr/bin/time -f '%e %M %U %S' -o "$WORK/time" "$BIN" dev --listen "127.0.0.1:$port" \
        --kubeconfig "$WORK/dev.kubeconfig" -f "$manifest" --exit-when-done "$@" \
        2>"$WORK/dev.err" |
        awk -v stamp="$WORK/done" '/^all [0-9]+ jobs finished/ { system("date +%s.%N > " stamp) } { print }' \
            >"$WORK/dev.log" || {
        echo "dev failed on $manifest:" >&2
        tail -n 20 "$WORK/dev.log" "$WORK/dev.err" >&2
        exit 1
    }
    done_at=$(cat "$WORK/done" 2>/dev/null || echo "$t0")
    awk -v t0="$t0" -v d="$done_at" '{ printf "%s %s %.2f %.2f\n", $1, $2, $3 + $4, d - t0 }' "$WORK/time"
}

# 1. The floor (its CPU: user + sys of the shell and of the processes it waited for).
t0=$(now)
/usr/bin/time -f '%U %S' -o "$WORK/floor.time" \
    bash -c 'for ((i = 0; i < $1; i++)); do sh -c true; done' floor "$FLOOR_N"
t1=$(now)
FLOOR=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
FLOOR_CPU=$(awk '{ printf "%.2f", $1 + $2 }' "$WORK/floor.time")
echo
echo "floor: $FLOOR_N × sh -c true one after another: ${FLOOR} s (CPU ${FLOOR_CPU} s)"
echo
printf '%-34s %10s %10s %9s %12s %8s %8s %12s\n' "case" "wall s" "max MiB" "jobs/s" "× floor(N)" "CPU s" "done s" "CPU × floor"
# dev's CPU over the floor's for N jobs.
cpu_ratio() { awk -v c="$1" -v f="$FLOOR_CPU" -v n="$2" -v m="$FLOOR_N" 'BEGIN { printf "%.2f", c / (f * n / m) }'; }

# 2. Independent jobs.
for n in $SIZES; do
    jobs_manifest "$n" >"$WORK/jobs.yaml"
    read -r wall rss cpu done_s < <(run_dev "$WORK/jobs.yaml")
    floor_n=$(awk -v f="$FLOOR" -v n="$n" -v m="$FLOOR_N" 'BEGIN { print f * n / m }')
    printf '%-34s %10s %10s %9.0f %12s %8s %8s %12s\n' "dev: $n jobs" "$wall" "$(mib "$rss")" \
        "$(awk -v n="$n" -v w="$wall" 'BEGIN { print n / w }')" "$(ratio "$wall" "$floor_n")" "$cpu" "$done_s" \
        "$(cpu_ratio "$cpu" "$n")"
done

# 3. Arrays.
for n in $ARRAYS; do
    array_manifest "$n" >"$WORK/array.yaml"
    read -r wall rss cpu done_s < <(run_dev "$WORK/array.yaml")
    floor_n=$(awk -v f="$FLOOR" -v n="$n" -v m="$FLOOR_N" 'BEGIN { print f * n / m }')
    printf '%-34s %10s %10s %9.0f %12s %8s %8s %12s\n' "dev: array of $n children" "$wall" "$(mib "$rss")" \
        "$(awk -v n="$n" -v w="$wall" 'BEGIN { print n / w }')" "$(ratio "$wall" "$floor_n")" "$cpu" "$done_s" \
        "$(cpu_ratio "$cpu" "$n")"
done

# 4. Holding $HOLD finished jobs: dev runs them into a data directory, then the API server
#    and the controller run apart on it.
if [[ "$HOLD" -gt 0 ]]; then
    jobs_manifest "$HOLD" >"$WORK/hold.yaml"
    read -r wall rss _ < <(run_dev "$WORK/hold.yaml" --data-dir "$WORK/data")
    floor_n=$(awk -v f="$FLOOR" -v n="$HOLD" -v m="$FLOOR_N" 'BEGIN { print f * n / m }')
    printf '%-34s %10s %10s %9.0f %12s\n' "dev: $HOLD jobs (--data-dir)" "$wall" "$(mib "$rss")" \
        "$(awk -v n="$HOLD" -v w="$wall" 'BEGIN { print n / w }')" "$(ratio "$wall" "$floor_n")"

    port=$(free_port)
    "$BIN" apiserver --listen "127.0.0.1:$port" --kubeconfig "$WORK/api.kubeconfig" \
        --data-dir "$WORK/data" >"$WORK/api.log" 2>&1 &
    api=$!
    PIDS+=("$api")
    for _ in $(seq 600); do [[ -s "$WORK/api.kubeconfig" ]] && break; sleep 0.1; done
    rss_of() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status"; }
    hwm_of() { awk '/^VmHWM/ { print $2 }' "/proc/$1/status"; }
    api_loaded=$(rss_of "$api")
    mport=$(free_port)
    KUBECONFIG="$WORK/api.kubeconfig" "$BIN" controller --leader-elect=false \
        --metrics-bind-address "127.0.0.1:$mport" >"$WORK/controller.log" 2>&1 &
    ctl=$!
    PIDS+=("$ctl")
    passes=0
    for _ in $(seq 1200); do
        passes=$({ curl -s "http://127.0.0.1:$mport/metrics" 2>/dev/null || true; } |
            awk '/^asg_batch_controller_pass_duration_seconds_count/ { s += $2 } END { print s + 0 }')
        [[ "$passes" -ge 2 ]] && break
        sleep 0.25
    done
    first=$({ curl -s "http://127.0.0.1:$mport/metrics" || true; } |
        awk '/^asg_batch_controller_pass_duration_seconds_sum/ { s += $2 } END { print s + 0 }')
    echo
    echo "holding $HOLD finished jobs (after $passes controller passes; both passes took ${first} s):"
    echo "  controller:  RSS $(mib "$(rss_of "$ctl")") MiB, peak $(mib "$(hwm_of "$ctl")") MiB"
    echo "  API server:  RSS $(mib "$(rss_of "$api")") MiB, peak $(mib "$(hwm_of "$api")") MiB (loaded, before the controller: $(mib "$api_loaded") MiB)"
fi
# 5. Latency: jobs submitted at 100/s to a running dev whose 10 instances are up
#    (minInstances 10), created → bound per job on the client's clock.
if [[ "$LATENCY_N" -gt 0 ]]; then
    environment | sed 's/minInstances: 0/minInstances: 10/' >"$WORK/latency.yaml"
    # A second environment that starts empty: one instance per job (created → SetDesiredCapacity).
    cat >>"$WORK/latency.yaml" <<EOF
---
apiVersion: asgbatch.io/v1alpha1
kind: ComputeEnvironment
metadata:
  name: scale
spec:
  local:
    executor: process
  minInstances: 0
  maxInstances: $SCALE_N
  instanceShape:
    cpu: "1"
    memory: 1Gi
  scaleInAfterIdleSeconds: 600
---
apiVersion: asgbatch.io/v1alpha1
kind: JobQueue
metadata:
  name: scale
spec:
  priority: 1
  computeEnvironments: [scale]
EOF
    start_dev lat "$WORK/latency.yaml" 60
    echo
    "$py" scripts/bench-latency.py "$WORK/lat.kubeconfig" bench "$LATENCY_N" 100
    if [[ "$SCALE_N" -gt 0 ]]; then
        "$py" scripts/bench-scale-latency.py "$WORK/lat.kubeconfig" scale scale 1 "$SCALE_N" 100
    fi
    kill "$dev" 2>/dev/null || true
    wait "$dev" 2>/dev/null || true
fi
# 6. The same latency beside a Runnable backlog: BACKLOG_N jobs of a queue whose one
#    environment is at its maxInstances (one instance, busy with the first of them), settled
#    (every one Runnable, nothing written for 35 s), then 1,000 new jobs at 100/s into the
#    queue of the 10 Ready instances (issue 13: "a 50,000-job Runnable backlog does not slow
#    the binding of new work that fits"). Compare with part 5's line, measured just before.
if [[ "$LATENCY_N" -gt 0 && "$BACKLOG_N" -gt 0 ]]; then
    environment | sed 's/minInstances: 0/minInstances: 10/' >"$WORK/backlog.yaml"
    cat >>"$WORK/backlog.yaml" <<EOF
---
apiVersion: asgbatch.io/v1alpha1
kind: ComputeEnvironment
metadata:
  name: held
spec:
  local:
    executor: process
  minInstances: 1
  maxInstances: 1
  instanceShape:
    cpu: "1"
    memory: 4Gi
  scaleInAfterIdleSeconds: 600
---
apiVersion: asgbatch.io/v1alpha1
kind: JobQueue
metadata:
  name: held
spec:
  priority: 1
  computeEnvironments: [held]
EOF
    for ((i = 0; i < BACKLOG_N; i++)); do
        printf -- '---\napiVersion: asgbatch.io/v1alpha1\nkind: BatchJob\nmetadata:\n  name: held-%d\n  namespace: default\nspec:\n  queue: held\n  process:\n    command: ["sleep", "3600"]\n  resources:\n    cpu: "1"\n    memory: 16Mi\n' "$i"
    done >>"$WORK/backlog.yaml"
    start_dev backlog "$WORK/backlog.yaml" 600
    echo
    # Quiet for longer than the controller's full-pass interval (30 s): the first refresh
    # after the backlog parks writes the queue positions that moved while it was being
    # created (thousands of writes once), and the measurement is of the steady state.
    "$py" scripts/bench-backlog-settle.py "$WORK/backlog.kubeconfig" held "$BACKLOG_N" 35
    echo "  dev with the backlog: RSS $(mib "$(awk '/^VmRSS/ { print $2 }' "/proc/$dev/status")") MiB"
    "$py" scripts/bench-latency.py "$WORK/backlog.kubeconfig" bench "$LATENCY_N" 100 11 |
        sed "s/^/beside $BACKLOG_N Runnable: /"
    kill "$dev" 2>/dev/null || true
    wait "$dev" 2>/dev/null || true
fi
echo
echo "load at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
