#!/usr/bin/env python3
"""Does a signup cost the same with a million users in the database? (The signup path must stay flat as the tables grow.)

    cargo build --release
    python3 benches/flat_latency.py --smtp-port 1025 [--users 1000000] [--requests 2000]
    python3 benches/flat_latency.py --smtp-port 1025 --postgres postgres://postgres@127.0.0.1:5432/postgres

Runs `confirmd bench` (both modes) against a release confirmd on an empty database and on one
seeded with --users past signups, alternating over --rounds rounds (benches/seed_users.py: a user, a token
and a sent email each), with the same SMTP catcher, and prints both results side by side with
their ratio. Each database is created and migrated by confirmd itself, seeded while it is
stopped, and measured after a restart. Afterwards, run benches/query_plans.py on a seeded
database to see why the cost is flat: every statement is an index lookup. Standard library only.

With --postgres URL (a PostgreSQL server), both databases are fresh databases on that server
(created and dropped here with psql; --keep keeps the seeded one, by the name it prints), and
benches/query_plans_pg.py shows the plans on the kept one.
"""

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """A release confirmd on a database file, started and stopped from here."""

    def __init__(self, binary, database, smtp_port):
        self.port = free_port()
        url = database if is_postgres(database) else f"sqlite://{database}?mode=rwc"
        env = dict(os.environ,
                   RUST_LOG="warn",
                   CONFIRMD_SERVER__LISTEN=f"127.0.0.1:{self.port}",
                   CONFIRMD_DATABASE__URL=url,
                   # A server database has no folder to generate a secret in.
                   CONFIRMD_TOKEN__SECRET="confirmd-flat-latency-token-secret-0123456789",
                   CONFIRMD_SMTP__HOST="127.0.0.1",
                   CONFIRMD_SMTP__PORT=str(smtp_port),
                   # One client drives every signup: the per-client limit is off.
                   CONFIRMD_SIGNUP__PER_CLIENT_PER_MINUTE="0")
        self.process = subprocess.Popen([binary, "serve"], env=env, stdout=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(self.url + "/healthz", timeout=1).read()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"confirmd on {database} did not start")
                time.sleep(0.05)

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)


def is_postgres(database):
    return database.startswith(("postgres://", "postgresql://"))


def postgres_database(server, name, action):
    """CREATE or DROP the database `name` on `server`; returns its URL."""
    statement = f"CREATE DATABASE {name}" if action == "create" else \
        f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    subprocess.run(["psql", server, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", statement],
                   check=True)
    return urllib.parse.urlsplit(server)._replace(path=f"/{name}").geturl()


@contextlib.contextmanager
def two_databases(args, name):
    """An empty and a seedable database, both created and migrated by confirmd: files in a
    temporary folder, or with --postgres fresh databases on that server named after `name`,
    dropped afterwards (but the seeded one with --keep). Yields (empty, seeded)."""
    with tempfile.TemporaryDirectory() as tmp:
        if not args.postgres:
            empty = os.path.join(tmp, "empty.db")
            seeded = args.keep or os.path.join(tmp, "seeded.db")
            for database in (empty, seeded):
                Service(args.binary, database, args.smtp_port).stop()
            yield empty, seeded
            return
        names = [f"confirmd_{name}_empty_{os.getpid()}",
                 args.keep or f"confirmd_{name}_seeded_{os.getpid()}"]
        empty, seeded = (postgres_database(args.postgres, n, "create") for n in names)
        try:
            for database in (empty, seeded):
                Service(args.binary, database, args.smtp_port).stop()
            yield empty, seeded
        finally:
            postgres_database(args.postgres, names[0], "drop")
            if args.keep:
                print(f"kept the seeded database: {seeded}")
            else:
                postgres_database(args.postgres, names[1], "drop")


def measure(binary, database, args):
    service = Service(binary, database, args.smtp_port)
    try:
        out = subprocess.run(
            [binary, "bench", "--url", service.url, "--requests", str(args.requests),
             "--concurrency", str(args.concurrency), "--json"],
            check=True, capture_output=True, text=True).stdout
        return {m["mode"]: m for m in json.loads(out)["modes"]}
    finally:
        service.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smtp-port", type=int, default=1025)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "confirmd"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", help="keep the seeded database at this path (with --postgres: "
                                           "under this database name)")
    parser.add_argument("--postgres", metavar="URL",
                        help="a PostgreSQL server: measure on fresh databases there")
    args = parser.parse_args()

    with two_databases(args, "flat") as (empty, seeded):
        subprocess.run([sys.executable, os.path.join(HERE, "seed_users.py"),
                        "--users", str(args.users), seeded], check=True)
        # Alternating rounds, so that a busy moment of the machine cannot favour one database.
        results = {"empty": [], f"{args.users:,} users": []}
        for _ in range(args.rounds):
            results["empty"].append(measure(args.binary, empty, args))
            results[f"{args.users:,} users"].append(measure(args.binary, seeded, args))

    def median(label, mode, pick):
        values = sorted(pick(run[mode]) for run in results[label])
        return values[len(values) // 2]

    print(f"\n{'PostgreSQL' if args.postgres else 'SQLite'}: "
          f"{args.requests} signups per mode, concurrency {args.concurrency}, "
          f"median of {args.rounds} alternating rounds, latency in ms")
    labels = list(results)
    print(f"{'mode':<11} {'':<5} " + " ".join(f"{label:>16}" for label in labels) + f" {'ratio':>7}")
    for mode in ("sync", "background"):
        for p in ("p50", "p90", "p99"):
            values = [median(label, mode, lambda m: m["latency_ms"][p]) for label in labels]
            print(f"{mode:<11} {p:<5} " + " ".join(f"{v:>16.2f}" for v in values)
                  + f" {values[1] / values[0]:>7.2f}")
        throughput = [median(label, mode, lambda m: m["throughput"]) for label in labels]
        print(f"{mode:<11} {'req/s':<5} " + " ".join(f"{v:>16.0f}" for v in throughput)
              + f" {throughput[1] / throughput[0]:>7.2f}")
        delivered = [sum(run[mode]["delivered"] for run in results[label]) for label in labels]
        acked = [sum(run[mode]["acknowledged"] for run in results[label]) for label in labels]
        print(f"{mode:<11} {'sent':<5} " + " ".join(f"{d:>10}/{a:<5}" for d, a in zip(delivered, acked)))


if __name__ == "__main__":
    main()
