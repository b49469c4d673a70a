-- Quota counters of faultline_axum::limit (PgQuotaStore): one row per group (organisation),
-- bucket (policy key) and period end, so a period's usage stays readable after it ended until
-- it is pruned. Times are Unix microseconds, as the limit model counts them; the generated
-- column shows the end as a UTC timestamp for people reading the table.
CREATE TABLE limit_quotas (
    grp TEXT NOT NULL,
    bucket TEXT NOT NULL,
    resets_at_us BIGINT NOT NULL,
    used BIGINT NOT NULL CHECK (used >= 0),
    resets_at TIMESTAMPTZ GENERATED ALWAYS AS (to_timestamp(resets_at_us / 1000000.0)) STORED,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (grp, bucket, resets_at_us)
);

-- Pruning walks counters by the end of their period.
CREATE INDEX limit_quotas_by_end ON limit_quotas (resets_at_us);

-- Spends `p_cost` units of one quota bucket if the running period has room, as one step:
--
-- 1. a transaction-level advisory lock on the bucket serialises every spender of it (also the
--    first of a period, when no row exists yet to lock), until the caller's transaction ends;
-- 2. the running period is the bucket's row whose end is after `p_now` (PostgreSQL's clock when
--    `p_now` is NULL); none: a period starts, ending at the next UTC midnight (`p_kind` 0), the
--    next UTC month (1) or `p_days` days later (2);
-- 3. when `used + p_cost <= p_limit` the row is written with the new count.
--
-- A call that arrives after `p_deadline` (Unix microseconds on PostgreSQL's clock; NULL: no
-- deadline) spends nothing and fails: its caller has given up waiting (a stalled network can
-- deliver a statement late), so the unit must not count.
--
-- Returns the instant decided at, the period's end and the units used BEFORE this request
-- (the caller applies the model's formulas to them), and whether it spent.
CREATE FUNCTION faultline_quota_spend(
    p_group TEXT,
    p_bucket TEXT,
    p_now BIGINT,
    p_kind SMALLINT,
    p_days INTEGER,
    p_limit BIGINT,
    p_cost BIGINT,
    p_deadline BIGINT,
    OUT o_now BIGINT,
    OUT o_resets_at BIGINT,
    OUT o_used_before BIGINT,
    OUT o_spent BOOLEAN
) LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    -- The bucket's lock is held until COMMIT: that COMMIT does not wait for the disk (a crash
    -- of the server may forget the last fraction of a second of spending, never corrupt it).
    IF p_deadline IS NOT NULL
        AND floor(extract(epoch FROM clock_timestamp()) * 1000000)::BIGINT > p_deadline THEN
        RAISE EXCEPTION 'the caller''s deadline passed' USING ERRCODE = 'query_canceled';
    END IF;
    PERFORM set_config('synchronous_commit', 'off', true);
    PERFORM pg_advisory_xact_lock(hashtext(p_group), hashtext(p_bucket));
    o_now := COALESCE(p_now, floor(extract(epoch FROM clock_timestamp()) * 1000000)::BIGINT);
    SELECT q.resets_at_us, q.used INTO o_resets_at, o_used_before
        FROM limit_quotas q
        WHERE q.grp = p_group AND q.bucket = p_bucket AND q.resets_at_us > o_now
        ORDER BY q.resets_at_us DESC
        LIMIT 1;
    IF NOT FOUND THEN
        o_used_before := 0;
        o_resets_at := CASE p_kind
            WHEN 0 THEN (div(o_now, 86400000000) + 1) * 86400000000
            WHEN 1 THEN (extract(epoch FROM date_trunc('month',
                    to_timestamp(div(o_now, 86400000000) * 86400) AT TIME ZONE 'UTC')
                    + interval '1 month') * 1000000)::BIGINT
            ELSE o_now + p_days::BIGINT * 86400000000
        END;
    END IF;
    o_spent := o_used_before::NUMERIC + p_cost <= p_limit;
    IF o_spent THEN
        INSERT INTO limit_quotas (grp, bucket, resets_at_us, used)
            VALUES (p_group, p_bucket, o_resets_at, o_used_before + p_cost)
            ON CONFLICT ON CONSTRAINT limit_quotas_pkey
            DO UPDATE SET used = EXCLUDED.used, updated_at = now();
    END IF;
END;
$$;
