#!/usr/bin/env python3
"""Latency of scaling out at a steady submission rate (issue 13), against a running
`asg-batch dev` (plain HTTP on loopback): submits N BatchJobs at RATE per second to queue
QUEUE, each asking for a whole instance of compute environment CE and holding it
(`sleep 120`), and watches CE's status. Job i (0-based) has been scaled for when the
status first shows desiredCapacity >= i + 1 (written right after the SetDesiredCapacity
call); prints p50/p99/max of "job created → SetDesiredCapacity" on this client's clock.

    bench-scale-latency.py KUBECONFIG QUEUE CE CPU [N=100] [RATE=100]

CE must start at 0 instances, with maxInstances >= N and instances of CPU cpu.
"""
import http.client
import json
import sys
import threading
import time
import urllib.parse

from benchjobs import report, server, submit

kubeconfig, queue, ce, cpu = sys.argv[1:5]
n = int(sys.argv[5]) if len(sys.argv) > 5 else 100
rate = float(sys.argv[6]) if len(sys.argv) > 6 else 100.0
host, port = server(kubeconfig)
covered = []  # (monotonic time, desiredCapacity) as the status showed it
done = threading.Event()


def watch():
    conn = http.client.HTTPConnection(host, port)
    conn.request(
        "GET",
        "/apis/asgbatch.io/v1alpha1/computeenvironments?watch=true&fieldSelector="
        + urllib.parse.quote(f"metadata.name={ce}"),
    )
    resp = conn.getresponse()
    for line in resp:
        event = json.loads(line)
        desired = ((event["object"].get("status") or {}).get("desiredCapacity")) or 0
        if not covered or desired > covered[-1][1]:
            covered.append((time.monotonic(), desired))
        if desired >= n:
            done.set()
            return


threading.Thread(target=watch, daemon=True).start()
time.sleep(0.5)  # the watch is established
names = [f"scale-{i}" for i in range(n)]
sent, achieved = submit(host, port, names, rate, queue, ["sleep", "120"], cpu)
if not done.wait(120):
    sys.exit(f"desired capacity reached only {covered[-1][1] if covered else 0} of {n} within 120 s")
report(
    "created → SetDesiredCapacity",
    achieved,
    [(next(t for t, d in covered if d >= i + 1) - sent[name]) * 1000 for i, name in enumerate(names)],
)
