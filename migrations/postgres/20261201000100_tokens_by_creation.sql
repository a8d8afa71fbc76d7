-- The pruner finds expired tokens by when they were created, not by when they expire, so that
-- sending an email no longer moves an index entry of its token.
--
-- A sent confirmation moves its token's `expires_at` (the link lasts `token.ttl_hours` from the
-- send, however long it queued). With `expires_at` indexed, that update wrote three index entries
-- (the key, the user, the expiry) and a new row version elsewhere in the table, for every email.
-- `created_at` never changes, and a link lasts `token.ttl_hours` from about its token's creation
-- or longer, so the pruner asks for tokens created more than that before the expiry it prunes,
-- and checks `expires_at` on those rows alone. (`created_at` is the server's clock as the row is
-- written, `expires_at` counts from the instance's clock as the request came in: a token may be
-- pruned later by that delay and any skew between the clocks, never earlier.) With no indexed column changed and room left on the
-- page (the fill factor), the update is a heap-only tuple update: one row version on the same
-- page, no index entry at all (BENCHMARKS.md 9.4).
DROP INDEX confirmation_tokens_expiry;
CREATE INDEX confirmation_tokens_created ON confirmation_tokens (created_at);
ALTER TABLE confirmation_tokens SET (fillfactor = 80);
