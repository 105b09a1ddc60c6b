#!/usr/bin/env python3
"""Where one Redis stops being enough: its cost per job, end to end, with a model that costs nothing.

    python3 scripts/redis_ceiling.py [--binary target/release/tandem] [--pairs 1,2,4] [--jobs 3000]

Builds a tiny real ONNX classifier (scripts/make_tiny_model.py, in a venv of pinned `onnx`) and
runs it as both tiers, so the model's time is microseconds and what is left is the service and the
queue. For each count of `serve`+`worker` pairs it starts a private redis-server (no persistence)
and the pairs on it, all on 127.0.0.1, sends `--jobs` jobs (`tandem bench --jobs`: each job
followed to completion, spread over the pairs' `serve`), and reads Redis' own figures before and
after: `INFO commandstats` (calls per command, per job), `INFO cpu` (Redis' CPU seconds, per job,
and its share of one core at the rate reached), `INFO stats` (bytes in and out, per job). Then,
with the workers stopped, it queues `--depth` jobs and reads `used_memory`: the image bytes'
share of Redis' memory at that depth. Prints one JSON object. Python's standard library (and the
pinned venv for the model) only.

On a 2-core machine the pairs, their models' threads and the load generator share the two cores
with Redis, so the jobs/s reached is the machine's ceiling, not Redis'; Redis' CPU per job is the
figure that scales: one Redis core sustains about 1 / (CPU seconds per job) jobs/s.
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from watchers_bench import ROOT, free_port, stop_all, wait_ready


def redis_info(port, section):
    """`INFO section` of the Redis on `port`, as a dict (values left as strings)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"INFO {section}\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            if data.startswith(b"$"):
                header, _, rest = data.partition(b"\r\n")
                if len(rest) >= int(header[1:]):
                    break
    body = data.partition(b"\r\n")[2].decode()
    info = {}
    for line in body.splitlines():
        if ":" in line and not line.startswith("#"):
            key, _, value = line.partition(":")
            info[key] = value
    return info


def commandstats(port):
    """Calls per command (`cmdstat_evalsha` -> {"calls": ...})."""
    stats = {}
    for key, value in redis_info(port, "commandstats").items():
        if key.startswith("cmdstat_"):
            fields = dict(kv.split("=") for kv in value.split(","))
            stats[key[len("cmdstat_"):]] = int(fields["calls"])
    return stats


def redis_cpu_s(port):
    cpu = redis_info(port, "cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def redis_net(port):
    stats = redis_info(port, "stats")
    return int(stats["total_net_input_bytes"]), int(stats["total_net_output_bytes"])


def make_models(work):
    venv = os.path.join(work, "venv")
    subprocess.run([os.path.join(ROOT, "scripts/pinned-venv.sh"), venv,
                    os.path.join(ROOT, "scripts/tiny-model.requirements.txt")], check=True)
    models = os.path.join(work, "models")
    os.makedirs(models)
    subprocess.run([os.path.join(venv, "bin/python"), os.path.join(ROOT, "scripts/make_tiny_model.py"),
                    os.path.join(models, "tiny.onnx")], check=True)
    return models


def start_redis(work, procs):
    port = free_port()
    procs.append(subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", work], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            redis_info(port, "server")
            return port
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("redis-server did not start")


def tandem_args(args, models, labels, redis_port):
    return ["--model-dir", models, "--fast-model", "tiny.onnx", "--accurate-model", "tiny.onnx", "--labels", labels,
            "--redis-url", f"redis://127.0.0.1:{redis_port}/", "--intra-threads", "1",
            "--max-queue", "1000000", "--max-queue-bytes", "8GiB"]


def run_pairs(args, pairs, models, labels, image, work):
    procs = []
    try:
        redis_port = start_redis(work, procs)
        common = tandem_args(args, models, labels, redis_port)
        bases = []
        for i in range(pairs):
            port = free_port()
            log = open(os.path.join(work, f"serve-{pairs}-{i}.log"), "w")
            procs.append(subprocess.Popen([args.binary, "serve", "--addr", f"127.0.0.1:{port}", *common],
                                          stdout=log, stderr=log))
            bases.append(f"http://127.0.0.1:{port}")
            log = open(os.path.join(work, f"worker-{pairs}-{i}.log"), "w")
            procs.append(subprocess.Popen([args.binary, "worker", *common], stdout=log, stderr=log))
        for base in bases:
            wait_ready(base)
        time.sleep(1)
        per_serve = max(1, args.jobs // pairs)
        before = (commandstats(redis_port), redis_cpu_s(redis_port), redis_net(redis_port))
        started = time.monotonic()
        benches = [subprocess.Popen(
            [args.binary, "bench", "--url", base, "--image", image, "--jobs", str(per_serve),
             "--concurrency", str(args.concurrency), "--poll-interval", "50", "--json"],
            stdout=subprocess.PIPE, text=True) for base in bases]
        reports = [json.loads(b.communicate()[0]) for b in benches]
        wall = time.monotonic() - started
        after = (commandstats(redis_port), redis_cpu_s(redis_port), redis_net(redis_port))
        completed = sum(r["completed"] for r in reports)
        if completed != per_serve * pairs or any(r["failed"] or r["lost"] for r in reports):
            raise RuntimeError(f"{pairs} pairs: not every job completed: {reports}")
        polls = sum(r["polls"] for r in reports)
        calls = {cmd: (after[0].get(cmd, 0) - before[0].get(cmd, 0)) / completed
                 for cmd in after[0] if after[0].get(cmd, 0) != before[0].get(cmd, 0)}
        cpu = after[1] - before[1]
        return {
            "pairs": pairs,
            "jobs": completed,
            "wall_s": round(wall, 2),
            "jobs_per_s": round(completed / wall, 1),
            "redis_cpu_s_per_job_us": round(cpu / completed * 1e6, 1),
            "redis_cpu_share_of_a_core": round(cpu / wall, 3),
            "redis_jobs_per_s_per_core": round(completed / cpu) if cpu > 0 else None,
            "calls_per_job": {cmd: round(n, 2) for cmd, n in sorted(calls.items(), key=lambda kv: -kv[1])},
            "client_polls_per_job": round(polls / completed, 2),
            "bytes_in_per_job": round((after[2][0] - before[2][0]) / completed),
            "bytes_out_per_job": round((after[2][1] - before[2][1]) / completed),
        }
    finally:
        stop_all(list(reversed(procs)))


def queue_memory(args, models, labels, image, work):
    """Redis' memory with `--depth` jobs waiting (no worker), against the images' own bytes."""
    procs = []
    try:
        redis_port = start_redis(work, procs)
        port = free_port()
        log = open(os.path.join(work, "serve-memory.log"), "w")
        procs.append(subprocess.Popen([args.binary, "serve", "--addr", f"127.0.0.1:{port}",
                                       *tandem_args(args, models, labels, redis_port)], stdout=log, stderr=log))
        base = f"http://127.0.0.1:{port}"
        wait_ready(base)
        empty = int(redis_info(redis_port, "memory")["used_memory"])
        # Exactly --depth jobs: posted one by one.
        data = open(image, "rb").read()
        for _ in range(args.depth):
            req = urllib.request.Request(f"{base}/predict", data=data, headers={"content-type": "image/jpeg"})
            with urllib.request.urlopen(req, timeout=30) as r:
                if json.load(r).get("job_id") is None:
                    raise RuntimeError("a job was not queued")
        full = int(redis_info(redis_port, "memory")["used_memory"])
        images = args.depth * len(data)
        return {"depth": args.depth, "image_bytes": len(data), "used_memory_empty": empty,
                "used_memory_at_depth": full, "bytes_per_queued_job": round((full - empty) / args.depth),
                "image_share": round(images / max(1, full - empty), 3)}
    finally:
        stop_all(list(reversed(procs)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary", default=os.path.join(ROOT, "target/release/tandem"))
    parser.add_argument("--shared", default=os.environ.get("TANDEM_SHARED_DIR", os.path.join(ROOT, "..", "shared")))
    parser.add_argument("--image", default=None, help="default: images/sample_01.jpg under --shared")
    parser.add_argument("--pairs", default="1,2,4")
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16, help="submitters per serve")
    parser.add_argument("--depth", type=int, default=2000)
    args = parser.parse_args()
    image = args.image or os.path.join(args.shared, "images", "sample_01.jpg")
    labels = os.path.join(args.shared, "models", "imagenet_classes.txt")
    work = tempfile.mkdtemp(prefix="tandem-ceiling-")
    try:
        models = make_models(work)
        shutil.copy(labels, os.path.join(models, "imagenet_classes.txt"))
        labels = "imagenet_classes.txt"
        report = {"image": os.path.basename(image), "model": "tiny.onnx (both tiers)",
                  "runs": [run_pairs(args, int(p), models, labels, image, work) for p in args.pairs.split(",")],
                  "queue_memory": queue_memory(args, models, labels, image, work)}
        print(json.dumps(report, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
