#!/usr/bin/env python3
"""Posts N images to a running Tandem and checks that every job completes.

    scripts/jobs_complete.py BASE_URL IMAGE [--jobs 200] [--concurrency 8]
                             [--at K --run 'COMMAND'] [--timeout 300] [--out FILE]

With --at/--run, COMMAND (a bash line, e.g. `podman kill <worker>`) runs once K jobs have been
accepted, while the rest are still being posted: the fault happens mid-run. Then every job is
polled until it is final; --out records each job's state and attempts. Exits 0 only if all N
posts got a job id and every job completed (none failed, none still pending at --timeout).
Prints one JSON summary line. Python's standard library only.
"""

import argparse
import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor


def parse(raw):
    """The JSON body as a dict; anything else (no body, not JSON) as {"raw": ...}."""
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    return body if isinstance(body, dict) else {"raw": raw[:200].decode("utf-8", "replace")}


def request(method, url, body=None, timeout=30.0):
    headers = {"content-type": "image/jpeg"} if body is not None else {}
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, parse(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, parse(err.read())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base_url")
    ap.add_argument("image")
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--at", type=int, default=None, help="run --run once this many jobs are accepted")
    ap.add_argument("--run", default=None, help="shell command to run at --at")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds for all jobs to be final")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    base = args.base_url.rstrip("/")
    image = open(args.image, "rb").read()

    accepted = []
    refused = []
    lock = threading.Lock()
    fault = {"ran": False, "rc": None, "at": None}

    def run_fault():
        fault["ran"] = True
        fault["at"] = len(accepted)
        fault["rc"] = subprocess.run(args.run, shell=True, executable="/bin/bash").returncode

    def post(_):
        # A 429 or 503 (the service protecting itself) is retried a bounded number of times.
        for attempt in range(20):
            try:
                status, body = request("POST", f"{base}/predict", image)
            except OSError as err:  # refused, reset, timed out
                status, body = 0, {"error": str(err)}
            if status == 200 and body.get("job_id"):
                with lock:
                    accepted.append(body["job_id"])
                    due = args.run and args.at is not None and not fault["ran"] and len(accepted) >= args.at
                    if due:
                        fault["ran"] = True
                if due:
                    run_fault()
                return
            if status in (0, 429, 503):
                time.sleep(0.2 * (attempt + 1))
                continue
            break
        with lock:
            refused.append({"status": status, "body": body})

    started = time.monotonic()
    with ThreadPoolExecutor(args.concurrency) as pool:
        list(pool.map(post, range(args.jobs)))
    posted_s = time.monotonic() - started

    final = {}
    attempts = {}
    deadline = time.monotonic() + args.timeout
    pending = list(accepted)
    while pending and time.monotonic() < deadline:
        still = []
        for job_id in pending:
            try:
                status, body = request("GET", f"{base}/job/{job_id}", timeout=10)
            except OSError:
                still.append(job_id)
                continue
            state = body.get("status") if status == 200 else f"http {status}"
            if state in ("completed", "failed"):
                final[job_id] = state
                attempts[job_id] = body.get("attempts")
            else:
                still.append(job_id)
        pending = still
        if pending:
            time.sleep(0.5)

    completed = sum(1 for s in final.values() if s == "completed")
    summary = {
        "jobs": args.jobs,
        "accepted": len(accepted),
        "refused": len(refused),
        "completed": completed,
        "failed": sum(1 for s in final.values() if s == "failed"),
        "still_pending": len(pending),
        "post_seconds": round(posted_s, 2),
        "all_final_seconds": round(time.monotonic() - started, 2),
        "fault_ran_at": fault["at"],
        "fault_rc": fault["rc"],
    }
    print(json.dumps(summary))
    if refused:
        print(f"refused: {refused[:3]}", file=sys.stderr)
    if args.out:
        with open(args.out, "w") as out:
            json.dump({"final": final, "attempts": attempts, "pending": pending, "refused": refused}, out)
    ok = completed == args.jobs and (args.run is None or fault["rc"] == 0)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
