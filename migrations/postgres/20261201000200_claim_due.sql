-- A claim of the oldest due rows walks the queue's index in order, whatever the table's
-- statistics say (src/store/postgres/outbox.rs: `NextDue` and the sent outcomes' statement).
--
-- The claim reads `email_outbox_due` from its oldest entry and stops at the first free rows:
-- a few pages at any queue length. PostgreSQL chose that plan from the table's statistics,
-- and a queue's statistics are wrong most of the time: its `queued` rows go from none to
-- tens of thousands within seconds of a burst, and back. A prepared statement keeps the
-- generic plan it settled on after five runs; planned on a table of about 1,000 rows never
-- analysed (a fresh database's first minute, or a server without autovacuum), it read the
-- queue's index as a bitmap and sorted every queued row to return the oldest one: 27 ms and
-- 1,700 buffers per claim with 45,000 rows queued, the database's core spent on it, and a
-- backlog drained at 105 to 600 emails a second (BENCHMARKS.md 9.5). The plan stayed until the next
-- ANALYZE.
--
-- In a function, the claim is planned with everything but that walk priced out (`SET`):
-- sorting, bitmap scans and sequential scans, and hash and merge joins, so the rows it finds are
-- updated through the primary key, one by one, and not by a join that reads the table (the plan
-- PostgreSQL chose for the join with statistics taken at 20 to 200 rows). PL/pgSQL keeps the
-- plan for the session, as a prepared statement would. The time limit is a subquery, computed
-- once, so the walk stops at the first row not yet due instead of reading a queue that backs
-- off to its end. `excluded` names rows the calling statement writes itself (the sent rows of
-- the outcomes' statement): the function claims on a snapshot of its own, taken after its
-- caller's, on which another instance may have put such a row back in the queue; claimed here,
-- the caller's own update of it would fail the whole statement.
CREATE FUNCTION confirmd_claim_due(wanted BIGINT, lease_ms BIGINT, claim_offset BIGINT,
                                   excluded BIGINT[])
    RETURNS TABLE (id BIGINT, claim_id BIGINT, kind TEXT, recipient TEXT, nonce BYTEA,
                   token_hash BYTEA, attempts BIGINT, request_id TEXT, trace_context TEXT,
                   created_at BIGINT)
    LANGUAGE plpgsql VOLATILE ROWS 1
    SET enable_sort = off
    SET enable_bitmapscan = off
    SET enable_seqscan = off
    SET enable_hashjoin = off
    SET enable_mergejoin = off
    AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH free AS (
        SELECT due.id FROM email_outbox due
        WHERE due.state = 'queued' AND due.next_attempt_at <= (SELECT confirmd_now_ms())
          AND due.id <> ALL (excluded)
        ORDER BY due.next_attempt_at
        LIMIT wanted
        FOR UPDATE SKIP LOCKED
    )
    UPDATE email_outbox o
    SET state = 'sending', lease_until = confirmd_now_ms() + lease_ms,
        attempts = o.attempts + 1, claim_id = nextval('email_outbox_claims') + claim_offset
    FROM free
    WHERE o.id = free.id
    RETURNING o.id, o.claim_id, o.kind, o.recipient, o.nonce, o.token_hash, o.attempts,
              o.request_id, o.trace_context, o.created_at;
END
$$;
