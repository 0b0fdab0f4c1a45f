#!/usr/bin/env python3
"""Latency of binding at a steady submission rate (issue 13), against a running
`asg-batch dev` (plain HTTP on loopback): submits N trivial BatchJobs at RATE per second
to queue QUEUE and watches them; prints p50/p99/max of "job created → bound" (the first
watch event carrying the asgbatch.io/node label) measured on this client's clock.

    bench-latency.py KUBECONFIG QUEUE [N=1000] [RATE=100] [NODES=10]

It first waits for NODES Ready BatchNodes.
"""
import http.client
import json
import sys
import threading
import time
import urllib.parse

import yaml  # PyYAML, in the test virtualenv

kubeconfig, queue = sys.argv[1], sys.argv[2]
n = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
rate = float(sys.argv[4]) if len(sys.argv) > 4 else 100.0
nodes_wanted = int(sys.argv[5]) if len(sys.argv) > 5 else 10
server = yaml.safe_load(open(kubeconfig))["clusters"][0]["cluster"]["server"]
url = urllib.parse.urlparse(server)
path = "/apis/asgbatch.io/v1alpha1/namespaces/default/batchjobs"
sent, bound = {}, {}
done = threading.Event()


def watch():
    conn = http.client.HTTPConnection(url.hostname, url.port)
    conn.request("GET", path + "?watch=true&labelSelector=asgbatch.io%2Fnode")
    resp = conn.getresponse()
    for line in resp:
        event = json.loads(line)
        name = event["object"]["metadata"]["name"]
        if name.startswith("lat-") and name not in bound:
            bound[name] = time.monotonic()
            if len(bound) >= n:
                done.set()
                return


conn = http.client.HTTPConnection(url.hostname, url.port)
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
threading.Thread(target=watch, daemon=True).start()
time.sleep(0.5)  # the watch is established (a dropped early event would only add latency)
start = time.monotonic()
for i in range(n):
    due = start + i / rate
    delay = due - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    name = f"lat-{i}"
    body = {
        "apiVersion": "asgbatch.io/v1alpha1",
        "kind": "BatchJob",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "queue": queue,
            "process": {"command": ["sh", "-c", "true"]},
            "resources": {"cpu": "100m", "memory": "16Mi"},
        },
    }
    sent[name] = time.monotonic()
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    r = conn.getresponse()
    r.read()
    if r.status != 201:
        sys.exit(f"creating {name}: HTTP {r.status}")
achieved = n / (time.monotonic() - start)
if not done.wait(120):
    sys.exit(f"only {len(bound)} of {n} jobs bound within 120 s")
lat = sorted((bound[k] - sent[k]) * 1000 for k in sent)
pct = lambda p: lat[min(len(lat) - 1, int(len(lat) * p))]
print(f"created → bound at {achieved:.0f} submissions/s, {n} jobs: "
      f"p50 {pct(0.5):.0f} ms, p99 {pct(0.99):.0f} ms, max {lat[-1]:.0f} ms")
