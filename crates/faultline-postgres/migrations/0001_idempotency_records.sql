-- Idempotency records (faultline_axum::idempotency): one row per scope and key, either a claim
-- (status IS NULL, held until its lease ends) or a completed response (kept until its
-- retention ends). Times are Unix milliseconds, as the layer's clock gives them; the generated
-- column shows the same instant as a UTC timestamp for people reading the table.
CREATE TABLE idempotency_records (
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    fingerprint BYTEA NOT NULL,
    lease_id BIGINT NOT NULL,
    status SMALLINT,
    headers BYTEA,
    body BYTEA,
    expires_at_ms BIGINT NOT NULL,
    expires_at TIMESTAMPTZ GENERATED ALWAYS AS (to_timestamp(expires_at_ms / 1000.0)) STORED,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key),
    CHECK ((status IS NULL) = (body IS NULL))
);

-- Pruning walks records by the end of their life.
CREATE INDEX idempotency_records_expiry ON idempotency_records (expires_at_ms);
