-- The writer's probe (src/store/health.rs): while the database refuses writes, the writer inserts a
-- row here with a blob as large as a signup needs at most, and deletes it in the same transaction.
-- Its commit proves what a signup needs: the write lock, free pages, a WAL that takes frames.
-- The table is empty between probes.
CREATE TABLE write_probe (
    id INTEGER PRIMARY KEY,
    room BLOB NOT NULL
);
