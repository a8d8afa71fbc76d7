#!/usr/bin/env python3
"""Prints PostgreSQL's plan for every query confirmd runs there, and flags sequential scans.

    python3 benches/query_plans_pg.py postgres://postgres@127.0.0.1:5432/DATABASE

The queries are read from `.sqlx/` (the offline data of `sqlx::query!`; the PostgreSQL ones are
those of src/store/postgres/), so the list is complete and cannot drift from the code. Each is
prepared with its parameter types and explained as a generic plan (`plan_cache_mode =
force_generic_plan`: the plan PostgreSQL uses when it cannot look at the values, so a NULL
parameter cannot fold the statement away), through `psql`. Nothing is executed.

Run it against a database with many rows and fresh statistics (benches/flat_latency.py
--postgres seeds one, and --keep keeps it): on a nearly empty table a sequential scan is the
cheapest plan and says nothing. A `Seq Scan on <table>` reads the whole table. Each statement is
placed by the file of src/store/postgres/ it comes from: signup.rs and outbox.rs are the
request and worker paths, where a scan fails the run (exit 1); operator.rs and health.rs serve
operators, /metrics and the health probe, and their scans are listed, not failed. Needs psql;
standard library only.
"""

import glob
import json
import os
import re
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
STORE = os.path.join(ROOT, "src", "store", "postgres")
HOT_PATHS = ("signup.rs", "outbox.rs")


def pg_type(sqlx_name):
    """The SQL type of a parameter as sqlx's offline data names it: Int8, Text, Int8Array, ..."""
    if sqlx_name.endswith("Array"):
        return pg_type(sqlx_name[: -len("Array")]) + "[]"
    return sqlx_name.lower()


def squash(text):
    return " ".join(text.split())


def source_of(query, sources):
    """The file of src/store/postgres/ whose text holds the start of `query`."""
    head = squash(query)[:60]
    for name, text in sources.items():
        if head in text:
            return name
    return "?"


def explain(url, query, types):
    statement = "confirmd_plan"
    params = f"({', '.join(types)})" if types else ""
    args = f"({', '.join(['NULL'] * len(types))})" if types else ""
    script = (
        "SET plan_cache_mode = force_generic_plan;\n"
        f"PREPARE {statement}{params} AS {query};\n"
        f"EXPLAIN EXECUTE {statement}{args};\n"
    )
    done = subprocess.run(
        ["psql", url, "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1"],
        input=script, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"psql failed on {squash(query)[:100]}:\n{done.stderr}")
    return [line for line in done.stdout.splitlines() if line.strip()]


def main():
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    url = sys.argv[1]
    # The Rust sources with escapes undone, so a query's text can be found in them.
    sources = {
        os.path.basename(path): squash(open(path).read().replace('\\"', '"').replace("\\n", " "))
        for path in glob.glob(os.path.join(STORE, "*.rs"))
    }
    statements = []
    for path in sorted(glob.glob(os.path.join(ROOT, ".sqlx", "query-*.json"))):
        data = json.load(open(path))
        if data.get("db_name") != "PostgreSQL":
            continue
        types = [pg_type(t) for t in data["describe"]["parameters"].get("Left", [])]
        statements.append((source_of(data["query"], sources), data["query"], types))
    hot_scans, other_scans = [], []
    for source, query, types in sorted(statements):
        plan = explain(url, query, types)
        print(f"[{source}] {squash(query)}")
        for line in plan:
            print(f"    {line}")
            scan = re.search(r"Seq Scan on (\w+)", line)
            if scan:
                (hot_scans if source in HOT_PATHS else other_scans).append((source, query, scan.group(0)))
        print()
    print(f"{len(statements)} statements; sequential scans on the request and worker paths "
          f"({', '.join(HOT_PATHS)}): {len(hot_scans)}; elsewhere: {len(other_scans)}")
    for source, query, scan in hot_scans + other_scans:
        print(f"  [{source}] {scan}: {squash(query)[:110]}")
    sys.exit(1 if hot_scans else 0)


if __name__ == "__main__":
    main()
