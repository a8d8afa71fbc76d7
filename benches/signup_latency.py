#!/usr/bin/env python3
"""Signup latency per delivery mode, against a running confirmd.

    python3 benches/signup_latency.py --url http://127.0.0.1:3000 --requests 200

Each mode gets N signups with fresh addresses, sent over keep-alive connections by
`--concurrency` threads; the table shows client-side latency percentiles (the whole request,
as a user would feel it) and the status codes seen. Then it waits until every email is sent
and reports, from `GET /signups/{id}`, the time from signup to SMTP accepted (`sent_at -
created_at`): for background mode, the wait the user no longer sees but still has.
The service must run with CONFIRMD_SIGNUP__PER_CLIENT_PER_MINUTE=0: this is one client, and the
per-client limit would answer all but its first few signups 429.
Standard library only.
"""

import argparse
import datetime
import http.client
import json
import statistics
import threading
import time
import urllib.parse
import uuid
from collections import Counter


def percentile(sorted_values, p):
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(p / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]


def run_mode(url, mode, requests, concurrency):
    parsed = urllib.parse.urlparse(url)
    run = uuid.uuid4().hex[:8]
    latencies, statuses, ids, lock = [], Counter(), [], threading.Lock()
    counter = iter(range(requests))

    def worker():
        conn = http.client.HTTPConnection(parsed.hostname, parsed.port or 80, timeout=30)
        for i in counter:
            body = json.dumps({"email": f"bench-{run}-{mode}-{i}@example.com"})
            started = time.perf_counter()
            conn.request("POST", f"/signups?mode={mode}", body, {"content-type": "application/json"})
            response = conn.getresponse()
            payload = response.read()
            elapsed = (time.perf_counter() - started) * 1000
            with lock:
                latencies.append(elapsed)
                statuses[response.status] += 1
                if response.status in (201, 202):
                    ids.append(json.loads(payload)["id"])
        conn.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    latencies.sort()
    delivery = sorted(delivery_times(parsed, ids))
    return {
        "mode": mode,
        "requests": requests,
        "throughput": requests / wall,
        "mean": statistics.fmean(latencies),
        "p50": percentile(latencies, 50),
        "p90": percentile(latencies, 90),
        "p99": percentile(latencies, 99),
        "max": latencies[-1],
        "statuses": dict(sorted(statuses.items())),
        "delivery_p50": percentile(delivery, 50),
        "delivery_max": delivery[-1] if delivery else float("nan"),
    }


def delivery_times(parsed, ids, patience_s=120):
    """Signup → SMTP accepted, in ms, for each id, once its email is sent."""
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port or 80, timeout=30)
    times, deadline = [], time.monotonic() + patience_s
    for signup_id in ids:
        while True:
            conn.request("GET", f"/signups/{signup_id}")
            details = json.loads(conn.getresponse().read())
            sent_at = details["delivery"]["sent_at"]
            if sent_at:
                created = datetime.datetime.fromisoformat(details["created_at"])
                times.append((datetime.datetime.fromisoformat(sent_at) - created).total_seconds() * 1000)
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"signup {signup_id} was not delivered within {patience_s}s: {details}")
            time.sleep(0.05)
    conn.close()
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:3000")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--modes", default="sync,background")
    args = parser.parse_args()

    print(f"{args.requests} signups per mode, concurrency {args.concurrency}, against {args.url}")
    print("                  ------------- response latency -------------   -- signup → sent --")
    print(
        f"{'mode':<11} {'req/s':>6} {'mean ms':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8}"
        f"   {'p50 ms':>8} {'max ms':>8}  statuses"
    )
    for mode in args.modes.split(","):
        r = run_mode(args.url, mode, args.requests, args.concurrency)
        print(
            f"{r['mode']:<11} {r['throughput']:>6.0f} {r['mean']:>8.2f} {r['p50']:>8.2f} {r['p90']:>8.2f} "
            f"{r['p99']:>8.2f} {r['max']:>8.2f}   {r['delivery_p50']:>8.0f} {r['delivery_max']:>8.0f}  {r['statuses']}"
        )


if __name__ == "__main__":
    main()
