-- A claim is fenced by an id the claiming statement writes, not by its lease's end: a sender's
-- outcome is written only while the row still carries the claim id it was given. Two claims in
-- the same millisecond (a lease of 0, a clock stepped back) cannot then pass for each other, and
-- SQLite and PostgreSQL fence the same way. A row left `sending` by an older version has none:
-- its sender is gone with that version, and the sweeper takes it back when its lease runs out.
ALTER TABLE email_outbox ADD COLUMN claim_id INTEGER;
