#!/usr/bin/env python3
"""What the result cache and the cascade cost on `POST /predict`, and the embedded cache's bound.

    python3 scripts/refine_bench.py [--binary target/release/tandem] [--rounds 5] [--seconds 4]
                                     [--fill 3000] [--entries 1000]

Latency: a private redis-server and three `tandem serve` on it, all on 127.0.0.1, none with a
worker (the accurate tier takes no CPU; jobs wait in Redis): `off` (as before), `cache`
(`--cache-ttl 600`: the image is hashed and the commit looks its result up and for a run to
share) and `cache+cascade` (`--cache-ttl 600 --refine-below 0.7`: sample_01's fast score, about
0.80, makes its answer final, so its job is stored completed). `tandem bench --concurrency 1
--unique` sends each request different bytes (a JPEG comment with a counter), so no cache ever
hits: what is measured is the price of the cache, not its gain. Slices are interleaved, round by
round; the report gives each mode's p50 per slice, their median, and the median of the per-round
differences from `off` (the machine's drift cancels).

Memory: an embedded `serve --cache-ttl 600 --cache-entries N --result-ttl 1` whose accurate tier is
MobileNet v2 (cheap, so filling is quick) takes `--fill` different images (`tandem bench --jobs
--unique`, each job followed to completion, so both tiers' results are cached) in four steps; VmRSS
after each step shows the memory stop growing once the caches are full. The same again with a
bound the fill never reaches gives what an entry costs. Python's standard library only.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

# The same process helpers as the watchers bench beside it.
from watchers_bench import ROOT, free_port, rss_kib, stop_all, wait_ready

MODES = {
    "off": [],
    "cache": ["--cache-ttl", "600"],
    "cache+cascade": ["--cache-ttl", "600", "--refine-below", "0.7"],
}


def bench(binary, base, image, extra):
    out = subprocess.run([binary, "bench", "--url", base, "--image", image, "--json", "--unique", *extra],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def latency(args, image, models, work, procs):
    redis_port = free_port()
    procs.append(subprocess.Popen(
        ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", work], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    bases = {}
    for mode, flags in MODES.items():
        port = free_port()
        log = open(os.path.join(work, f"serve-{mode}.log"), "w")
        procs.append(subprocess.Popen(
            [args.binary, "serve", "--addr", f"127.0.0.1:{port}", "--model-dir", models,
             "--accurate-model", "efficientnet_lite2.onnx", "--redis-url", f"redis://127.0.0.1:{redis_port}/",
             "--redis-prefix", f"bench-{mode}", "--max-queue", "1000000", "--max-queue-bytes", "4GiB", *flags],
            stdout=log, stderr=log))
        bases[mode] = f"http://127.0.0.1:{port}"
    for base in bases.values():
        wait_ready(base)
    p50s = {mode: [] for mode in MODES}
    for _ in range(args.rounds):
        for mode, base in bases.items():
            report = bench(args.binary, base, image,
                           ["--concurrency", "1", "--duration", str(args.seconds), "--warmup", "1"])
            route = report["routes"]["predict"]
            if route["errors"] or route.get("not_queued"):
                raise RuntimeError(f"{mode}: {route}")
            p50s[mode].append(route["latency"]["p50_ms"])
    result = {}
    for mode, values in p50s.items():
        entry = {"p50_ms_per_round": values, "p50_ms_median": round(statistics.median(values), 3)}
        if mode != "off":
            entry["minus_off_ms_median"] = round(statistics.median(
                [v - o for v, o in zip(values, p50s["off"])]), 3)
        result[mode] = entry
    return result


def memory(args, image, models, work, procs, entries):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(os.path.join(work, f"serve-memory-{entries}.log"), "w")
    # `--result-ttl 1`: finished job records go within a second, so what stays is the caches.
    serve = subprocess.Popen(
        [args.binary, "serve", "--addr", f"127.0.0.1:{port}", "--model-dir", models,
         "--accurate-model", "mobilenet_v2.onnx", "--cache-ttl", "600", "--cache-entries", str(entries),
         "--result-ttl", "1", "--max-queue", "100000"], stdout=log, stderr=log)
    procs.append(serve)
    wait_ready(base)
    steps = [{"images": 0, "rss_kib": rss_kib(serve.pid)}]
    step = max(1, args.fill // 4)
    sent = 0
    for _ in range(4):
        bench(args.binary, base, image, ["--jobs", str(step), "--concurrency", "4"])
        sent += step
        steps.append({"images": sent, "rss_kib": rss_kib(serve.pid)})
    serve.terminate()
    return {"cache_entries": entries, "steps": steps}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary", default=os.path.join(ROOT, "target/release/tandem"))
    parser.add_argument("--shared", default=os.environ.get("TANDEM_SHARED_DIR", os.path.join(ROOT, "..", "shared")))
    parser.add_argument("--image", default=None, help="default: images/sample_01.jpg under --shared")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--fill", type=int, default=3000, help="different images sent to fill the cache")
    parser.add_argument("--entries", type=int, default=1000, help="--cache-entries of the memory run")
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    image = args.image or os.path.join(args.shared, "images", "sample_01.jpg")
    models = os.path.join(args.shared, "models")

    work = tempfile.mkdtemp(prefix="tandem-refine-bench-")
    procs = []
    try:
        report = {"image": os.path.basename(image), "rounds": args.rounds, "seconds_per_slice": args.seconds,
                  "concurrency": 1, "latency": latency(args, image, models, work, procs)}
        for p in procs:
            p.terminate()
        if not args.skip_memory:
            # The bound, and for comparison a bound the fill never reaches.
            report["memory"] = [memory(args, image, models, work, procs, entries)
                                for entries in (args.entries, 1_000_000)]
        print(json.dumps(report, indent=2))
    finally:
        stop_all(list(reversed(procs)))


if __name__ == "__main__":
    sys.exit(main())
