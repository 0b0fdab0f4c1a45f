#!/usr/bin/env python3
"""Latency of binding at a steady submission rate (issue 13), against a running
`asg-batch dev` (plain HTTP on loopback): submits N trivial BatchJobs at RATE per second
to queue QUEUE and watches them; prints p50/p99/max of "job created → bound" (the first
watch event whose status names a node; no selector, so that binaries from before the
field selector, which put a label on bound jobs, are measured the same way) measured on this client's clock.

    bench-latency.py KUBECONFIG QUEUE [N=1000] [RATE=100] [NODES=10]

It first waits for NODES Ready BatchNodes.
"""
import http.client
import json
import sys
import threading
import time

from benchjobs import JOBS_PATH, report, server, submit

kubeconfig, queue = sys.argv[1], sys.argv[2]
n = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
rate = float(sys.argv[4]) if len(sys.argv) > 4 else 100.0
nodes_wanted = int(sys.argv[5]) if len(sys.argv) > 5 else 10
host, port = server(kubeconfig)
bound = {}
done = threading.Event()


def watch(rv):
    # From the list's resourceVersion: no synthetic ADDED event per existing job (beside
    # a 50,000-job backlog, parsing those held this client's clock back by seconds).
    conn = http.client.HTTPConnection(host, port)
    conn.request("GET", f"{JOBS_PATH}?watch=true&resourceVersion={rv}")
    resp = conn.getresponse()
    for line in resp:
        event = json.loads(line)
        name = event["object"]["metadata"]["name"]
        node = (event["object"].get("status") or {}).get("node")
        if node and name.startswith("lat-") and name not in bound:
            bound[name] = time.monotonic()
            if len(bound) >= n:
                done.set()
                return


conn = http.client.HTTPConnection(host, port)
# Steady state: every instance of the compute environment is up (minInstances).
deadline = time.monotonic() + 120
while True:
    conn.request("GET", "/apis/asgbatch.io/v1alpha1/batchnodes")
    r = conn.getresponse()
    nodes = json.loads(r.read()).get("items", [])
    ready = [x for x in nodes if (x.get("status") or {}).get("phase") == "Ready"]
    if len(ready) >= nodes_wanted:
        break
    if time.monotonic() > deadline:
        sys.exit(f"only {len(ready)} of {nodes_wanted} nodes Ready after 120 s")
    time.sleep(0.2)
conn.request("GET", f"{JOBS_PATH}?limit=1")
rv = json.loads(conn.getresponse().read())["metadata"]["resourceVersion"]
threading.Thread(target=watch, args=(rv,), daemon=True).start()
time.sleep(0.5)  # the watch is established (a dropped early event would only add latency)
sent, achieved = submit(host, port, [f"lat-{i}" for i in range(n)], rate, queue, ["sh", "-c", "true"], "100m")
if not done.wait(120):
    sys.exit(f"only {len(bound)} of {n} jobs bound within 120 s")
report("created → bound", achieved, [(bound[k] - sent[k]) * 1000 for k in sent])
