-- The queue's two indexes hold only the rows they serve, as on PostgreSQL: the queued rows by due
-- time, the rows being sent by the end of their lease. Each held every row before, the state
-- first, so each of an email's three writes (signup, claim, outcome) rewrote an entry in both,
-- and the sent rows, nearly all of the table, stayed in both for good: 98 MiB of a 638 MiB file
-- at 3,000,000 sent rows (BENCHMARKS.md, section 2). Now a row is in one of them only while it
-- is queued or being sent. On a large file this migration reads the table once, to build the two
-- indexes: about a second per million rows here.
--
-- `confirmd outbox`, which counts every state, now reads the table for it, as it does on
-- PostgreSQL: it is an operator's command, and it must see a state this build does not know.
DROP INDEX email_outbox_due;
DROP INDEX email_outbox_lease;
CREATE INDEX email_outbox_due ON email_outbox (next_attempt_at) WHERE state = 'queued';
CREATE INDEX email_outbox_lease ON email_outbox (lease_until) WHERE state = 'sending';
