#!/usr/bin/env python3
"""Prints PostgreSQL's plan for every query confirmd runs there, and flags sequential scans.

    python3 benches/query_plans_pg.py postgres://postgres@127.0.0.1:5432/DATABASE

The queries are read from `.sqlx/` (the offline data of `sqlx::query!`; the PostgreSQL ones are
those of src/store/postgres/), so the list is complete and cannot drift from the code. Each is
prepared with its parameter types and explained as a generic plan (`plan_cache_mode =
force_generic_plan`: the plan PostgreSQL uses when it cannot look at the values, so a NULL
parameter cannot fold the statement away), through `psql`. Nothing is executed. A statement
that calls one of confirmd's PL/pgSQL functions shows only a `Function Scan`; the statement
inside the function is explained too, with the function's arguments as parameters and under
its `SET` clauses.

Run it against a database with many rows and fresh statistics (benches/flat_latency.py
--postgres seeds one, and --keep keeps it): on a nearly empty table a sequential scan is the
cheapest plan and says nothing. Two kinds of plan are flagged:

- a `Seq Scan on <table>`, which reads the whole table;
- a row asked for by its id (`id = $1`, `id = ANY ($1)`) that a scan finds by a `Filter:`,
  not by an `Index Cond:`: the scan reads everything its index holds to find the few rows
  asked for. A claim planned this way on the queue's partial index read the whole queue for
  every claim through a burst (BENCHMARKS.md 9.5).

Each statement is placed by the file of src/store/postgres/ it comes from: signup.rs and
outbox.rs are the request and worker paths, where a flag fails the run (exit 1); operator.rs,
health.rs and retention.rs serve operators, /metrics, the health probe and the pruner, and
their flags are listed, not failed. Needs psql; standard library only.
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
# A scan's filter (not a join's) that tests a column named id against a parameter.
BY_ID_FILTER = re.compile(r"^\s*Filter: .*\bid = (ANY \()?\$\d")


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


def explain(url, query, types, settings=()):
    statement = "confirmd_plan"
    params = f"({', '.join(types)})" if types else ""
    args = f"({', '.join(['NULL'] * len(types))})" if types else ""
    script = (
        "SET plan_cache_mode = force_generic_plan;\n"
        + "".join(f"SET {name} = {value};\n" for name, value in settings) +
        f"PREPARE {statement}{params} AS {query};\n"
        f"EXPLAIN EXECUTE {statement}{args};\n"
    )
    done = subprocess.run(
        ["psql", url, "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1"],
        input=script, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"psql failed on {squash(query)[:100]}:\n{done.stderr}")
    return [line for line in done.stdout.splitlines() if line.strip()]


def function_bodies(url):
    """The statement inside each of confirmd's PL/pgSQL functions of the form `RETURN QUERY
    <statement>;`, its arguments as parameters, under the function's own settings (its `SET`
    clauses): the claim of the due rows runs there (migrations/postgres/*_claim_due.sql), out
    of sight of an EXPLAIN of the statement that calls it."""
    done = subprocess.run(
        ["psql", url, "-X", "-q", "-At", "-F", "\t", "-v", "ON_ERROR_STOP=1", "-c",
         "SELECT proname, regexp_replace(prosrc, '\\s+', ' ', 'g'), array_to_json(proargnames), "
         "array_to_json(ARRAY(SELECT format_type(t, NULL) FROM unnest(proargtypes) AS t)), "
         "array_to_json(coalesce(proconfig, '{}')) "
         "FROM pg_proc JOIN pg_language l ON l.oid = prolang "
         "WHERE proname LIKE 'confirmd\\_%' AND l.lanname = 'plpgsql'"],
        capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"psql failed reading the functions:\n{done.stderr}")
    bodies = []
    for line in done.stdout.splitlines():
        name, source, names, types, config = line.split("\t")
        found = re.search(r"RETURN QUERY(.*?);\s*END", source)
        if not found:
            continue
        query = found.group(1)
        for n, arg in enumerate(json.loads(names)[:len(json.loads(types))], start=1):
            # The argument, not a column of that name (`due.id`) nor text in quotes.
            query = re.sub(rf"(?<![.\w\"'$]){arg}\b(?!\")", f"${n}", query)
        settings = [tuple(item.split("=", 1)) for item in json.loads(config)]
        bodies.append((f"outbox.rs: {name}()", query, json.loads(types), settings))
    return bodies


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
        statements.append((source_of(data["query"], sources), data["query"], types, ()))
    statements += function_bodies(url)
    hot_scans, other_scans = [], []
    for source, query, types, settings in sorted(statements):
        plan = explain(url, query, types, settings)
        print(f"[{source}] {squash(query)}")
        node = ""
        for line in plan:
            print(f"    {line}")
            if "->" in line or not node:
                node = line.replace("->", "").split("  (cost")[0].strip()
            flag = re.search(r"Seq Scan on (\w+)", line)
            if flag:
                flag = flag.group(0)
            elif BY_ID_FILTER.search(line):
                flag = f"{node}, rows by id through its filter"
            if flag:
                (hot_scans if source.startswith(HOT_PATHS) else other_scans).append((source, query, flag))
        print()
    print(f"{len(statements)} statements; sequential scans and rows by id through a filter on "
          f"the request and worker paths ({', '.join(HOT_PATHS)}): {len(hot_scans)}; "
          f"elsewhere: {len(other_scans)}")
    for source, query, scan in hot_scans + other_scans:
        print(f"  [{source}] {scan}: {squash(query)[:110]}")
    sys.exit(1 if hot_scans else 0)


if __name__ == "__main__":
    main()
