#!/usr/bin/env python3
"""Redis failover under load, with real redis-server and redis-sentinel processes.

    python3 scripts/failover_test.py [--binary target/debug/tandem] [--seconds 16]

On 127.0.0.1 (free ports): a Redis primary, its replica, three sentinels (quorum 2,
`down-after-milliseconds` 1000), two `tandem serve` and two `tandem worker`s, all given
`--redis-url redis+sentinel://...` (never the primary's address). Four clients post photos for
`--seconds`; a few seconds in, the primary is killed (SIGKILL). The sentinels promote the replica;
`serve` and the workers must follow it without a restart. Then the old primary is started again
(empty) and must come back as a replica of the new one.

Checked: every `POST /predict` is answered 200 with the fast result throughout (with
`"job_id": null` and `async_error` while there is no primary, never before the kill); the plain
`serve` hands out job ids again within 30 s of the promotion (the load goes on until it does); every job id given out either completes or is gone (404), none is
stuck or failed; a job that is gone was acknowledged less than a second before the kill (Redis
replicates asynchronously, so only the last moment's writes can be lost); jobs posted after the
failover all complete, on the same worker processes. Measured and printed (JSON at the end):
the time to promotion and to job ids again, what the failover lost, and what `WAIT 1` after each
write (acknowledgement by the replica) costs on this link. Python's standard library only.
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

from watchers_bench import ROOT, free_port, stop_all

SERVICE = "tandem-primary"


def say(text):
    print(f"failover-test: {text}", flush=True)


def http(method, url, body=None, headers=None, timeout=30):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, OSError) as e:
        return 0, str(e).encode()


def wait_until(what, check, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise RuntimeError(f"{what}: not within {timeout} s")


def redis_cli(port, *args):
    out = subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=10)
    return out.stdout.strip()


class Resp:
    """A bare RESP connection, to time commands without a client library in the way."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""

    def send(self, *commands):
        out = b""
        for command in commands:
            out += b"*%d\r\n" % len(command)
            for part in command:
                part = part if isinstance(part, bytes) else str(part).encode()
                out += b"$%d\r\n%s\r\n" % (len(part), part)
        self.sock.sendall(out)
        return [self.reply() for _ in commands]

    def line(self):
        while b"\r\n" not in self.buf:
            self.buf += self.sock.recv(65536)
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def reply(self):
        line = self.line()
        kind, rest = line[:1], line[1:]
        if kind == b"$":
            size = int(rest)
            while len(self.buf) < size + 2:
                self.buf += self.sock.recv(65536)
            data, self.buf = self.buf[:size], self.buf[size + 2:]
            return data
        if kind == b"-":
            raise RuntimeError(rest.decode())
        return int(rest) if kind == b":" else rest


def wait_cost(port, image, rounds):
    """Median µs of a `SET` of the image alone, and of the same `SET` with `WAIT 1 1000` behind
    it in one round trip (the replica's acknowledgement), interleaved."""
    conn = Resp(port)
    plain, waited, acked = [], [], []
    for i in range(rounds):
        started = time.perf_counter()
        conn.send(("SET", "failover-test:wait", image))
        plain.append((time.perf_counter() - started) * 1e6)
        started = time.perf_counter()
        _, replicas = conn.send(("SET", "failover-test:wait", image), ("WAIT", "1", "1000"))
        waited.append((time.perf_counter() - started) * 1e6)
        acked.append(replicas)
    conn.send(("DEL", "failover-test:wait"))
    return {"set_us": round(statistics.median(plain), 1), "set_wait_us": round(statistics.median(waited), 1),
            "wait_cost_us": round(statistics.median(w - p for w, p in zip(waited, plain)), 1),
            "acknowledged_by_one": sum(1 for a in acked if a >= 1), "rounds": rounds}


def post(base, photo):
    status, body = http("POST", f"{base}/predict", photo, {"content-type": "image/jpeg"})
    if status != 200:
        raise RuntimeError(f"POST {base}/predict: {status} {body[:200]!r}")
    return json.loads(body)


def acked_latency(base, acked, photo, posts):
    """p50 of POST /predict at concurrency 1 without and with --redis-wait-replicas 1, in
    alternating slices of 20, and the median of the slices' differences."""
    times = {base: [], acked: []}
    diffs = []
    for _ in range(max(1, posts // 20)):
        slice_p50 = {}
        for target in (base, acked):
            slice_times = []
            for _ in range(20):
                started = time.perf_counter()
                if not post(target, photo).get("job_id"):
                    raise RuntimeError(f"{target}: no job id with every Redis up")
                slice_times.append((time.perf_counter() - started) * 1000)
            times[target] += slice_times
            slice_p50[target] = statistics.median(slice_times)
        diffs.append(slice_p50[acked] - slice_p50[base])
    return {"plain_p50_ms": round(statistics.median(times[base]), 2),
            "acked_p50_ms": round(statistics.median(times[acked]), 2),
            "difference_ms": round(statistics.median(diffs), 2), "posts_each": len(times[base])}


def replica_stopped(acked, primary_port, replica_port, sentinel_ports, photo):
    """With the replica stopped (SIGSTOP), --redis-wait-replicas 1 hands out no job id, and the
    jobs it withdrew are gone; with it back, ids again."""
    pid = int(redis_cli(replica_port, "info", "server").split("process_id:")[1].split()[0])
    before = job_records(primary_port)
    os.kill(pid, 19)  # SIGSTOP
    try:
        times, answers = [], []
        for _ in range(5):
            started = time.perf_counter()
            answers.append(post(acked, photo))
            times.append((time.perf_counter() - started) * 1000)
    finally:
        os.kill(pid, 18)  # SIGCONT
    for reply in answers:
        if reply.get("job_id") or "replica" not in (reply.get("async_error") or ""):
            raise RuntimeError(f"a job id handed out with the replica stopped: {reply}")
    # Withdrawn in the background once the answer is given: no record is left behind.
    wait_until("the withdrawn jobs gone", lambda: job_records(primary_port) == before, 10)
    wait_until("the replica back in every sentinel's view", lambda: all(
        "s_down" not in redis_cli(p, "sentinel", "replicas", SERVICE) for p in sentinel_ports), 30)
    wait_until("job ids again", lambda: post(acked, photo).get("job_id"), 10)
    return {"posts": len(answers), "p50_ms": round(statistics.median(times), 1), "error": answers[0]["async_error"]}


def job_records(port):
    """The number of job records in the Redis at `port`."""
    return int(redis_cli(port, "eval", "return #redis.call('keys', 'tandem:job:*')", "0") or 0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/debug/tandem"))
    ap.add_argument("--shared", default=os.environ.get("TANDEM_SHARED_DIR", os.path.join(ROOT, "..", "shared")))
    ap.add_argument("--seconds", type=float, default=16.0, help="how long the clients post")
    ap.add_argument("--kill-after", type=float, default=4.0, help="seconds into the load the primary is killed")
    ap.add_argument("--wait-rounds", type=int, default=1000)
    ap.add_argument("--latency-posts", type=int, default=200, help="per serve, for the p50 of each")
    args = ap.parse_args()
    binary = os.path.abspath(args.binary)
    models = os.path.join(args.shared, "models")
    photo_path = os.path.join(args.shared, "images", "sample_01.jpg")
    with open(photo_path, "rb") as f:
        photo = f.read()
    work = tempfile.mkdtemp(prefix="tandem-failover-")
    procs = []
    summary = {}

    def start(name, cmd):
        log = open(os.path.join(work, f"{name}.log"), "w")
        proc = subprocess.Popen(cmd, stdout=log, stderr=log, cwd=work)
        procs.append(proc)
        return proc

    def redis(name, port, *extra):
        return start(name, ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                            "--appendonly", "no", "--dir", work, *extra])

    try:
        primary_port, replica_port = free_port(), free_port()
        primary = redis("primary", primary_port)
        redis("replica", replica_port, "--replicaof", "127.0.0.1", str(primary_port))
        sentinel_ports = [free_port() for _ in range(3)]
        for i, port in enumerate(sentinel_ports):
            conf = os.path.join(work, f"sentinel{i}.conf")
            with open(conf, "w") as f:
                f.write(f"port {port}\nbind 127.0.0.1\ndir {work}\n"
                        f"sentinel monitor {SERVICE} 127.0.0.1 {primary_port} 2\n"
                        f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                        f"sentinel failover-timeout {SERVICE} 10000\n"
                        f"sentinel parallel-syncs {SERVICE} 1\n")
            # redis-sentinel is redis-server in sentinel mode (Debian's redis-sentinel package
            # is a link to it and a service file).
            start(f"sentinel{i}", ["redis-server", conf, "--sentinel"])
        wait_until("the replica in sync",
                   lambda: "master_link_status:up" in redis_cli(replica_port, "info", "replication"), 30)
        wait_until("every sentinel sees the replica and the other sentinels", lambda: all(
            redis_cli(p, "sentinel", "replicas", SERVICE).count(str(replica_port)) >= 1
            and "num-other-sentinels\n2" in redis_cli(p, "sentinel", "master", SERVICE) for p in sentinel_ports), 30)
        url = "redis+sentinel://" + ",".join(f"127.0.0.1:{p}" for p in sentinel_ports) + f"/{SERVICE}"
        say(f"primary :{primary_port}, replica :{replica_port}, sentinels {sentinel_ports}; tandem given {url}")

        common = ["--model-dir", models, "--accurate-model", "mobilenet_v2.onnx", "--intra-threads", "1",
                  "--redis-url", url, "--reclaim-after", "2"]
        serve_port, acked_port = free_port(), free_port()
        base, acked = f"http://127.0.0.1:{serve_port}", f"http://127.0.0.1:{acked_port}"
        start("serve", [binary, "serve", "--addr", f"127.0.0.1:{serve_port}", *common])
        # The same, handing out a job id only once the replica has the job.
        start("serve-acked", [binary, "serve", "--addr", f"127.0.0.1:{acked_port}", "--redis-wait-replicas", "1",
                              "--redis-wait-timeout", "0.5", *common])
        workers = []
        for i in range(2):
            metrics_port = free_port()
            workers.append((start(f"worker{i}", [binary, "worker", "--metrics-addr", f"127.0.0.1:{metrics_port}",
                                                 "--concurrency", "2", *common]),
                            f"http://127.0.0.1:{metrics_port}"))
        for b in [base, acked, *(w[1] for w in workers)]:
            wait_until(f"{b} ready", lambda b=b: http("GET", f"{b}/health/ready", timeout=5)[0] == 200, 120)
        say("2 serve (one with --redis-wait-replicas 1) and 2 workers ready")

        summary["wait"] = wait_cost(primary_port, photo, args.wait_rounds)
        say(f"WAIT 1 after each write, on loopback: SET of the photo {summary['wait']['set_us']} µs, "
            f"with WAIT {summary['wait']['set_wait_us']} µs (+{summary['wait']['wait_cost_us']} µs median)")
        summary["acked_latency"] = acked_latency(base, acked, photo, args.latency_posts)
        say(f"POST /predict p50 at c=1: {summary['acked_latency']['plain_p50_ms']} ms, with "
            f"--redis-wait-replicas 1 {summary['acked_latency']['acked_p50_ms']} ms (median difference "
            f"{summary['acked_latency']['difference_ms']} ms)")
        summary["unacknowledged"] = replica_stopped(acked, primary_port, replica_port, sentinel_ports, photo)
        say(f"replica stopped: --redis-wait-replicas 1 answered {summary['unacknowledged']['posts']} posts with "
            f"job_id null in {summary['unacknowledged']['p50_ms']} ms (p50), and left no job; job ids again once "
            f"it was back")

        answers = []  # (seconds since start, status, job_id, async_error)
        lock = threading.Lock()
        t0 = time.monotonic()
        stop = threading.Event()

        def client(target):
            while not stop.is_set():
                status, body = http("POST", f"{target}/predict", photo, {"content-type": "image/jpeg"})
                at = time.monotonic() - t0
                try:
                    reply = json.loads(body)
                except ValueError:
                    reply = {}
                with lock:
                    answers.append((at, status, reply.get("job_id"), reply.get("async_error"),
                                    bool(reply.get("result_sync")), target))
                    if len(answers) > 20000:
                        return

        threads = [threading.Thread(target=client, args=(b,)) for b in (base, base, acked, acked)]
        for t in threads:
            t.start()
        time.sleep(args.kill_after)
        lag = redis_cli(primary_port, "info", "replication")
        kill_sent = time.monotonic() - t0
        primary.kill()
        primary.wait()
        killed_at = time.monotonic() - t0
        say(f"primary killed (SIGKILL) {killed_at:.2f} s into the load; "
            + " ".join(line for line in lag.splitlines() if line.startswith(("master_repl_offset", "slave0"))))

        def promoted():
            addr = redis_cli(sentinel_ports[0], "sentinel", "get-master-addr-by-name", SERVICE).split()
            return addr and addr[-1] == str(replica_port)

        wait_until("the replica promoted", promoted, 30)
        promoted_at = time.monotonic() - t0
        say(f"replica promoted {promoted_at - killed_at:.2f} s after the kill")

        def first_id_after_promotion():
            with lock:
                return min((a[0] for a in answers if a[5] == base and a[2] and a[0] > promoted_at), default=None)

        # The load goes on until the plain serve hands out job ids again (30 s at most), and for
        # --seconds in all at least.
        try:
            wait_until("job ids again after the promotion", first_id_after_promotion, 30)
        finally:
            time.sleep(max(0.0, t0 + args.seconds - time.monotonic()))
            stop.set()
            for t in threads:
                t.join()

        bad = [a for a in answers if a[1] != 200 or not a[4]]
        if bad:
            raise RuntimeError(f"{len(bad)} POST /predict not answered 200 with a fast result, e.g. {bad[0]}")
        given = [a for a in answers if a[2]]
        refused = [a for a in answers if not a[2]]
        first_after = first_id_after_promotion()
        early = [a for a in refused if a[0] < kill_sent]
        if early:
            raise RuntimeError(f"{len(early)} answers without a job id before the kill, e.g. {early[0]}")
        if any(not a[3] for a in refused):
            raise RuntimeError("an answer without a job id did not say why (async_error)")
        say(f"{len(answers)} POST /predict, all 200 with the fast answer; {len(given)} job ids given out, "
            f"{len(refused)} answered job_id null, none before the kill; "
            f"job ids again {first_after - killed_at:.2f} s after the kill")

        outcomes = {}
        lost = []
        deadline = time.monotonic() + 120

        def follow(chunk):
            for at, _, job_id, _, _, target in chunk:
                while True:
                    status, body = http("GET", f"{base}/job/{job_id}?wait=10", timeout=20)
                    state = json.loads(body).get("status") if status == 200 else None
                    if status == 404:
                        with lock:
                            lost.append((at, job_id, target))
                            outcomes["lost"] = outcomes.get("lost", 0) + 1
                        break
                    if state in ("completed", "failed", "canceled") or time.monotonic() > deadline:
                        key = state if state in ("completed", "failed", "canceled") else f"stuck ({state})"
                        with lock:
                            outcomes[key] = outcomes.get(key, 0) + 1
                        break

        followers = [threading.Thread(target=follow, args=(given[i::8],)) for i in range(8)]
        for t in followers:
            t.start()
        for t in followers:
            t.join()
        say(f"the {len(given)} job ids: {outcomes}")
        if set(outcomes) - {"completed", "lost"}:
            raise RuntimeError(f"a job failed or is stuck: {outcomes}")
        if any(target == acked for _, _, target in lost):
            raise RuntimeError("a job whose id --redis-wait-replicas handed out was lost in the failover")
        late = [at for at, _, _ in lost if not killed_at - 1.0 <= at <= killed_at + 0.5]
        if late:
            raise RuntimeError(f"{len(late)} lost jobs were acknowledged long before the kill, at {late[:5]} s "
                               f"(killed at {killed_at:.2f} s)")

        # The old primary back, empty: the sentinels make it a replica of the new one.
        redis("primary-again", primary_port)
        wait_until("the old primary back as a replica", lambda: "role:slave" in redis_cli(
            primary_port, "info", "replication") and "master_link_status:up" in redis_cli(
            primary_port, "info", "replication"), 60)
        say("the old primary came back as a replica of the new one")

        # After the failover: the same processes take and finish new jobs.
        after = []
        for _ in range(40):
            status, body = http("POST", f"{base}/predict", photo, {"content-type": "image/jpeg"})
            job_id = json.loads(body).get("job_id") if status == 200 else None
            if not job_id:
                raise RuntimeError(f"after the failover, POST /predict gave no job id: {status} {body[:200]!r}")
            after.append(job_id)
        for job_id in after:
            status, body = http("GET", f"{base}/job/{job_id}?wait=30", timeout=40)
            if status != 200 or json.loads(body).get("status") != "completed":
                raise RuntimeError(f"a job posted after the failover did not complete: {status} {body[:200]!r}")
        # With a replica again, the acknowledging serve hands out ids again (with none, it cannot:
        # the promoted replica had no replica of its own until the old primary came back).
        wait_until("--redis-wait-replicas 1 handing out job ids again", lambda: post(acked, photo).get("job_id"), 30)
        if any(w[0].poll() is not None for w in workers):
            raise RuntimeError("a worker exited")
        say("40 jobs posted after the failover completed, on the same serve and workers (no restart)")

        summary["failover"] = {
            "posts": len(answers), "job_ids_given": len(given), "answered_without_job_id": len(refused),
            "promoted_after_kill_s": round(promoted_at - killed_at, 2),
            "job_ids_again_after_kill_s": round(first_after - killed_at, 2),
            "outcomes": outcomes, "lost_job_ids": len(lost),
            "job_ids_given_acked": sum(1 for a in given if a[5] == acked),
            "lost_acknowledged_before_kill_ms": sorted(round((killed_at - at) * 1000) for at, _, _ in lost),
        }
        print(json.dumps(summary))
        say("ok")
        return 0
    finally:
        stop_all(procs)


if __name__ == "__main__":
    sys.exit(main())
