"""Shared by the latency benchmarks (bench-latency.py, bench-scale-latency.py): the API
server of a kubeconfig, BatchJob submission at a steady rate, and the percentile line."""
import http.client
import json
import sys
import time
import urllib.parse

import yaml  # PyYAML, in the test virtualenv

JOBS_PATH = "/apis/asgbatch.io/v1alpha1/namespaces/default/batchjobs"


def server(kubeconfig):
    """The (host, port) of the kubeconfig's first cluster (plain HTTP on loopback)."""
    url = urllib.parse.urlparse(yaml.safe_load(open(kubeconfig))["clusters"][0]["cluster"]["server"])
    return url.hostname, url.port


def submit(host, port, names, rate, queue, command, cpu):
    """Creates one BatchJob per name at `rate` per second; returns {name: monotonic time
    sent} and the rate achieved. Exits on any answer other than 201."""
    conn = http.client.HTTPConnection(host, port)
    sent = {}
    start = time.monotonic()
    for i, name in enumerate(names):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        body = {
            "apiVersion": "asgbatch.io/v1alpha1",
            "kind": "BatchJob",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {
                "queue": queue,
                "process": {"command": command},
                "resources": {"cpu": cpu, "memory": "16Mi"},
            },
        }
        sent[name] = time.monotonic()
        conn.request("POST", JOBS_PATH, json.dumps(body), {"Content-Type": "application/json"})
        r = conn.getresponse()
        r.read()
        if r.status != 201:
            sys.exit(f"creating {name}: HTTP {r.status}")
    return sent, len(names) / (time.monotonic() - start)


def report(what, achieved, latencies_ms):
    """Prints p50/p99/max of the latencies."""
    lat = sorted(latencies_ms)
    pct = lambda p: lat[min(len(lat) - 1, int(len(lat) * p))]
    print(f"{what} at {achieved:.0f} submissions/s, {len(lat)} jobs: "
          f"p50 {pct(0.5):.0f} ms, p99 {pct(0.99):.0f} ms, max {lat[-1]:.0f} ms")
