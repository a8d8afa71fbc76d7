-- The W3C trace context (`traceparent`) of the request that queued the email, so that its
-- delivery, even a retry hours later or after a restart, is traced as part of the signup's trace.
-- NULL when traces are not exported, and on rows queued before this column existed.
ALTER TABLE email_outbox ADD COLUMN trace_context TEXT;
