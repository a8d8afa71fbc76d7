-- The ids of a claim batch, as rows, for the claim statement (src/store/postgres/outbox.rs).
--
-- The claim looks each id up by the primary key. PostgreSQL estimates `unnest($1)` of an array
-- parameter at 10 rows when it plans without the value (the generic plan a prepared statement
-- settles on after five runs) and at the array's length when it plans with it (a custom plan,
-- for the few ids of a claim batch). Ten lookups then look dearer than the custom plans' few,
-- and PostgreSQL kept planning the claim afresh at every run, which added 0.2 to 0.35 ms to
-- the median pick-up (BENCHMARKS.md 9.5). This function returns the same rows, is not inlined
-- (it is STRICT, and a STRICT SQL function returning a set never is), and is estimated at one
-- row in either plan, so the generic plan is taken: lookups by key, at any table size.
CREATE FUNCTION confirmd_ids(ids BIGINT[]) RETURNS SETOF BIGINT
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE ROWS 1
    AS $$ SELECT unnest(ids) $$;
