#!/usr/bin/env python3
"""Tandem across hosts, simulated: network namespaces joined by a bridge, real processes in each.

    sudo python3 scripts/netns_test.py [--binary target/debug/tandem] [--jobs 5000] [--only NAME]

Builds one namespace per host (redis, serve1, serve2, worker1-3, client) plus one holding the
bridge, each host on 10.77.0.0/24 (addresses only inside namespaces made here), and tears all of
it down at the end, also on failure or Ctrl-C. Between the hosts and Redis it puts a 20 ms round
trip: `tc netem` on every host's link where the kernel has it, else (a kernel without the netem
qdisc, like this project's VMs) a delaying TCP relay in Redis' namespace that holds every chunk
10 ms each way, in order. The scenarios (each bounded in time; traffic only inside the
namespaces):

- exactly-once: `--jobs` jobs through 2 `serve` x 3 workers, 20 ms from Redis: every job
  completed, each result reported exactly once (`results_reported` = 1), none lost;
- worker-cut: a worker's link down while it holds jobs, for longer than `--reclaim-after`, then
  up: its jobs are taken over, whatever it reports late is not stored over them, nothing is lost,
  and it takes jobs again without a restart;
- serve-cut: a `serve`'s route to Redis gone: it still answers with the fast result
  (`job_id: null`, `async_error`), `/health/ready` is 503, and it recovers by itself;
- loss: 2 % of the packets every host receives dropped (`iptables -m statistic`), Redis still
  20 ms away: 1,000 jobs through both `serve`, every job given an id completed, none lost or
  failed (TCP retransmits; what it costs shows in the latencies and in `results_reported`);
- latency: `POST /predict` p50 at concurrency 1 with Redis 20 ms away, and 1 ms away (relay
  mode), against Redis across the bridge with no delay, in alternating slices.

Prints one line per check and a JSON summary at the end; exits non-zero on the first failure.
"""

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NET = "10.77.0"
HOSTS = {"redis": 1, "serve1": 2, "serve2": 3, "worker1": 4, "worker2": 5, "worker3": 6, "client": 7}
REDIS_PORT = 6379
RELAY_PORT = 6390
ONE_WAY_S = 0.010
# A second relay, 1 ms round trip, for the latency scenario.
NEAR_RELAY_PORT = 6391
NEAR_ONE_WAY_S = 0.0005
LOSS = 0.02
LOSS_JOBS = 1000


def sh(*cmd, check=True, capture=False):
    out = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if not check:
        return out.stdout if capture else out.returncode
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {out.stderr.strip()}")
    return out.stdout if capture else out.returncode


def say(text):
    print(f"netns-test: {text}", flush=True)


class Lab:
    """The namespaces, the bridge, and every process started in them; `close` undoes it all."""

    def __init__(self, tag):
        self.tag = tag
        self.procs = []
        self.made = []
        self.netem = False

    def ns(self, host):
        return f"{self.tag}-{host}"

    def ip(self, host):
        return f"{NET}.{HOSTS[host]}"

    def up(self):
        switch = self.ns("switch")
        sh("ip", "netns", "add", switch)
        self.made.append(switch)
        sh("ip", "-n", switch, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", switch, "link", "set", "br0", "up")
        for host, number in HOSTS.items():
            ns = self.ns(host)
            sh("ip", "netns", "add", ns)
            self.made.append(ns)
            sh("ip", "-n", switch, "link", "add", f"v{number}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "-n", switch, "link", "set", f"v{number}", "master", "br0", "up")
            sh("ip", "-n", ns, "addr", "add", f"{self.ip(host)}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        # 10 ms on each link of a serve or worker host: 20 ms between it and Redis.
        self.netem = all(
            sh("ip", "netns", "exec", self.ns(h), "tc", "qdisc", "add", "dev", "eth0", "root", "netem", "delay",
               f"{int(ONE_WAY_S * 1000)}ms", check=False) == 0
            for h in HOSTS if h.startswith(("serve", "worker")))

    def spawn(self, host, cmd, log):
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns(host), *cmd], stdout=log, stderr=log,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def stop(self, proc):
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def close(self):
        for proc in reversed(self.procs):
            try:
                self.stop(proc)
            except (ProcessLookupError, PermissionError):
                pass
        for ns in reversed(self.made):
            # Whatever still runs in a namespace goes with it.
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            sh("ip", "netns", "del", ns, check=False)


def relay_main(listen_host, listen_port, target_port, one_way):
    """A TCP relay that delays every chunk by `one_way` seconds each way, keeping their order."""

    async def pump(reader, writer):
        queue = asyncio.Queue()

        async def delayed_writer():
            while True:
                due, data = await queue.get()
                if data is None:
                    break
                wait = due - asyncio.get_running_loop().time()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()
            writer.close()

        task = asyncio.create_task(delayed_writer())
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                await queue.put((asyncio.get_running_loop().time() + one_way, data))
        except (ConnectionError, OSError):
            pass
        await queue.put((0, None))
        try:
            await task
        except (ConnectionError, OSError):
            pass

    async def handle(client_reader, client_writer):
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target_port)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(pump(client_reader, server_writer), pump(server_reader, client_writer))

    async def serve():
        server = await asyncio.start_server(handle, listen_host, listen_port)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


class Client:
    """Runs commands in the client's namespace."""

    def __init__(self, lab, binary):
        self.lab, self.binary = lab, binary

    def run(self, *cmd, timeout=600):
        out = subprocess.run(["ip", "netns", "exec", self.lab.ns("client"), *cmd], capture_output=True, text=True,
                             timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError(f"client: {' '.join(cmd)}: {out.stderr.strip()[-2000:]}")
        return out.stdout

    def curl(self, *args):
        return self.run("curl", "-sS", "--max-time", "10", *args)

    def status(self, url):
        """The HTTP status of GET `url`, or "" when nothing answers (yet)."""
        try:
            return self.curl("-o", "/dev/null", "-w", "%{http_code}", url)
        except RuntimeError:
            return ""

    def bench(self, *args):
        return json.loads(self.run(self.binary, "bench", "--json", *args))


def redis_cli(lab, *args, check=True):
    return sh("ip", "netns", "exec", lab.ns("redis"), "redis-cli", "-p", str(REDIS_PORT), *args, capture=True,
              check=check)


def wait_until(what, check, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise RuntimeError(f"{what}: not within {timeout} s")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary", default=os.path.join(ROOT, "target/debug/tandem"))
    parser.add_argument("--shared", default=os.environ.get("TANDEM_SHARED_DIR", os.path.join(ROOT, "..", "shared")))
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--only", default=None,
                        help="one scenario: exactly-once, worker-cut, serve-cut, loss, latency")
    parser.add_argument("--relay", nargs=4, metavar=("HOST", "PORT", "TARGET", "ONE_WAY_S"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.relay:
        return relay_main(args.relay[0], int(args.relay[1]), int(args.relay[2]), float(args.relay[3]))
    if os.geteuid() != 0:
        say("needs root (network namespaces); skipped")
        return 0
    binary = os.path.abspath(args.binary)
    models = os.path.join(args.shared, "models")
    photo = os.path.join(args.shared, "images", "sample_01.jpg")
    work = tempfile.mkdtemp(prefix="tandem-netns-")
    lab = Lab(f"tdm{os.getpid() % 100000}")
    summary = {}
    try:
        lab.up()
        say(f"namespaces up ({len(HOSTS)} hosts on {NET}.0/24, bridge in {lab.ns('switch')}); "
            f"20 ms to Redis by {'tc netem' if lab.netem else 'a delaying relay (no netem qdisc in this kernel)'}")
        summary["delay_by"] = "netem" if lab.netem else "relay"
        redis_ip = lab.ip("redis")
        lab.spawn("redis", ["redis-server", "--port", str(REDIS_PORT), "--bind", f"{redis_ip} 127.0.0.1",
                            "--protected-mode", "no", "--save", "", "--appendonly", "no", "--dir", work],
                  open(os.path.join(work, "redis.log"), "w"))
        far_port = REDIS_PORT
        if not lab.netem:
            for port, one_way in ((RELAY_PORT, ONE_WAY_S), (NEAR_RELAY_PORT, NEAR_ONE_WAY_S)):
                lab.spawn("redis", [sys.executable, os.path.abspath(__file__), "--relay", redis_ip, str(port),
                                    str(REDIS_PORT), str(one_way)], open(os.path.join(work, f"relay-{port}.log"), "w"))
            far_port = RELAY_PORT
        wait_until("redis", lambda: "PONG" in redis_cli(lab, "ping", check=False), 10)
        far = f"redis://{redis_ip}:{far_port}/"
        common = ["--model-dir", models, "--accurate-model", "efficientnet_lite2.onnx", "--intra-threads", "1",
                  "--reclaim-after", "2", "--max-queue", "100000", "--max-queue-bytes", "4GiB"]
        serves = {}
        for host in ("serve1", "serve2"):
            lab.spawn(host, [binary, "serve", "--addr", f"{lab.ip(host)}:8000", "--redis-url", far, *common],
                      open(os.path.join(work, f"{host}.log"), "w"))
            serves[host] = f"http://{lab.ip(host)}:8000"
        workers = {}
        for host in ("worker1", "worker2", "worker3"):
            workers[host] = lab.spawn(host, [binary, "worker", "--metrics-addr", f"{lab.ip(host)}:9000",
                                             "--redis-url", far, "--concurrency", "4", *common],
                                      open(os.path.join(work, f"{host}.log"), "w"))
        client = Client(lab, binary)
        for base in [*serves.values(), *(f"http://{lab.ip(h)}:9000" for h in workers)]:
            wait_until(f"{base} ready", lambda: client.status(f"{base}/health/ready") == "200", 120)
        say("2 serve and 3 workers ready, Redis 20 ms away")

        def job_keys():
            return [k for k in redis_cli(lab, "--scan", "--pattern", "tandem:job:*").split() if k.count(":") == 2]

        scenarios = [args.only] if args.only else ["exactly-once", "worker-cut", "serve-cut", "loss", "latency"]
        if "exactly-once" in scenarios:
            per = args.jobs // 2
            started = time.monotonic()
            results = []
            threads = [threading.Thread(target=lambda b=b: results.append(client.bench(
                "--url", b, "--image", photo, "--jobs", str(per), "--concurrency", "8", "--poll-interval", "200",
                "--job-timeout", "300"))) for b in serves.values()]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.monotonic() - started
            completed = sum(r["completed"] for r in results)
            lost = sum(r["lost"] + r["timed_out"] + r["failed"] + r["not_queued"] for r in results)
            reported = {}
            for key in job_keys():
                count = redis_cli(lab, "hget", key, "results_reported").strip() or "0"
                reported[count] = reported.get(count, 0) + 1
            say(f"exactly-once: {completed} of {per * 2} jobs completed in {wall:.1f} s, {lost} lost or failed; "
                f"results reported per job: {reported}")
            if completed != per * 2 or lost or set(reported) != {"1"} or reported["1"] != per * 2:
                raise RuntimeError("exactly-once: a job was lost, failed or reported more than once")
            summary["exactly_once"] = {"jobs": completed, "wall_s": round(wall, 1),
                                       "results_reported": reported}
            redis_cli(lab, "eval", "for _, k in ipairs(redis.call('keys', 'tandem:job:*')) do "
                      "redis.call('del', k) end return 1", "0")

        if "worker-cut" in scenarios:
            victim = "worker1"
            bench = threading.Thread(target=lambda: summary.setdefault("worker_cut_bench", client.bench(
                "--url", serves["serve1"], "--image", photo, "--jobs", "600", "--concurrency", "8",
                "--poll-interval", "200", "--job-timeout", "300")))
            bench.start()
            held = 0
            for _ in range(400):
                held = int(redis_cli(lab, "eval", VICTIM_HELD, "1", "tandem:jobs", str(workers[victim].pid)).strip()
                           or 0)
                if held > 0:
                    break
                time.sleep(0.05)
            sh("ip", "-n", lab.ns(victim), "link", "set", "eth0", "down")
            say(f"worker-cut: {victim}'s link down while it held {held} jobs")
            time.sleep(5)
            sh("ip", "-n", lab.ns(victim), "link", "set", "eth0", "up")
            bench.join()
            report = summary.pop("worker_cut_bench")
            attempts_before = metric(client, f"http://{lab.ip(victim)}:9000", "tandem_job_attempts_total")
            late = sum(1 for key in job_keys() if (redis_cli(lab, "hget", key, "results_reported").strip() or "0")
                       not in ("0", "1"))
            say(f"worker-cut: {report['completed']} of 600 completed, {report['lost'] + report['failed']} lost or "
                f"failed; {late} results reported twice (the late one not stored)")
            if held == 0 or report["completed"] != 600 or report["lost"] or report["failed"]:
                raise RuntimeError("worker-cut: the victim held nothing, or a job was lost")
            # Back without a restart: it takes jobs again.
            client.bench("--url", serves["serve2"], "--image", photo, "--jobs", "60", "--concurrency", "4")
            wait_until(f"{victim} takes jobs again",
                       lambda: metric(client, f"http://{lab.ip(victim)}:9000", "tandem_job_attempts_total")
                       > attempts_before, 60)
            if workers[victim].poll() is not None:
                raise RuntimeError("worker-cut: the victim exited")
            say(f"worker-cut: {victim} rejoined and took jobs again, same process")
            summary["worker_cut"] = {"held": held, "completed": report["completed"], "late_results": late}

        if "serve-cut" in scenarios:
            victim = "serve2"
            sh("ip", "-n", lab.ns(victim), "route", "add", "blackhole", f"{redis_ip}/32")
            answer = json.loads(client.curl("-H", "content-type: image/jpeg", "--data-binary", f"@{photo}",
                                            f"{serves[victim]}/predict"))
            ready = client.status(f"{serves[victim]}/health/ready")
            say(f"serve-cut: {victim} without Redis answered {answer.get('result_sync')!r}, job_id "
                f"{answer.get('job_id')}, async_error {answer.get('async_error')!r}; ready {ready}")
            if answer.get("job_id") is not None or not answer.get("async_error") or ready != "503":
                raise RuntimeError("serve-cut: not the fast answer without a job, or still ready")
            sh("ip", "-n", lab.ns(victim), "route", "del", "blackhole", f"{redis_ip}/32")
            back = time.monotonic()
            wait_until(f"{victim} ready again", lambda: client.status(f"{serves[victim]}/health/ready") == "200", 60)
            answer = json.loads(client.curl("-H", "content-type: image/jpeg", "--data-binary", f"@{photo}",
                                            f"{serves[victim]}/predict"))
            say(f"serve-cut: ready again {time.monotonic() - back:.1f} s after the route came back; "
                f"job_id {answer.get('job_id')}")
            if answer.get("job_id") is None:
                raise RuntimeError("serve-cut: no job after recovery")
            summary["serve_cut"] = {"recovered_s": round(time.monotonic() - back, 1)}

        if "loss" in scenarios:
            summary["loss"] = lossy(lab, client, serves, photo, job_keys)

        if "latency" in scenarios:
            near = f"redis://{redis_ip}:{REDIS_PORT}/"
            lab.spawn("serve1", [binary, "serve", "--addr", f"{lab.ip('serve1')}:8001", "--redis-url", near, *common],
                      open(os.path.join(work, "serve1-near.log"), "w"))
            near_base = f"http://{lab.ip('serve1')}:8001"
            wait_until("near serve", lambda: client.status(f"{near_base}/health/ready") == "200", 120)
            bases = [("far", serves["serve1"]), ("near", near_base)]
            if not lab.netem:
                one_ms = f"redis://{redis_ip}:{NEAR_RELAY_PORT}/"
                lab.spawn("serve2", [binary, "serve", "--addr", f"{lab.ip('serve2')}:8001", "--redis-url", one_ms,
                                     *common], open(os.path.join(work, "serve2-1ms.log"), "w"))
                one_ms_base = f"http://{lab.ip('serve2')}:8001"
                wait_until("1 ms serve", lambda: client.status(f"{one_ms_base}/health/ready") == "200", 120)
                bases.append(("1ms", one_ms_base))
            # The workers would compete for the CPU: stopped for this one.
            for proc in workers.values():
                lab.stop(proc)
            p50 = {name: [] for name, _ in bases}
            for _ in range(3):
                for name, base in bases:
                    report = client.bench("--url", base, "--image", photo, "--concurrency", "1", "--duration", "3",
                                          "--warmup", "1")
                    p50[name].append(report["routes"]["predict"]["latency"]["p50_ms"])
            diffs = [f - n for f, n in zip(p50["far"], p50["near"])]
            say(f"latency: POST /predict p50 with Redis 20 ms away {statistics.median(p50['far']):.2f} ms, "
                f"local {statistics.median(p50['near']):.2f} ms; median difference {statistics.median(diffs):.2f} ms")
            summary["latency"] = {"far_p50_ms": p50["far"], "near_p50_ms": p50["near"],
                                  "far_minus_near_ms_median": round(statistics.median(diffs), 2)}
            if "1ms" in p50:
                diffs_1ms = [f - n for f, n in zip(p50["1ms"], p50["near"])]
                say(f"latency: with Redis 1 ms away {statistics.median(p50['1ms']):.2f} ms; median difference "
                    f"{statistics.median(diffs_1ms):.2f} ms")
                summary["latency"].update({"one_ms_p50_ms": p50["1ms"],
                                           "one_ms_minus_near_ms_median": round(statistics.median(diffs_1ms), 2)})
        print(json.dumps(summary))
        say("ok")
        return 0
    finally:
        lab.close()


def lossy(lab, client, serves, photo, job_keys):
    """The loss scenario: LOSS of every host's incoming packets on its bridge link dropped while
    LOSS_JOBS jobs go through both serves."""
    hosts = [h for h in HOSTS if h != "client"]
    rule = ["INPUT", "-i", "eth0", "-m", "statistic", "--mode", "random", "--probability", str(LOSS), "-j", "DROP"]
    for host in hosts:
        sh("ip", "netns", "exec", lab.ns(host), "iptables", "-A", *rule)
    before = set(job_keys())
    try:
        results = []
        threads = [threading.Thread(target=lambda b=b: results.append(client.bench(
            "--url", b, "--image", photo, "--jobs", str(LOSS_JOBS // 2), "--concurrency", "8",
            "--poll-interval", "200", "--job-timeout", "300"))) for b in serves.values()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        dropped = sum(int(line.split()[0]) for host in hosts for line in sh(
            "ip", "netns", "exec", lab.ns(host), "iptables", "-L", "INPUT", "-v", "-n", "-x", capture=True
        ).splitlines() if "statistic" in line)
    finally:
        for host in hosts:
            sh("ip", "netns", "exec", lab.ns(host), "iptables", "-D", *rule, check=False)
    queued = sum(r["queued"] for r in results)
    completed = sum(r["completed"] for r in results)
    bad = sum(r["lost"] + r["timed_out"] + r["failed"] for r in results)
    reported = {}
    for key in set(job_keys()) - before:
        count = redis_cli(lab, "hget", key, "results_reported").strip() or "0"
        reported[count] = reported.get(count, 0) + 1
    p50 = max(r["submit_latency"]["p50_ms"] for r in results)
    p99 = max(r["submit_latency"]["p99_ms"] for r in results)
    say(f"loss: {LOSS:.0%} of packets dropped ({dropped} in all): {queued} of {LOSS_JOBS} queued, {completed} "
        f"completed, {bad} lost or failed; POST /predict p50 {p50:.1f} ms, p99 {p99:.1f} ms; results reported "
        f"per job {reported}")
    if completed != queued or bad or queued < LOSS_JOBS * 0.9 or dropped == 0:
        raise RuntimeError("loss: a queued job did not complete, or the loss was not applied")
    return {"loss": LOSS, "dropped_packets": dropped, "queued": queued, "completed": completed,
            "predict_p50_ms": p50, "predict_p99_ms": p99, "results_reported": reported}


# The pending entries of the worker whose consumer name ends in its pid (`host-pid-random`).
VICTIM_HELD = """
local n = 0
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], 'workers')) do
  local name, pending = nil, 0
  for i = 1, #c, 2 do
    if c[i] == 'name' then name = c[i + 1] end
    if c[i] == 'pending' then pending = c[i + 1] end
  end
  if name and string.find(name, '-' .. ARGV[1] .. '-', 1, true) then n = n + pending end
end
return n
"""


def metric(client, base, name):
    text = client.curl(f"{base}/metrics")
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and line[len(name):len(name) + 1] in (" ", "{"))


if __name__ == "__main__":
    sys.exit(main())
