#!/usr/bin/env python3
"""What the Open Inference Protocol costs over `POST /predict`, on the same image, at c=1.

    python3 scripts/v2_bench.py [--binary target/release/tandem] [--rounds 3] [--seconds 4]

Starts a private redis-server and one `tandem serve` on it (no worker: the accurate tier does
not compete for the CPU; `--max-queue` keeps Redis small), all on 127.0.0.1, then runs
`tandem bench --concurrency 1` in interleaved slices, each round: `POST /predict` (raw JPEG),
`--v2 <fast model>` (the fast model alone: binary BYTES in, top-5 classification out) and
`--v2 tandem` (the same work as `POST /predict`, the fast answer and a job, through the
protocol). Prints one JSON object: per mode the p50 of each slice, their median, and the
median of the per-round differences from `POST /predict` (the machine's drift cancels).
Python's standard library only.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

# The same process helpers as the watchers bench beside it.
from watchers_bench import ROOT, free_port, stop_all, wait_ready


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary", default=os.path.join(ROOT, "target/release/tandem"))
    parser.add_argument("--shared", default=os.environ.get("TANDEM_SHARED_DIR", os.path.join(ROOT, "..", "shared")))
    parser.add_argument("--image", default=None, help="default: images/sample_01.jpg under --shared")
    parser.add_argument("--fast-model", default="mobilenet_v2")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    image = args.image or os.path.join(args.shared, "images", "sample_01.jpg")
    models = os.path.join(args.shared, "models")

    work = tempfile.mkdtemp(prefix="tandem-v2-bench-")
    procs = []
    try:
        redis_port = free_port()
        procs.append(subprocess.Popen(
            ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", work], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        log = open(os.path.join(work, "serve.log"), "w")
        procs.append(subprocess.Popen(
            [args.binary, "serve", "--addr", f"127.0.0.1:{port}", "--model-dir", models,
             "--accurate-model", "efficientnet_lite2.onnx", "--redis-url", f"redis://127.0.0.1:{redis_port}/",
             "--max-queue", "200"], stdout=log, stderr=log))
        wait_ready(base)

        modes = {"predict": [], f"v2 {args.fast_model}": [], "v2 tandem": []}
        flags = {"predict": [], f"v2 {args.fast_model}": ["--v2", args.fast_model], "v2 tandem": ["--v2", "tandem"]}
        for _ in range(args.rounds):
            for mode in modes:
                out = subprocess.run(
                    [args.binary, "bench", "--url", base, "--image", image, "--concurrency", "1",
                     "--duration", str(args.seconds), "--warmup", "1", "--json", *flags[mode]],
                    check=True, capture_output=True, text=True)
                route = json.loads(out.stdout)["routes"]["predict"]
                if route["errors"]:
                    raise RuntimeError(f"{mode}: {route['errors']} errors: {route}")
                modes[mode].append(route["latency"]["p50_ms"])
        report = {"image": os.path.basename(image), "rounds": args.rounds, "seconds_per_slice": args.seconds,
                  "concurrency": 1, "modes": {}}
        for mode, p50s in modes.items():
            entry = {"p50_ms_per_round": p50s, "p50_ms_median": round(statistics.median(p50s), 3)}
            if mode != "predict":
                diffs = [m - p for m, p in zip(p50s, modes["predict"])]
                entry["minus_predict_ms_median"] = round(statistics.median(diffs), 3)
            report["modes"][mode] = entry
        print(json.dumps(report, indent=2))
    finally:
        stop_all(list(reversed(procs)))


if __name__ == "__main__":
    sys.exit(main())
