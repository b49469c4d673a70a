-- Placeholder: replaced by the idempotency schema.
SELECT 1;
