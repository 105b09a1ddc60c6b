#!/usr/bin/env python3
"""What waiting clients cost, and how soon they hear: idle SSE clients per MiB of one `serve`,
and the delay from a worker storing a result to the event reaching a client on another `serve`.

    python3 scripts/watchers_bench.py [--binary target/release/tandem] [--clients 1000] [--jobs 50]

Starts a private redis-server, two `serve` processes (one the jobs are posted to, one the
clients watch) and, for the second part, one worker, all on 127.0.0.1. Part 1: one job stays
queued (no worker yet); --clients connections open GET /job/{id}/events on the watching serve
and each reads its first event; the serve's RSS (/proc) before and after gives the memory per
client. Part 2: --jobs jobs, one at a time: posted, followed on the other serve, and the time
the `completed` event arrives is compared with the job's `completed_at` (same machine clock,
ms resolution). Prints one JSON object. Python's standard library only.
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def wait_ready(base, timeout=90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/health/live", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{base} did not come up")


def post(base, image):
    req = urllib.request.Request(f"{base}/predict", data=image, headers={"content-type": "image/jpeg"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)["job_id"]


def open_stream(port, job_id):
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(f"GET /job/{job_id}/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n".encode())
    return s


def stop_all(procs):
    """Stops the processes a bench started (SIGTERM, then SIGKILL after 10 s)."""
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()


def read_until(s, needle, buf=b""):
    while needle not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise RuntimeError(f"stream closed before {needle!r}: {buf[-300:]!r}")
        buf += chunk
    return buf


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/tandem"))
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--jobs", type=int, default=50)
    ap.add_argument("--shared", default=os.environ.get("TANDEM_SHARED_DIR", os.path.join(ROOT, "..", "shared")))
    args = ap.parse_args()
    models = os.path.join(args.shared, "models")
    image = open(os.path.join(args.shared, "images", "sample_01.jpg"), "rb").read()
    env = dict(os.environ)
    env.setdefault("ORT_DYLIB_PATH", os.path.join(ROOT, ".onnxruntime", "libonnxruntime.so"))
    procs = []
    tmp = tempfile.mkdtemp()
    try:
        rport = free_port()
        procs.append(subprocess.Popen(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                                       "--appendonly", "no", "--dir", tmp], stdout=subprocess.DEVNULL))
        redis = ["--redis-url", f"redis://127.0.0.1:{rport}/", "--model-dir", models,
                 "--accurate-model", "efficientnet_lite2.onnx"]
        ports = [free_port(), free_port()]
        for port in ports:
            procs.append(subprocess.Popen([args.binary, "serve", "--addr", f"127.0.0.1:{port}", *redis,
                                           "--max-watchers", str(args.clients + 10)],
                                          env=env, stderr=subprocess.DEVNULL))
        posting, watching = (f"http://127.0.0.1:{p}" for p in ports)
        for base in (posting, watching):
            wait_ready(base)
        watcher_pid = procs[2].pid

        # Part 1: idle clients.
        job = post(posting, image)
        time.sleep(1)
        before = rss_kib(watcher_pid)
        streams = []
        for _ in range(args.clients):
            s = open_stream(ports[1], job)
            read_until(s, b"event: queued")
            streams.append(s)
        time.sleep(1)
        after = rss_kib(watcher_pid)
        for s in streams:
            s.close()
        per_client = (after - before) / args.clients

        # Part 2: the delay from a stored result to the event on the other serve.
        procs.append(subprocess.Popen([args.binary, "worker", *redis], env=env, stderr=subprocess.DEVNULL))
        read_until_done = []
        for _ in range(args.jobs):
            job = post(posting, image)
            s = open_stream(ports[1], job)
            buf = read_until(s, b"event: completed")
            arrived = time.time()
            buf = read_until(s, b"\n\n", buf[buf.index(b"event: completed"):])
            s.close()
            data = next(l for l in buf.split(b"\n") if l.startswith(b"data:"))[5:]
            completed_at = json.loads(data)["completed_at"]
            stored = datetime.strptime(completed_at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()
            read_until_done.append((arrived - stored) * 1000)
        read_until_done.sort()
        print(json.dumps({
            "idle_clients": args.clients,
            "rss_before_kib": before,
            "rss_after_kib": after,
            "kib_per_idle_client": round(per_client, 1),
            "idle_clients_per_mib": round(1024 / per_client, 1) if per_client > 0 else None,
            "jobs": args.jobs,
            "event_delay_ms_p50": round(statistics.median(read_until_done), 2),
            "event_delay_ms_p99": round(read_until_done[min(len(read_until_done) - 1, int(0.99 * len(read_until_done)))], 2),
            "event_delay_ms_max": round(read_until_done[-1], 2),
        }))
    finally:
        stop_all(procs)


if __name__ == "__main__":
    sys.exit(main())
