-- confirmd's schema on PostgreSQL: the end state of migrations/sqlite/ in one file, for a
-- database shared by any number of instances. The records that cross the store's seam are the
-- same on both engines; the types here are PostgreSQL's own where that changes none of them.
-- Timestamps stay Unix milliseconds (BIGINT), as on SQLite: the seam speaks them, and the
-- instances compare them with `confirmd_now_ms()`, the server's clock, never their own.

-- The server's clock in Unix milliseconds: what leases and due times are set and compared by.
-- clock_timestamp(), not now(): now() is the start of the transaction, and a lease set late in
-- a long one would be short by that much.
CREATE FUNCTION confirmd_now_ms() RETURNS BIGINT
    LANGUAGE sql VOLATILE PARALLEL SAFE
    AS $$ SELECT (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT $$;

CREATE TABLE users (
    -- A UUIDv7: not guessable from a neighbour's id, and time-ordered for the index.
    id           UUID    PRIMARY KEY,
    -- The address's comparison key (lower-cased local part @ ASCII domain): one mailbox, one
    -- user. Two instances signing one address up at once meet on this constraint.
    email        TEXT    NOT NULL UNIQUE,
    name         TEXT,
    status       TEXT    NOT NULL CHECK (status IN ('pending', 'confirmed')),
    created_at   BIGINT  NOT NULL,
    confirmed_at BIGINT
);

-- Several live links per user: signing up again adds a token, and the links already sent keep
-- working. Only the SHA-256 of a token is kept, with the name its request gave (the user takes
-- it only when that link is confirmed).
CREATE TABLE confirmation_tokens (
    token_hash BYTEA   PRIMARY KEY,
    user_id    UUID    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name       TEXT,
    created_at BIGINT  NOT NULL,
    expires_at BIGINT  NOT NULL
);
CREATE INDEX confirmation_tokens_user ON confirmation_tokens (user_id);

-- Claim ids: each claim of an outbox row takes the next one, so no two claims of any row,
-- on any instance, share one (see email_outbox.claim_id).
CREATE SEQUENCE email_outbox_claims AS BIGINT;

-- The transactional outbox: one row per signup request, written in the signup's own
-- transaction, so an acknowledged signup always has its email in the database. A sender claims
-- a row by moving it to 'sending' under a lease and a fresh claim id; it records the outcome
-- only while the row still carries that claim id.
CREATE TABLE email_outbox (
    id              BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The request's public id, a random UUID (text: it is whatever a client put in a URL).
    signup_id       TEXT    NOT NULL UNIQUE,
    user_id         UUID    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind            TEXT    NOT NULL CHECK (kind IN ('confirmation', 'account_notice', 'suppressed')),
    -- The address as the request typed it.
    recipient       TEXT    NOT NULL,
    -- The token is HMAC(server secret, nonce), derived when the email is built; no token is
    -- ever stored. `token_hash` names the confirmation_tokens row the link belongs to.
    nonce           BYTEA,
    token_hash      BYTEA,
    mode            TEXT    NOT NULL CHECK (mode IN ('sync', 'background')),
    state           TEXT    NOT NULL CHECK (state IN ('queued', 'sending', 'sent', 'failed', 'superseded')),
    attempts        BIGINT  NOT NULL DEFAULT 0,
    next_attempt_at BIGINT  NOT NULL,
    lease_until     BIGINT,
    claim_id        BIGINT,
    last_error      TEXT,
    -- The x-request-id of the signup, so the worker's span can be tied back to the request.
    request_id      TEXT,
    -- The signup's trace context, for tracing the send back to the request (not written yet).
    trace_context   TEXT,
    created_at      BIGINT  NOT NULL,
    sent_at         BIGINT
);

-- The sweeper's two questions, each over only the rows it asks about: which queued rows are
-- due, which leases ran out. Partial indexes stay small however many sent rows pile up.
CREATE INDEX email_outbox_due ON email_outbox (next_attempt_at) WHERE state = 'queued';
CREATE INDEX email_outbox_lease ON email_outbox (lease_until) WHERE state = 'sending';
-- A user's last email (the resend interval) and the operator's requeue.
CREATE INDEX email_outbox_user ON email_outbox (user_id, created_at);
-- The operator's `confirmd outbox`: failed emails, and the kinds other than confirmations.
CREATE INDEX email_outbox_failed ON email_outbox (id) WHERE state = 'failed';
CREATE INDEX email_outbox_kind ON email_outbox (kind) WHERE kind <> 'confirmation';
