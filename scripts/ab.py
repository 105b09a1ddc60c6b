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
import statistics
import subprocess
import sys
import time
import urllib.request

# The helpers and the upload probe of scripts/perf.py (beside this file), for the same figures.
from perf import IMAGE, MODEL_ARGS, bench, free_port, start_redis, upload_probe


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
        c1 = bench("--url", url, "--image", IMAGE, "--concurrency", "1", "--duration", d, tandem=bench_bin)
        c8 = bench("--url", url, "--image", IMAGE, "--concurrency", "8", "--duration", d, tandem=bench_bin)
        uploads = upload_probe(url, duration, tandem=bench_bin)
        return {
            "c1_p50_ms": c1["routes"]["predict"]["latency"]["p50_ms"],
            "c8_rps": c8["routes"]["predict"]["throughput_rps"],
            **{k: uploads[k] for k in ("uploads_health_p99_ms", "uploads_health_max_ms", "uploads_predict_rps")},
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
    redis, redis_url = start_redis()
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
