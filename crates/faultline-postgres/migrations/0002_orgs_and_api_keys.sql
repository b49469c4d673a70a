-- Organisations (tenants) and their API keys (faultline_axum::auth). Only the SHA-256 of a key
-- is stored. Times are Unix seconds, as the authenticator's clock gives them.
CREATE TABLE orgs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    active BOOLEAN NOT NULL,
    deleted_at BIGINT,
    created_at BIGINT NOT NULL,
    tier TEXT
);

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs (id),
    name TEXT NOT NULL,
    display_prefix TEXT NOT NULL,
    key_sha256 BYTEA NOT NULL UNIQUE CHECK (octet_length(key_sha256) = 32),
    scopes TEXT[] NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('active', 'paused', 'revoked')),
    expires_at BIGINT,
    created_at BIGINT NOT NULL
);

-- Listings page through an organisation's keys by creation time, then id.
CREATE INDEX api_keys_by_org_page ON api_keys (org_id, created_at, id);
