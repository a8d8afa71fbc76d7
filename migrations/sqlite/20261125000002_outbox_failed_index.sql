-- Failed emails are few, and only the operator's `confirmd outbox` asks for them. Once the
-- database has statistics (ANALYZE, PRAGMA optimize), SQLite sees that `state` has a handful of
-- values over the whole table and judges the state indexes too coarse for `state = 'failed'`,
-- so it read every row of the outbox. A partial index holds only the failed rows.
CREATE INDEX email_outbox_failed ON email_outbox (id) WHERE state = 'failed';
