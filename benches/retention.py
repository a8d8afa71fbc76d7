#!/usr/bin/env python3
"""Do signups and a /metrics scrape cost the same with millions of sent emails, while the pruner runs?

    cargo build --release
    python3 benches/retention.py [--rows 10000000] [--requests 2000] [--rounds 3]
    python3 benches/retention.py --postgres postgres://postgres@127.0.0.1:5432/postgres

Builds two databases with a release confirmd (it creates and migrates each): one left empty, one
seeded with --rows sent emails written over the last --span-days days (--users users and their
tokens from benches/seed_users.py, then more sent rows spread over those users). With the default
retention (`retention.sent_days = 3`) and a span of 4 days, a quarter of the seeded rows are
past the age: the pruner deletes them, batch by batch, while the measurement runs. Each round,
on each database alternately: time --scrapes `GET /metrics` (median), then `confirmd bench`
(both modes) against a catcher in this script that accepts every email at once. Prints the
medians side by side, with how many outbox rows the seeded database held before and after.
With --postgres URL the two databases are fresh databases on that server, created and dropped
here with psql, and seeded with the same rows in PostgreSQL's schema. Standard library only.
"""

import argparse
import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
sys.path.insert(0, HERE)
from flat_latency import Service, free_port, is_postgres, two_databases  # noqa: E402

DAY_MS = 24 * 3600 * 1000


def catcher(port):
    """An SMTP server on `port` that accepts every message at once, on a thread of its own."""

    async def session(reader, writer):
        writer.write(b"220 catcher\r\n")
        in_data = False
        while line := await reader.readline():
            if in_data:
                if line == b".\r\n":
                    in_data = False
                    writer.write(b"250 ok\r\n")
                    await writer.drain()
                continue
            verb = line[:4].upper()
            if verb == b"DATA":
                in_data = True
                writer.write(b"354 go\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                await writer.drain()
                break
            elif verb in (b"EHLO", b"HELO"):
                writer.write(b"250 catcher\r\n")
            else:
                writer.write(b"250 ok\r\n")
            await writer.drain()
        writer.close()

    async def serve():
        server = await asyncio.start_server(session, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    threading.Thread(target=lambda: asyncio.run(serve()), daemon=True).start()


# The same rows on PostgreSQL: the outbox ids follow the order of writing, as SQLite's rowid does.
POSTGRES_SEED = """
BEGIN;
UPDATE email_outbox SET created_at = :now - :span + id * (:span / :rows),
                        next_attempt_at = :now - :span + id * (:span / :rows),
                        sent_at = :now - :span + id * (:span / :rows) + 80;
INSERT INTO email_outbox (signup_id, user_id, kind, recipient, mode, state, attempts,
                          next_attempt_at, created_at, sent_at)
SELECT 'seed-extra-' || i, md5('seed-' || (1 + i % :users))::uuid, 'confirmation',
       'seed.' || (1 + i % :users) || '@example.com', 'background', 'sent', 1, at, at, at + 80
FROM generate_series(:users + 1, :rows) AS i,
     LATERAL (SELECT :now - :span + i * (:span / :rows) AS at) AS t;
COMMIT;
VACUUM ANALYZE;
"""


def psql(url, sql, **variables):
    command = ["psql", url, "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1"]
    for name, value in variables.items():
        command += ["-v", f"{name}={value}"]
    done = subprocess.run(command, input=sql, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"psql on {url} failed:\n{done.stderr}")
    return done.stdout.strip()


def seed(database, rows, users, span_days, grouped=False):
    users = min(rows, users)
    subprocess.run([sys.executable, os.path.join(HERE, "seed_users.py"), "--users", str(users),
                    database], check=True)
    now = int(time.time() * 1000)
    span = int(span_days * DAY_MS)
    if is_postgres(database):
        began = time.monotonic()
        psql(database, POSTGRES_SEED, now=now, span=span, rows=rows, users=users)
        print(f"seeded {outbox_rows(database):,} outbox rows in {time.monotonic() - began:.0f} s "
              "(after the users)", file=sys.stderr)
        return
    conn = sqlite3.connect(database, isolation_level=None)
    began = time.monotonic()
    conn.execute("BEGIN IMMEDIATE")
    if grouped:
        # Each user's emails one after the other, users in the order they were created, as
        # confirmd writes them (a signup and its resends close together), so that a prune in age
        # order deletes the entries of a page of `email_outbox_user` together.
        conn.execute("DELETE FROM email_outbox")
        first, user = 1, "1 + (i - 1) * :users / :rows"
    else:
        # seed_users.py dates its rows over the past year: bring them into the span, then add
        # the rest, oldest first, each user's spread over the span.
        conn.execute("UPDATE email_outbox SET created_at = :now - :span + rowid * (:span / :rows), "
                     "sent_at = :now - :span + rowid * (:span / :rows) + 80",
                     {"now": now, "span": span, "rows": rows})
        first, user = users + 1, "1 + i % :users"
    conn.execute(
        f"""
        WITH RECURSIVE n(i) AS (SELECT :first WHERE :first <= :rows UNION ALL SELECT i + 1 FROM n WHERE i < :rows)
        INSERT INTO email_outbox (user_id, recipient, mode, state, attempts, next_attempt_at,
                                  created_at, sent_at)
        SELECT printf('seed-%012d', {user}), printf('seed.%d@example.com', {user}),
               'background', 'sent', 1, :now - :span + i * (:span / :rows),
               :now - :span + i * (:span / :rows), :now - :span + i * (:span / :rows) + 80
        FROM n
        """,
        {"users": users, "rows": rows, "now": now, "span": span, "first": first},
    )
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    count = conn.execute("SELECT COUNT(*) FROM email_outbox").fetchone()[0]
    together = ", each user's together," if grouped else ""
    print(f"seeded {count:,} outbox rows{together} in {time.monotonic() - began:.0f} s "
          "(after the users)", file=sys.stderr)
    conn.close()


def outbox_rows(database):
    if is_postgres(database):
        return int(psql(database, "SELECT COUNT(*) FROM email_outbox"))
    conn = sqlite3.connect(database)
    try:
        return conn.execute("SELECT COUNT(*) FROM email_outbox").fetchone()[0]
    finally:
        conn.close()


def measure(binary, database, args):
    service = Service(binary, database, args.smtp_port)
    try:
        scrapes = []
        for _ in range(args.scrapes):
            began = time.perf_counter()
            urllib.request.urlopen(service.url + "/metrics", timeout=30).read()
            scrapes.append((time.perf_counter() - began) * 1000)
        scrapes.sort()
        out = subprocess.run(
            [binary, "bench", "--url", service.url, "--requests", str(args.requests),
             "--concurrency", str(args.concurrency), "--json"],
            check=True, capture_output=True, text=True).stdout
        modes = {m["mode"]: m for m in json.loads(out)["modes"]}
        pruned = urllib.request.urlopen(service.url + "/metrics", timeout=30).read().decode()
        pruned = sum(float(line.split()[-1]) for line in pruned.splitlines()
                     if line.startswith("confirmd_pruned_rows_total{"))
        return {"scrape_ms": scrapes[len(scrapes) // 2], "modes": modes, "pruned": pruned}
    finally:
        service.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=1_000_000,
                        help="users the rows are spread over (each has a token)")
    parser.add_argument("--span-days", type=float, default=4.0)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--scrapes", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--grouped", action="store_true",
                        help="SQLite: seed each user's emails one after the other, as confirmd "
                             "writes them, where the default spreads them over the span")
    parser.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "confirmd"))
    parser.add_argument("--keep", help="keep the seeded database at this path (with --postgres: "
                                           "under this database name)")
    parser.add_argument("--postgres", metavar="URL",
                        help="a PostgreSQL server: measure on fresh databases there")
    args = parser.parse_args()
    if args.grouped and args.postgres:
        parser.error("--grouped seeds SQLite only")
    args.smtp_port = free_port()
    catcher(args.smtp_port)

    with two_databases(args, "retention") as (empty, seeded):
        seed(seeded, args.rows, args.users, args.span_days, args.grouped)
        before = outbox_rows(seeded)
        label = f"{before:,} rows"
        results = {"empty": [], label: []}
        # Alternating rounds, so that a busy moment of the machine cannot favour one database.
        for _ in range(args.rounds):
            results["empty"].append(measure(args.binary, empty, args))
            results[label].append(measure(args.binary, seeded, args))
        after = outbox_rows(seeded)

    def median(label, pick):
        values = sorted(pick(run) for run in results[label])
        return values[len(values) // 2]

    def paired(pick):
        """Each round's ratio of the seeded database to the empty one timed just before it:
        the median, and the lowest and highest, so that a drift of the machine over the run
        cancels out of each ratio."""
        ratios = sorted(pick(s) / pick(e) for e, s in zip(results["empty"], results[label]))
        return ratios[len(ratios) // 2], ratios[0], ratios[-1]

    labels = list(results)
    print(f"\n{'PostgreSQL' if args.postgres else 'SQLite'}: {args.requests} signups per mode, "
          f"concurrency {args.concurrency}, {args.scrapes} scrapes, median of {args.rounds} "
          "alternating rounds, in ms; ratio of the medians, then the median (lowest-highest) "
          "of the rounds' own ratios")
    print(f"{'':<22} " + " ".join(f"{label:>16}" for label in labels) + f" {'ratio':>7}"
          + f" {'paired':>19}")
    rows = [("/metrics scrape", lambda run: run["scrape_ms"])]
    for mode in ("sync", "background"):
        rows.append((f"{mode} signup p50", lambda run, m=mode: run["modes"][m]["latency_ms"]["p50"]))
        rows.append((f"{mode} signup p99", lambda run, m=mode: run["modes"][m]["latency_ms"]["p99"]))
    for name, pick in rows:
        values = [median(label, pick) for label in labels]
        middle, low, high = paired(pick)
        print(f"{name:<22} " + " ".join(f"{v:>16.2f}" for v in values)
              + f" {values[1] / values[0]:>7.2f} {middle:>7.2f} ({low:.2f}-{high:.2f})")
    pruned = sum(run["pruned"] for run in results[label])
    print(f"seeded outbox rows: {before:,} before, {after:,} after; the pruner deleted "
          f"{pruned:,.0f} rows during the rounds")


if __name__ == "__main__":
    main()
