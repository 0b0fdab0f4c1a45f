#!/usr/bin/env python3
# The embedded API server's CPU per job (issue 13), apart from everything else dev runs.
# Usage: scripts/bench-apiserver-writes.py BIN [JOBS=2000]   (PERF_OUT=FILE: perf record it)
#   CHILDREN=1: the jobs are an array's children (an ownerReference to one parent job, as
#   the controller creates them), PRELOAD=N: N finished jobs are stored before the timed
#   part (what the server holds late in a 10,000-job run).
# Compare builds in the same run, alternating (e.g. base, new, base, new, ...).
#
# Drives a standalone `asg-batch apiserver` with the write mix of one BatchJob in
# `asg-batch dev` (SSA apply of the job; controller bind, agent report, controller end:
# SSA applies of /status with a resourceVersion precondition) while 12 watches run
# (10 with the agents' field selector status.node=N, 2 plain), and prints the server
# process's CPU per job (utime+stime from /proc).
import http.client, json, os, subprocess, sys, time
BIN = sys.argv[1]
N = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KUBECTL = os.path.join(ROOT, ".tools", "kubectl")
port = 20000 + os.getpid() % 20000
cfg = f"/tmp/bench-apiserver-{os.getpid()}.cfg"
srv = subprocess.Popen([BIN, "apiserver", "--listen", f"127.0.0.1:{port}", "--kubeconfig", cfg],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       env={**os.environ, "RUST_LOG": "warn"})
try:
    for _ in range(100):
        if os.path.exists(cfg): break
        time.sleep(0.1)
    time.sleep(0.5)
    subprocess.run([KUBECTL, "--kubeconfig", cfg, "apply", "-f", os.path.join(ROOT, "crds")], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([KUBECTL, "--kubeconfig", cfg, "wait", "--for=condition=Established", "crd", "--all"], check=True, stdout=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/apis/asgbatch.io/v1alpha1"
    watchers = [subprocess.Popen(["curl", "-sN", f"{base}/batchjobs?watch=1&allowWatchBookmarks=true&fieldSelector=status.node%3Dlocal-bench-{i:04d}"], stdout=subprocess.DEVNULL) for i in range(1, 11)]
    watchers += [subprocess.Popen(["curl", "-sN", f"{base}/batchjobs?watch=1&allowWatchBookmarks=true"], stdout=subprocess.DEVNULL) for _ in range(2)]
    time.sleep(1)
    c = http.client.HTTPConnection("127.0.0.1", port)
    def apply(path, body, manager, force=False):
        q = f"?fieldManager={manager}" + ("&force=true" if force else "")
        c.request("PATCH", f"/apis/asgbatch.io/v1alpha1/namespaces/default/batchjobs/{path}{q}",
                  body=json.dumps(body), headers={"Content-Type": "application/apply-patch+yaml"})
        r = c.getresponse(); data = r.read()
        if r.status >= 300: raise SystemExit(f"{path}: {r.status} {data[:300]}")
        return json.loads(data)
    def cpu():
        f = open(f"/proc/{srv.pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    prof = subprocess.Popen(["perf", "record", "-F", "999", "--call-graph", "dwarf,32768", "-o", os.environ["PERF_OUT"], "-p", str(srv.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) if os.environ.get("PERF_OUT") else None
    time.sleep(1 if prof else 0)
    now = "2026-11-30T23:39:31Z"
    tmpl = {"process": {"command": ["sh", "-c", "true"]}, "resources": {"cpu": "100m", "memory": "16Mi"}}
    owner = {}
    if os.environ.get("CHILDREN") == "1":
        parent = apply("parent", {"apiVersion": "asgbatch.io/v1alpha1", "kind": "BatchJob",
                                  "metadata": {"name": "parent", "namespace": "default"},
                                  "spec": {"queue": "bench", "arrayProperties": {"size": N}, **tmpl}}, "asg-batch-dev")
        owner = {"ownerReferences": [{"apiVersion": "asgbatch.io/v1alpha1", "kind": "BatchJob", "name": "parent",
                                      "uid": parent["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}]}
    for i in range(int(os.environ.get("PRELOAD", "0"))):
        apply(f"old-{i}", {"apiVersion": "asgbatch.io/v1alpha1", "kind": "BatchJob",
                           "metadata": {"name": f"old-{i}", "namespace": "default"},
                           "spec": {"queue": "bench", **tmpl}}, "asg-batch-dev")
    t0, c0 = time.time(), cpu()
    for i in range(N):
        name = f"j-{i}"; node = f"local-bench-{i % 10 + 1:04d}"
        o = apply(name, {"apiVersion": "asgbatch.io/v1alpha1", "kind": "BatchJob",
                         "metadata": {"name": name, "namespace": "default", **owner},
                         "spec": {"queue": "bench", **tmpl}}, "asg-batch-dev")
        cond = [{"lastTransitionTime": now, "message": f"attempt 1 bound to node {node}", "observedGeneration": 1,
                 "reason": "Bound", "status": "True", "type": "Scheduled"}]
        o = apply(name + "/status", {"apiVersion": "asgbatch.io/v1alpha1", "kind": "BatchJob",
                  "metadata": {"name": name, "namespace": "default", "resourceVersion": o["metadata"]["resourceVersion"]},
                  "status": {"phase": "Starting", "node": node, "attempt": 1, "template": tmpl, "conditions": cond,
                             "observedGeneration": 1, "message": f"attempt 1 bound to node {node}"}}, "asg-batch-controller", True)
        o = apply(name + "/status", {"apiVersion": "asgbatch.io/v1alpha1", "kind": "BatchJob",
                  "metadata": {"name": name, "namespace": "default", "resourceVersion": o["metadata"]["resourceVersion"]},
                  "status": {"attempts": [{"attempt": 1, "exitCode": 0, "instanceId": node, "logTail": "", "node": node,
                             "reason": "Completed", "startedAt": now, "statusReason": "Essential container in task exited",
                             "stoppedAt": now}]}}, f"asg-batch-agent-{node}")
        apply(name + "/status", {"apiVersion": "asgbatch.io/v1alpha1", "kind": "BatchJob",
              "metadata": {"name": name, "namespace": "default", "resourceVersion": o["metadata"]["resourceVersion"]},
              "status": {"phase": "Succeeded", "attempt": 1, "template": tmpl, "conditions": cond, "observedGeneration": 1,
                         "reason": "Completed", "startedAt": now, "stoppedAt": now,
                         "message": f"attempt 1 succeeded on node {node}: exit code 0 (Completed)"}}, "asg-batch-controller", True)
    time.sleep(1.0)
    t1, c1 = time.time(), cpu()
    rss = [l for l in open(f"/proc/{srv.pid}/status") if l.startswith("VmRSS")][0].split()[1]
    print(f"{BIN}: {N} jobs x 4 applies, 12 watches: server {c1-c0:.2f} s CPU = {1000*(c1-c0)/N:.3f} ms/job "
          f"({1000*(c1-c0)/N/4:.3f} ms/write), wall {t1-t0-1:.1f} s, RSS {int(rss)//1024} MiB")
    for w in watchers: w.kill()
    if prof:
        prof.send_signal(2); prof.wait()
finally:
    srv.kill()
    try: os.remove(cfg)
    except OSError: pass
