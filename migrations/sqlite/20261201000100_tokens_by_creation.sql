-- The pruner finds expired tokens by when they were created, not by when they expire, so that
-- sending an email no longer moves an index entry of its token.
--
-- A sent confirmation moves its token's `expires_at` (the link lasts `token.ttl_hours` from the
-- send, however long it queued); with `expires_at` indexed, the single writer deleted and
-- inserted an entry of that index for every email. `created_at` never changes, and a link never
-- expires before its token is `token.ttl_hours` old, so the pruner asks for tokens created more
-- than that before the expiry it prunes, and checks `expires_at` on those rows alone. On a large
-- file this migration reads the tokens once, to build the index.
DROP INDEX confirmation_tokens_expiry;
CREATE INDEX confirmation_tokens_created ON confirmation_tokens (created_at);
