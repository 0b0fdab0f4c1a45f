#!/usr/bin/env python3
"""Waits until a Runnable backlog has settled in a running `asg-batch dev` (issue 13,
"Backlog"), so that bench-latency.py then measures binding beside a backlog the controller
holds rather than one it is still writing: QUEUE's status counts at least N-1 Runnable
jobs (one runs: the backlog waits for an environment at its maxInstances) and no BatchJob
changed for QUIET seconds. Prints how long that took.

    bench-backlog-settle.py KUBECONFIG QUEUE N [QUIET=3] [TIMEOUT=600]
"""
import http.client
import json
import sys
import threading
import time

from benchjobs import JOBS_PATH, server

kubeconfig, queue, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
quiet = float(sys.argv[4]) if len(sys.argv) > 4 else 3.0
timeout = float(sys.argv[5]) if len(sys.argv) > 5 else 600.0
host, port = server(kubeconfig)
start = time.monotonic()
last_change = [time.monotonic()]


def get(conn, path):
    conn.request("GET", path)
    r = conn.getresponse()
    body = r.read()
    if r.status != 200:
        sys.exit(f"GET {path}: HTTP {r.status}: {body[:200]!r}")
    return json.loads(body)


def watch(rv):
    """Every BatchJob change after rv moves last_change (no selector: the jobs of every
    queue count, the controller's writes included)."""
    conn = http.client.HTTPConnection(host, port)
    conn.request("GET", f"{JOBS_PATH}?watch=true&resourceVersion={rv}")
    for _ in conn.getresponse():
        last_change[0] = time.monotonic()


conn = http.client.HTTPConnection(host, port)
# The list's resourceVersion: changes after it are watched (limit=1 keeps the list small).
rv = get(conn, f"{JOBS_PATH}?limit=1")["metadata"]["resourceVersion"]
threading.Thread(target=watch, args=(rv,), daemon=True).start()
runnable = 0
while True:
    if time.monotonic() - start > timeout:
        sys.exit(f"the backlog did not settle within {timeout:.0f} s: {runnable} Runnable of {n}")
    status = get(conn, f"/apis/asgbatch.io/v1alpha1/jobqueues/{queue}").get("status") or {}
    runnable = status.get("runnableJobs") or 0
    if runnable >= n - 1 and time.monotonic() - last_change[0] >= quiet:
        break
    time.sleep(0.5)
print(f"backlog of {n} jobs in queue {queue}: {runnable} Runnable, settled "
      f"(no BatchJob change for {quiet:.0f} s) {time.monotonic() - start:.1f} s after it was applied")
