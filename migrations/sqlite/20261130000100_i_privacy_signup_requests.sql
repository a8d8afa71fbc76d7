-- Signup requests, several live links per user, and no token at rest.
--
-- * Each outbox row is one signup request, known to its sender by `signup_id`, a random UUID
--   that says nothing about the user (POST /signups returns it; GET /signups/{id} shows it).
-- * `kind` says what the row sends: the confirmation link, a short notice to an address that is
--   already confirmed, or nothing at all (an email to this address went out less than the
--   resend interval ago). The requester cannot tell the three apart.
-- * The row keeps no token. It keeps a random `nonce`, and the token is derived when the email
--   is built: HMAC-SHA256(server secret, nonce). The secret lives outside the database, so a
--   copy of every database file is not enough to confirm anyone. `token_hash` says which row of
--   confirmation_tokens the link belongs to. The old `token` column stays for emails queued
--   before this migration, and is erased as they are sent.

ALTER TABLE email_outbox ADD COLUMN signup_id TEXT;
ALTER TABLE email_outbox ADD COLUMN kind TEXT NOT NULL DEFAULT 'confirmation'
    CHECK (kind IN ('confirmation', 'account_notice', 'suppressed'));
ALTER TABLE email_outbox ADD COLUMN nonce BLOB;
ALTER TABLE email_outbox ADD COLUMN token_hash BLOB;

CREATE UNIQUE INDEX email_outbox_signup ON email_outbox (signup_id) WHERE signup_id IS NOT NULL;
-- `confirmd outbox` counts what the requests sent. Most rows are confirmations: the index holds
-- only the others (and confirmations are the rest of the total).
CREATE INDEX email_outbox_kind ON email_outbox (kind) WHERE kind != 'confirmation';

-- Until now a user had one token, so an older row's link is that token.
UPDATE email_outbox
SET token_hash = (SELECT t.token_hash FROM confirmation_tokens t WHERE t.user_id = email_outbox.user_id)
WHERE token IS NOT NULL;

-- A link already sent keeps working when the address signs up again: several live tokens per
-- user (the UNIQUE on user_id goes, which in SQLite takes a rebuild). Each token keeps the name
-- its request gave; it becomes the user's name only when that link is confirmed, so someone who
-- has not proven the mailbox cannot rename its owner.
CREATE TABLE confirmation_tokens_new (
    token_hash BLOB    PRIMARY KEY NOT NULL,
    user_id    TEXT    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name       TEXT,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
) STRICT;
INSERT INTO confirmation_tokens_new (token_hash, user_id, created_at, expires_at)
SELECT token_hash, user_id, created_at, expires_at FROM confirmation_tokens;
DROP TABLE confirmation_tokens;
ALTER TABLE confirmation_tokens_new RENAME TO confirmation_tokens;
CREATE INDEX confirmation_tokens_user ON confirmation_tokens (user_id);
