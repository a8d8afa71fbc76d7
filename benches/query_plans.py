#!/usr/bin/env python3
"""Prints SQLite's plan for every query confirmd runs, and flags full table scans.

    python3 benches/query_plans.py /path/to/confirmd.db

The queries are read from `.sqlx/` (the offline data of `sqlx::query!`, one file per statement
of src/store/sqlite/), so the list is complete and cannot drift from the code. Each is explained with
EXPLAIN QUERY PLAN against the given database, parameters bound to NULL (the plan depends on
the indexes, not on the values). A line with `SCAN <table>` over a real table means the
statement reads the whole table; `SCAN json_each` is the JSON array of a group commit's rows,
`SEARCH` is an index lookup; `SCAN <table> USING INDEX <partial index>` reads only the rows
the partial index holds; `SCAN <table> USING COVERING INDEX` reads a whole index (the total
that `confirmd outbox` counts kinds against). Exits 1 if any statement but `confirmd outbox`'s count
of every state scans a table. Standard library only.
"""

import glob
import json
import os
import re
import sqlite3
import sys

# `confirmd outbox` counts the rows of every state, known or not (src/store/sqlite/operator.rs): an
# operator's command, which reads the whole table by design, as on PostgreSQL. Reported, allowed.
OPERATOR_COUNT = 'SELECT state AS "state!", COUNT(*)'


def is_table_scan(detail, partial_indexes):
    """A step that reads every row of a table (or of an index as large as the table)."""
    scan = re.match(r"SCAN (\w+)(?: USING (COVERING )?INDEX (\w+))?", detail)
    # `SCAN s VIRTUAL TABLE`: a group's JSON array under an alias (`FROM json_each(?1) AS s`).
    if not scan or scan.group(1) in ("json_each", "CONSTANT") or "VIRTUAL TABLE" in detail:
        return False
    index = scan.group(3)
    # A partial index holds only the rows its WHERE selects (say, the failed emails).
    return index not in partial_indexes and not scan.group(2)


def main():
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    conn = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
    scans, operator = [], []
    partial_indexes = {
        name for name, sql in conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index'")
        if sql and " WHERE " in sql.upper()
    }
    try:
        conn.execute("SELECT unhex('00')")
        has_unhex = True
    except sqlite3.OperationalError:
        has_unhex = False
    statements = 0
    for path in sorted(glob.glob(os.path.join(root, ".sqlx", "query-*.json"))):
        data = json.load(open(path))
        # The PostgreSQL backend's statements are benches/query_plans_pg.py's.
        if data.get("db_name", "SQLite") != "SQLite":
            continue
        statements += 1
        query = data["query"]
        params = len(set(re.findall(r"\?\d+", query))) or query.count("?")
        if not has_unhex:
            # Python's SQLite may predate unhex() (3.41); the plan does not depend on it.
            query = query.replace("unhex(", "(")
        plan = conn.execute("EXPLAIN QUERY PLAN " + query, [None] * params).fetchall()
        print(" ".join(query.split()))
        for _, _, _, detail in plan:
            print(f"    {detail}")
            if is_table_scan(detail, partial_indexes):
                (operator if query.startswith(OPERATOR_COUNT) else scans).append((query, detail))
        print()
    print(f"{statements} statements; full table scans: {len(scans)}, "
          f"and {len(operator)} for `confirmd outbox` only")
    for query, detail in scans + operator:
        print(f"  {detail}: {' '.join(query.split())[:120]}")
    sys.exit(1 if scans else 0)


if __name__ == "__main__":
    main()
