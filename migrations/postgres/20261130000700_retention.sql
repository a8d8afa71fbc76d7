-- Retention: the pruner deletes sent and superseded emails after `retention.sent_days`, failed
-- ones after `retention.failed_days`, pending signups whose every link has expired, and the
-- expired tokens of confirmed users. Each of its statements reads only the rows it may delete,
-- off one of these indexes, so a prune batch costs the same at any table size. `/metrics`
-- counts queued, sending and failed rows off the partial indexes of the initial schema.

-- Sent and superseded rows by age: the bulk of the table, deleted oldest first.
CREATE INDEX email_outbox_done ON email_outbox (created_at) WHERE state IN ('sent', 'superseded');
-- Failed rows by age: deleted after the longer age, and they keep their pending signup until then.
CREATE INDEX email_outbox_failed_age ON email_outbox (created_at) WHERE state = 'failed';
-- Tokens by expiry: where the pruner finds signups whose links have all expired.
CREATE INDEX confirmation_tokens_expiry ON confirmation_tokens (expires_at);
