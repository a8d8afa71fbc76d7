-- confirmd's schema: the people who signed up, the token each was mailed, and the outbox of
-- emails still to send. Timestamps are Unix milliseconds (INTEGER): cheap to compare and index,
-- and free of time-zone and text-format ambiguity.

CREATE TABLE users (
    -- A UUIDv7 as text: not guessable from a neighbour's id, and time-ordered for the index.
    id           TEXT    PRIMARY KEY NOT NULL,
    -- As parsed: local part kept as typed, domain lower-cased. Unique regardless of case.
    email        TEXT    NOT NULL COLLATE NOCASE UNIQUE,
    name         TEXT,
    status       TEXT    NOT NULL CHECK (status IN ('pending', 'confirmed')),
    created_at   INTEGER NOT NULL,
    confirmed_at INTEGER
) STRICT;

-- One live token per user: signing up again replaces it, so the old link stops working.
-- Only the SHA-256 of the token is kept, so a leaked database cannot confirm anyone.
CREATE TABLE confirmation_tokens (
    token_hash BLOB    PRIMARY KEY NOT NULL,
    user_id    TEXT    NOT NULL UNIQUE REFERENCES users (id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
) STRICT;

-- The transactional outbox: one row per email to send, written in the signup's own transaction,
-- so an acknowledged signup always has its email on disk. Workers claim a row by moving it to
-- 'sending' with a lease; a crash mid-send leaves an expired lease that the sweeper takes back.
CREATE TABLE email_outbox (
    id              INTEGER PRIMARY KEY NOT NULL,
    user_id         TEXT    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    recipient       TEXT    NOT NULL,
    recipient_name  TEXT,
    -- The raw token the email links to. It has to wait here until the email is sent (the user
    -- table keeps only its hash); it is erased once the row is sent or superseded. A failed row
    -- keeps it, so an operator can put the email back in the queue.
    token           TEXT,
    mode            TEXT    NOT NULL CHECK (mode IN ('sync', 'background')),
    state           TEXT    NOT NULL CHECK (state IN ('queued', 'sending', 'sent', 'failed', 'superseded')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    lease_until     INTEGER,
    last_error      TEXT,
    -- The x-request-id of the signup, so the worker's span can be tied back to the request.
    request_id      TEXT,
    created_at      INTEGER NOT NULL,
    sent_at         INTEGER
) STRICT;

-- The sweeper's two questions: which queued rows are due, which leases have expired.
CREATE INDEX email_outbox_due ON email_outbox (state, next_attempt_at);
CREATE INDEX email_outbox_lease ON email_outbox (state, lease_until);
-- A user's latest email (GET /signups/{id}) and its older queued ones (superseded on re-signup).
CREATE INDEX email_outbox_user ON email_outbox (user_id, id);
