#!/usr/bin/env python3
"""A/B of two `tandem` binaries on the foreground path, interleaved so the machine's drift hits
both alike:

    python3 scripts/ab.py OLD_TANDEM NEW_TANDEM [--rounds 3] [--duration 6]

Each round starts each binary in turn as `serve` on a private Redis with no worker (so nothing
runs the accurate tier), and measures with the NEW binary's `tandem bench`: /predict p50 at
c=1, req/s at c=8, and /health p99 from a probe process during 64 concurrent 12 MP uploads
(the NEW bench is needed for the probe's `--concurrency 0`). Prints per-round figures
and the medians, and new / old ratios taken round by round. Python standard library only.
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("TANDEM_SHARED_DIR", os.path.join(ROOT, "..", "shared"))
MODELS = os.path.join(SHARED, "models")
IMAGE = os.path.join(SHARED, "images", "sample_01.jpg")
HUGE = os.path.join(SHARED, "images", "large", "photo_4000x3000.jpg")
MODEL_ARGS = ["--model-dir", MODELS, "--accurate-model", "resnet50-untrained.onnx"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url, proc):
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("serve exited")
        try:
            with urllib.request.urlopen(url + "/health/ready", timeout=2) as r:
                if r.status == 200:
                    return
        except Exception:
            time.sleep(0.1)
    raise RuntimeError("serve not ready")


def bench(tandem, *args):
    out = subprocess.run([tandem, "bench", "--json", *args], capture_output=True, text=True)
    if not out.stdout.strip():
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout)


def measure(binary, bench_bin, redis_url, duration):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    prefix = f"ab-{time.time_ns()}"
    proc = subprocess.Popen([binary, "serve", "--addr", f"127.0.0.1:{port}", *MODEL_ARGS, "--redis-url", redis_url,
                             "--redis-prefix", prefix, "--max-queue", "1000000"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "TANDEM_LOG": "warn"})
    try:
        wait_ready(url, proc)
        d = str(duration)
        c1 = bench(bench_bin, "--url", url, "--image", IMAGE, "--concurrency", "1", "--duration", d)
        c8 = bench(bench_bin, "--url", url, "--image", IMAGE, "--concurrency", "8", "--duration", d)
        # The upload load at nice 19 and the /health probe in a process of its own (see
        # scripts/perf.py, target 8).
        load = subprocess.Popen(["nice", "-n", "19", bench_bin, "bench", "--json", "--url", url, "--image", HUGE,
                                 "--concurrency", "64", "--duration", str(duration + 2), "--warmup", "1"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.5)
        probe = bench(bench_bin, "--url", url, "--image", IMAGE, "--concurrency", "0", "--mix", "health:1",
                      "--duration", d, "--warmup", "0")
        up = json.loads(load.communicate()[0])
        return {
            "c1_p50_ms": c1["routes"]["predict"]["latency"]["p50_ms"],
            "c8_rps": c8["routes"]["predict"]["throughput_rps"],
            "uploads_health_p99_ms": probe["routes"]["health"]["latency"]["p99_ms"],
            "uploads_health_max_ms": probe["routes"]["health"]["latency"]["max_ms"],
            "uploads_predict_rps": up["routes"]["predict"]["throughput_rps"],
        }
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=6.0)
    args = ap.parse_args()
    port = free_port()
    redis_dir = tempfile.mkdtemp()
    redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", redis_dir],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    redis_url = f"redis://127.0.0.1:{port}/"
    rows = {"old": [], "new": []}
    try:
        for i in range(args.rounds):
            # Alternate which goes first, so neither always meets the warmer machine.
            order = ("old", "new") if i % 2 == 0 else ("new", "old")
            for side in order:
                r = measure(getattr(args, side), args.new, redis_url, args.duration)
                rows[side].append(r)
                print(f"round {i + 1} {side}: {json.dumps(r)}", file=sys.stderr, flush=True)
    finally:
        redis.kill()
    keys = rows["old"][0].keys()
    print("| figure | old (median) | new (median) | new / old (median of rounds) |")
    print("|---|---|---|---|")
    for key in keys:
        old = statistics.median(r[key] for r in rows["old"])
        new = statistics.median(r[key] for r in rows["new"])
        ratio = statistics.median(n[key] / o[key] for o, n in zip(rows["old"], rows["new"]) if o[key])
        print(f"| {key} | {old:.2f} | {new:.2f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
