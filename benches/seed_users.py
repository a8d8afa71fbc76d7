#!/usr/bin/env python3
"""Fills a confirmd database with N users who signed up in the past (for the flat-latency benchmark).

    python3 benches/seed_users.py --users 1000000 /path/to/confirmd.db
    python3 benches/seed_users.py --users 1000000 postgres://postgres@127.0.0.1:5432/DATABASE

The database must exist and be migrated: start confirmd on it once (it migrates at start) and
stop it, then seed, then start it again and measure. Each seeded user has what a real one
leaves behind: a user row (half of them confirmed), a token, and a sent outbox row, with
timestamps spread over the past year. The rows are generated inside the database (SQLite's
recursive query, PostgreSQL's generate_series, through psql), so a million users take about a
minute. Standard library only.
"""

import argparse
import sqlite3
import subprocess
import time

# The same rows on PostgreSQL, in its schema (migrations/postgres/): UUID ids from the index,
# 32-byte token hashes, an outbox row per user with a signup id of its own.
POSTGRES_SEED = """
BEGIN;
INSERT INTO users (id, email, name, status, created_at, confirmed_at)
SELECT md5('seed-' || i)::uuid, 'seed.' || i || '@example.com', 'Seeded User',
       CASE WHEN i % 2 = 0 THEN 'confirmed' ELSE 'pending' END,
       :start + i * (:year / :users),
       CASE WHEN i % 2 = 0 THEN :start + i * (:year / :users) + 60000 END
FROM generate_series(1, :users) AS i;
INSERT INTO confirmation_tokens (token_hash, user_id, created_at, expires_at)
SELECT decode(md5('token-' || email) || md5('hash-' || email), 'hex'), id, created_at,
       created_at + 86400000
FROM users WHERE email LIKE 'seed.%';
INSERT INTO email_outbox (signup_id, user_id, kind, recipient, token_hash, mode, state, attempts,
                          next_attempt_at, created_at, sent_at)
SELECT 'seed-' || id, id, 'confirmation', email,
       decode(md5('token-' || email) || md5('hash-' || email), 'hex'),
       CASE WHEN created_at % 3 = 0 THEN 'sync' ELSE 'background' END,
       'sent', 1, created_at, created_at, created_at + 80
FROM users WHERE email LIKE 'seed.%';
COMMIT;
VACUUM ANALYZE;
SELECT (SELECT COUNT(*) FROM users), (SELECT COUNT(*) FROM confirmation_tokens),
       (SELECT COUNT(*) FROM email_outbox);
"""


def seed_postgres(url, users, start):
    began = time.monotonic()
    done = subprocess.run(
        ["psql", url, "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-v", f"users={users}",
         "-v", f"start={start}", "-v", f"year={YEAR_MS}"],
        input=POSTGRES_SEED, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"seeding {url} failed:\n{done.stderr}")
    counts = done.stdout.strip().splitlines()[-1].split("|")
    print(f"seeded in {time.monotonic() - began:.1f} s: users {counts[0]}, "
          f"confirmation_tokens {counts[1]}, email_outbox {counts[2]}")

YEAR_MS = 365 * 24 * 3600 * 1000


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("database",
                        help="path to a migrated confirmd SQLite file, or a postgres:// URL")
    parser.add_argument("--users", type=int, default=1_000_000)
    args = parser.parse_args()
    if args.database.startswith(("postgres://", "postgresql://")):
        seed_postgres(args.database, args.users, int(time.time() * 1000) - YEAR_MS)
        return

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
