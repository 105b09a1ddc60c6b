#!/usr/bin/env python3
"""Measures Tandem's performance targets (docs/PERFORMANCE.md) with `tandem bench`.

    python3 scripts/perf.py [--rounds 3] [--duration 8] [--out target/perf]

Release build, `tandem` started as a user starts it, the shared models: MobileNet v2 (fast) and
resnet50-untrained.onnx (ResNet50's compute) as the accurate tier, a 256-px JPEG. Every ratio is
taken inside one round; the table reports the median over rounds. Needs redis-server on PATH
(a private one is started on a free port). Python standard library only.
"""

import argparse
import json
import os
import signal
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
LARGE = os.path.join(SHARED, "images", "large", "photo_1600x1200.jpg")
HUGE = os.path.join(SHARED, "images", "large", "photo_4000x3000.jpg")  # 12 MP, 4.4 MB
TANDEM = os.path.join(ROOT, "target", "release", "tandem")
MODEL_ARGS = ["--model-dir", MODELS, "--accurate-model", "resnet50-untrained.onnx"]
PACED_RATE = 10  # req/s of the light foreground load used for target 4
T1_SLICES = 4  # target 1: raw and HTTP c=1 runs alternate this many times per round
T4_SLICES = 3  # target 4: idle, busy and accurate-alone runs alternate this many times per round
CORES = os.cpu_count() or 1


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis():
    """A private redis-server without persistence on a free port: (process, URL)."""
    port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", tempfile.mkdtemp()],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return redis, f"redis://127.0.0.1:{port}/"


def start_bench(*args, tandem=TANDEM):
    return subprocess.Popen([tandem, "bench", "--json", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finish_bench(p, args):
    out, err = p.communicate()
    if not out.strip():
        raise RuntimeError(f"tandem bench {' '.join(args)} failed: {err[-2000:]}")
    return json.loads(out)


def bench(*args, tandem=TANDEM):
    return finish_bench(start_bench(*args, tandem=tandem), args)


def get(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def counters(metrics_url, *names):
    """For each name, the sum of the samples whose line starts with it, from one scrape."""
    totals = [0.0] * len(names)
    for line in get(metrics_url).splitlines():
        for i, name in enumerate(names):
            if line.startswith(name):
                totals[i] += float(line.rsplit(" ", 1)[1])
    return totals


def counter(metrics_url, name):
    return counters(metrics_url, name)[0]


def cpu_snapshot(serve_pid, other_pids):
    """Jiffies: the whole machine (all of /proc/stat's first line, idle included), the server's
    inference threads (named infer-*), its other threads, and each other process."""
    with open("/proc/stat") as f:
        machine = sum(int(x) for x in f.readline().split()[1:8])
    infer = rest = 0
    for tid in os.listdir(f"/proc/{serve_pid}/task"):
        try:
            with open(f"/proc/{serve_pid}/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:
            continue  # the thread ended
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        used = int(fields[11]) + int(fields[12])  # utime + stime
        if name.startswith("infer-"):
            infer += used
        else:
            rest += used
    others = []
    for pid in other_pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        others.append(int(fields[11]) + int(fields[12]))
    return machine, infer, rest, others


def bench_with_cpu(serve_pid, redis_pid, duration, *args):
    """`tandem bench --json ARGS`, and where the machine's CPU went during its measured part:
    shares of the machine for the server's inference threads, its other threads (HTTP, decoding,
    Redis client), redis-server and the load generator; the rest is the kernel's work outside
    those (interrupts, softirqs) and everything else on the machine."""
    p = start_bench(*args)
    time.sleep(1.5)  # past the 1 s warm-up
    before = cpu_snapshot(serve_pid, [redis_pid, p.pid])
    time.sleep(max(1.0, duration - 2.0))
    after = cpu_snapshot(serve_pid, [redis_pid, p.pid])
    report = finish_bench(p, args)
    machine = after[0] - before[0]
    shares = {
        "infer": (after[1] - before[1]) / machine,
        "serve_other": (after[2] - before[2]) / machine,
        "redis": (after[3][0] - before[3][0]) / machine,
        "load_generator": (after[3][1] - before[3][1]) / machine,
    }
    return report, shares


def rss_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


class Proc:
    def __init__(self, args, port=None):
        self.port = port
        self.p = subprocess.Popen([TANDEM, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  env={**os.environ, "TANDEM_LOG": "warn"})
        if port:
            deadline = time.time() + 60
            while time.time() < deadline:
                try:
                    if "ready" in get(f"http://127.0.0.1:{port}/health/ready"):
                        return
                except Exception:
                    time.sleep(0.1)
            raise RuntimeError(f"tandem {args[0]} did not become ready")
        time.sleep(2)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def pause(self):
        self.p.send_signal(signal.SIGSTOP)

    def resume(self):
        self.p.send_signal(signal.SIGCONT)

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        try:
            self.p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.p.kill()


def serve(*extra):
    port = free_port()
    return Proc(["serve", "--addr", f"127.0.0.1:{port}", *MODEL_ARGS, *extra], port)


def p50(report, route="predict"):
    return report["routes"][route]["latency"]["p50_ms"]


def upload_probe(url, duration, tandem=TANDEM):
    """/health latency from a probe process while 64 connections upload 12 MP photos (the
    uploads at nice 19, so the load generator does not outrank the server it loads)."""
    uploads = subprocess.Popen(["nice", "-n", "19", tandem, "bench", "--json", "--url", url, "--image", HUGE,
                                "--concurrency", "64", "--duration", str(duration + 2), "--warmup", "1"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    probe = bench("--url", url, "--image", IMAGE, "--concurrency", "0", "--mix", "health:1", "--duration",
                  str(duration), "--warmup", "0", tandem=tandem)
    loaded = finish_bench(uploads, ["uploads"])
    health = probe["routes"]["health"]["latency"]
    errors = loaded["routes"]["predict"]["errors_by_status"]
    return {
        "uploads_health_p50_ms": health["p50_ms"],
        "uploads_health_p99_ms": health["p99_ms"],
        "uploads_health_max_ms": health["max_ms"],
        "uploads_predict_rps": loaded["routes"]["predict"]["throughput_rps"],
        "uploads_predict_5xx": sum(n for s, n in errors.items() if s.startswith("5")),
    }


def overhead_slices(url, duration):
    """Target 1 in alternating slices: raw ORT batch-1 p50, then /predict p50 at c=1 on the
    (otherwise idle) server, T1_SLICES times. Each slice's difference is taken against the raw
    run right before it, so the machine's drift in speed cancels; returns the median difference,
    the median c=1 p50 and the median raw p50."""
    part = str(max(1.0, duration / T1_SLICES))
    diffs, http, raw = [], [], []
    for _ in range(T1_SLICES):
        b1 = bench("--raw", "--image", IMAGE, *MODEL_ARGS, "--tier", "fast", "--batch", "1", "--lanes", "1",
                   "--duration", part, "--spinning", "always")["batches"][0]["p50_ms"]
        c1 = p50(bench("--url", url, "--image", IMAGE, "--concurrency", "1", "--duration", part))
        diffs.append(c1 - b1)
        http.append(c1)
        raw.append(b1)
    return statistics.median(diffs), statistics.median(http), statistics.median(raw)


def isolation_slices(srv, idle_srv, background, metrics, duration):
    """Target 4 in T4_SLICES alternating slices, so the machine's drift (this VM's idle cores
    sometimes wake slowly) hits both sides alike: a paced load on the idle server with the
    background process stopped (SIGSTOP); the same load on `srv` with the accurate tier
    working through its backlog; then the accurate tier alone. Per slice: paced p50 busy / idle
    and accurate jobs/s busy / alone (from `tandem_jobs_finished_total` at `metrics`)."""
    paced = ("--image", IMAGE, "--concurrency", "1", "--rate", str(PACED_RATE), "--duration", str(duration),
             "--warmup", "0")
    out = {k: [] for k in ("paced_idle_p50_ms", "paced_busy_p50_ms", "acc_alone_jps", "acc_busy_jps",
                           "p50_ratio", "jps_ratio")}
    for _ in range(T4_SLICES):
        background.pause()
        time.sleep(0.5)
        idle = p50(bench("--url", idle_srv.url, *paced))
        background.resume()
        time.sleep(1.0)  # the accurate tier back at full speed
        a0, t0 = counter(metrics, "tandem_jobs_finished_total"), time.time()
        busy = p50(bench("--url", srv.url, *paced))
        a1, t1 = counter(metrics, "tandem_jobs_finished_total"), time.time()
        time.sleep(duration)
        a2, t2 = counter(metrics, "tandem_jobs_finished_total"), time.time()
        busy_jps, alone_jps = (a1 - a0) / (t1 - t0), (a2 - a1) / (t2 - t1)
        for key, value in (("paced_idle_p50_ms", idle), ("paced_busy_p50_ms", busy), ("acc_alone_jps", alone_jps),
                           ("acc_busy_jps", busy_jps), ("p50_ratio", busy / idle), ("jps_ratio", busy_jps / alone_jps)):
            out[key].append(value)
    return out


def one_round(redis_url, redis_pid, duration, round_no):
    r = {}
    d = str(duration)
    # The raw baseline is ORT at its fastest: spinning always (serve spins only inside a run that
    # has the model to itself, see --fast-spin), one session on both cores and two one-thread
    # sessions side by side (as serve's lanes run under load), the best of every batch size.
    raw_fast = bench("--raw", "--image", IMAGE, *MODEL_ARGS, "--tier", "fast", "--batch", "1,2,4,8",
                     "--lanes", "1,2", "--duration", d, "--spinning", "always")
    raw_acc = bench("--raw", "--image", IMAGE, *MODEL_ARGS, "--tier", "accurate", "--batch", "1,2,4,8",
                    "--lanes", "1,2", "--duration", d)
    r["raw_fast_best_ips"] = raw_fast["best"]["images_per_s"]
    r["raw_fast_best_batch"] = raw_fast["best"]["batch"]
    r["raw_fast_best_lanes"] = raw_fast["best"]["lanes"]
    r["raw_fast_best_1lane_ips"] = max(b["images_per_s"] for b in raw_fast["batches"] if b["lanes"] == 1)
    r["raw_acc_best_ips"] = raw_acc["best"]["images_per_s"]
    r["raw_acc_best_batch"] = raw_acc["best"]["batch"]
    r["raw_acc_best_lanes"] = raw_acc["best"]["lanes"]
    r["raw_fast_by_batch"] = {f"{b['lanes']}x{b['batch']}": b["images_per_s"] for b in raw_fast["batches"]}
    # Preprocessing (decode, crop, normalize) is work the server must do per request and raw ORT
    # does not: with every core busy, images/s can be at most cores / (CPU per image in raw +
    # preprocessing), even if HTTP, Redis and the load generator cost nothing.
    r["preprocess_p50_ms"] = raw_fast["preprocess"]["p50_ms"]
    r["preprocess_ceiling_ips"] = CORES / (CORES / r["raw_fast_best_ips"] + r["preprocess_p50_ms"] / 1e3)
    r["raw_acc_by_batch"] = {f"{b['lanes']}x{b['batch']}": b["images_per_s"] for b in raw_acc["batches"]}

    # Foreground only: Redis mode with no worker, so nothing runs the accurate tier.
    prefix = f"perf-{round_no}-{time.time_ns()}"
    fg = serve("--redis-url", redis_url, "--redis-prefix", prefix, "--max-queue", "1000000")
    try:
        r["overhead_ms"], r["c1_p50_ms"], r["raw_fast_b1_ms"] = overhead_slices(fg.url, duration)
        large = bench("--url", fg.url, "--image", LARGE, "--concurrency", "1", "--duration", d)
        r["large_p50_ms"] = p50(large)
        metrics_url = fg.url + "/metrics"
        preprocess = ("tandem_preprocess_duration_seconds_sum", "tandem_preprocess_duration_seconds_count")
        pre = counters(metrics_url, *preprocess)
        c8, shares = bench_with_cpu(fg.p.pid, redis_pid, duration, "--url", fg.url, "--image", IMAGE,
                                    "--concurrency", "8", "--duration", d)
        r["c8_rps"] = c8["routes"]["predict"]["throughput_rps"]
        post = counters(metrics_url, *preprocess)
        r["c8_preprocess_mean_ms"] = (post[0] - pre[0]) / max(1.0, post[1] - pre[1]) * 1e3
        for part, share in shares.items():
            r[f"c8_cpu_{part}"] = share
        # Inference CPU per request in the server against raw's CPU per image (all cores busy).
        r["c8_infer_cpu_ms"] = shares["infer"] * CORES / r["c8_rps"] * 1e3
        r["raw_fast_cpu_ms"] = CORES / r["raw_fast_best_ips"] * 1e3
        steady = rss_kib(fg.p.pid, "VmRSS:")
        mixed = bench("--url", fg.url, "--image", IMAGE, "--concurrency", "8", "--duration", d,
                      "--mix", "health:2")
        r["health_p99_ms"] = mixed["routes"]["health"]["latency"]["p99_ms"]
        overload = bench("--url", fg.url, "--image", IMAGE, "--concurrency", "64", "--duration", d)
        r["overload_429"] = overload["routes"]["predict"]["errors_by_status"].get("429", 0)
        r["overload_5xx"] = sum(n for s, n in overload["routes"]["predict"]["errors_by_status"].items()
                                if s.startswith("5"))
        r["rss_steady_mib"] = steady / 1024
        r["rss_peak_mib"] = rss_kib(fg.p.pid, "VmHWM:") / 1024
        # Target 8: 64 clients uploading 12 MP photos back to back while /health is asked. The
        # probe is a process of its own (`--concurrency 0 --mix health:1`) and the upload load
        # runs at nice 19: in one process, or at the probe's priority, the load generator's 64
        # busy threads delay the probe's own requests on 2 cores, which is not the server.
        r.update(upload_probe(fg.url, duration))
    finally:
        fg.stop()

    # Isolation, in one process (embedded) and in two (serve + worker on Redis), in slices.
    for mode in ("embedded", "processes"):
        prefix = f"perf-iso-{round_no}-{time.time_ns()}"
        worker = idle_srv = None
        if mode == "embedded":
            srv = serve("--max-queue", "1000000")
            metrics = f"{srv.url}/metrics"
            # Target 1 as `tandem serve` starts with no options: embedded queue, and the accurate
            # tier (at idle priority) working through the jobs the c=1 load queues.
            r["embedded_overhead_ms"], r["embedded_c1_p50_ms"], _ = overhead_slices(srv.url, duration)
            # The idle value: a second embedded server with no backlog (its accurate tier only
            # does the paced requests' own jobs), measured while the busy one is stopped.
            idle_srv = serve("--max-queue", "1000000")
            background = srv
        else:
            redis = ["--redis-url", redis_url, "--redis-prefix", prefix, "--max-queue", "1000000"]
            srv = serve(*redis)
            mport = free_port()
            worker = Proc(["worker", *MODEL_ARGS, *redis, "--metrics-addr", f"127.0.0.1:{mport}"])
            metrics = f"http://127.0.0.1:{mport}/metrics"
            # The idle value: the same server, with the worker stopped.
            background = worker
        try:
            # A backlog for the accurate tier, enough for every slice below.
            bench("--url", srv.url, "--image", IMAGE, "--concurrency", "4", "--duration", str(max(4.0, duration)),
                  "--warmup", "0")
            slices = isolation_slices(srv, idle_srv or srv, background, metrics, duration)
            for key, values in slices.items():
                r[f"{mode}_{key}"] = statistics.median(values)
        finally:
            background.resume()
            srv.stop()
            for other in (worker, idle_srv):
                if other:
                    other.stop()
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--out", default=os.path.join(ROOT, "target", "perf"))
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    os.makedirs(args.out, exist_ok=True)

    redis, redis_url = start_redis()
    rounds = []
    try:
        for i in range(args.rounds):
            r = one_round(redis_url, redis.pid, args.duration, i)
            rounds.append(r)
            print(f"round {i + 1}: {json.dumps(r)}", file=sys.stderr, flush=True)
    finally:
        redis.kill()
    with open(os.path.join(args.out, "rounds.json"), "w") as f:
        json.dump(rounds, f, indent=1)

    def med(f):
        return statistics.median(f(r) for r in rounds)

    rows = [
        ("1 overhead: /predict p50 at c=1 - raw ORT batch-1 p50 (Redis, no worker)", med(lambda r: r["overhead_ms"]),
         "ms", "<= 1.0", lambda v: v <= 1.0),
        ("1 overhead, embedded (the default start; accurate tier working meanwhile)",
         med(lambda r: r["embedded_overhead_ms"]), "ms", "<= 1.0", lambda v: v <= 1.0),
        ("2 throughput: c=8 req/s / raw ORT best img/s (any lanes, any batch)",
         med(lambda r: r["c8_rps"] / r["raw_fast_best_ips"]), "x", ">= 0.90", lambda v: v >= 0.90),
        ("2' the same against one session on both cores (raw --lanes 1)",
         med(lambda r: r["c8_rps"] / r["raw_fast_best_1lane_ips"]), "x", ">= 0.90", lambda v: v >= 0.90),
        ("2a (not a target) share of the machine's CPU the fast model's threads got at c=8",
         med(lambda r: r["c8_cpu_infer"]), "x", "-", None),
        ("2b (not a target) inference efficiency: raw CPU per image / the server's inference CPU per request",
         med(lambda r: r["raw_fast_cpu_ms"] / r["c8_infer_cpu_ms"]), "x", "-", None),
        ("2c (not a target) the rest of the CPU at c=8: serve's other threads (HTTP, decoding, Redis client)",
         med(lambda r: r["c8_cpu_serve_other"]), "x", "-", None),
        ("2d (not a target) ... redis-server", med(lambda r: r["c8_cpu_redis"]), "x", "-", None),
        ("2e (not a target) ... the load generator", med(lambda r: r["c8_cpu_load_generator"]), "x", "-", None),
        ("2f (not a target) ... everything else (interrupts, softirqs, other processes, idle)",
         med(lambda r: 1 - r["c8_cpu_infer"] - r["c8_cpu_serve_other"] - r["c8_cpu_redis"]
             - r["c8_cpu_load_generator"]), "x", "-", None),
        ("2g (not a target) the ceiling preprocessing alone sets, over raw best: cores / (raw CPU per image +"
         " preprocess p50)", med(lambda r: r["preprocess_ceiling_ips"] / r["raw_fast_best_ips"]), "x", "-", None),
        ("3 event loop: /health p99 with /predict saturated", med(lambda r: r["health_p99_ms"]), "ms", "<= 5",
         lambda v: v <= 5),
        ("4a isolation (embedded): paced p50 busy / idle",
         med(lambda r: r["embedded_p50_ratio"]), "x", "<= 1.25", lambda v: v <= 1.25),
        ("4b isolation (embedded): accurate jobs/s busy / alone",
         med(lambda r: r["embedded_jps_ratio"]), "x", ">= 0.70", lambda v: v >= 0.70),
        ("4c isolation (processes): paced p50 busy / idle",
         med(lambda r: r["processes_p50_ratio"]), "x", "<= 1.25", lambda v: v <= 1.25),
        ("4d isolation (processes): accurate jobs/s busy / alone",
         med(lambda r: r["processes_jps_ratio"]), "x", ">= 0.70",
         lambda v: v >= 0.70),
        ("5 worker jobs/s / raw ORT accurate best img/s",
         med(lambda r: r["processes_acc_alone_jps"] / r["raw_acc_best_ips"]), "x", ">= 0.90", lambda v: v >= 0.90),
        ("6 large input: 1600x1200 p50 - 256-px p50", med(lambda r: r["large_p50_ms"] - r["c1_p50_ms"]), "ms",
         "<= 15", lambda v: v <= 15),
        ("7 memory: peak RSS at c=64 / steady RSS", med(lambda r: r["rss_peak_mib"] / r["rss_steady_mib"]), "x",
         "<= 1.5", lambda v: v <= 1.5),
        ("8 event loop: /health p99 during 64 concurrent 12 MP uploads", med(lambda r: r["uploads_health_p99_ms"]),
         "ms", "<= 5", lambda v: v <= 5),
    ]
    print(f"| target | median of {len(rounds)} rounds | goal | met |")
    print("|---|---|---|---|")
    for name, value, unit, goal, ok in rows:
        met = "-" if ok is None else ("yes" if ok(value) else "NO")
        print(f"| {name} | {value:.2f} {unit} | {goal} | {met} |")
    print()
    print("| figure | median |")
    print("|---|---|")
    for key in rounds[0]:
        if isinstance(rounds[0][key], (int, float)):
            print(f"| {key} | {med(lambda r: r[key]):.2f} |")
    for key in ("raw_fast_by_batch", "raw_acc_by_batch"):
        sizes = rounds[0][key].keys()
        print(f"| {key} (img/s, lanes x batch) | "
              + ", ".join(f"{b}: {statistics.median(r[key][b] for r in rounds):.1f}" for b in sizes) + " |")


if __name__ == "__main__":
    main()
