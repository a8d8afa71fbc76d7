#!/usr/bin/env python3
"""Fills a confirmd database with N users who signed up in the past (for the flat-latency benchmark).

    python3 benches/seed_users.py --users 1000000 /path/to/confirmd.db

The database must exist and be migrated: start confirmd on it once (it migrates at start) and
stop it, then seed, then start it again and measure. Each seeded user has what a real one
leaves behind: a user row (half of them confirmed), a token, and a sent outbox row, with
timestamps spread over the past year. The rows are generated inside SQLite by a recursive
query, so a million users take about a minute. Standard library only.
"""

import argparse
import sqlite3
import time

YEAR_MS = 365 * 24 * 3600 * 1000


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("database", help="path to a migrated confirmd SQLite file")
    parser.add_argument("--users", type=int, default=1_000_000)
    args = parser.parse_args()

    conn = sqlite3.connect(args.database, isolation_level=None)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not {"users", "confirmation_tokens", "email_outbox"} <= tables:
        raise SystemExit(f"{args.database} is not a migrated confirmd database: start confirmd on it once")
    start = int(time.time() * 1000) - YEAR_MS
    began = time.monotonic()
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("BEGIN IMMEDIATE")
    # The user's index i gives every value: ids sort by signup time, like UUIDv7s.
    conn.execute(
        """
        WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :users)
        INSERT INTO users (id, email, name, status, created_at, confirmed_at)
        SELECT printf('seed-%012d', i), printf('seed.%d@example.com', i), 'Seeded User',
               CASE WHEN i % 2 = 0 THEN 'confirmed' ELSE 'pending' END,
               :start + i * (:year / :users),
               CASE WHEN i % 2 = 0 THEN :start + i * (:year / :users) + 60000 END
        FROM n
        """,
        {"users": args.users, "start": start, "year": YEAR_MS},
    )
    conn.execute(
        """
        INSERT INTO confirmation_tokens (token_hash, user_id, created_at, expires_at)
        SELECT randomblob(32), id, created_at, created_at + 86400000 FROM users
        WHERE id LIKE 'seed-%'
        """
    )
    conn.execute(
        """
        INSERT INTO email_outbox (user_id, recipient, recipient_name, token, mode, state, attempts,
                                  next_attempt_at, lease_until, created_at, sent_at)
        SELECT id, email, name, NULL, CASE WHEN rowid % 3 = 0 THEN 'sync' ELSE 'background' END,
               'sent', 1, created_at, NULL, created_at, created_at + 80
        FROM users WHERE id LIKE 'seed-%'
        """
    )
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    counts = {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
              for t in ("users", "confirmation_tokens", "email_outbox")}
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    print(f"seeded in {time.monotonic() - began:.1f} s: {counts}")


if __name__ == "__main__":
    main()
