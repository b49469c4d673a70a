//! [`PgIdempotencyStore`]: idempotency records in PostgreSQL, shared by every process of an API.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use faultline::idempotency::Fingerprint;
use faultline_axum::StoreError;
use faultline_axum::idempotency::store::{StoreFuture, millis};
use faultline_axum::idempotency::{
    ClaimOutcome, ClaimRequest, ClaimToken, IdempotencyStore, StoredResponse,
};
use http::StatusCode;
use tokio_postgres::Row;

use crate::pool::{PgPool, PgTransaction};

/// The latest instant stored (9999-12-31T23:59:59.999Z, Unix milliseconds): a lease or a
/// retention that would end later ends then.
const END_OF_TIME_MS: i64 = 253_402_300_799_999;

/// The claim: take the key when there is no record or only an expired one, in one statement.
/// When the key is held, the same statement reads the record that holds it (as of the
/// statement's snapshot).
const CLAIM: &str = "
WITH claimed AS (
    INSERT INTO idempotency_records AS r
        (scope, key, fingerprint, lease_id, status, headers, body, expires_at_ms)
    VALUES ($1, $2, $3, $4, NULL, NULL, NULL, $5)
    ON CONFLICT (scope, key) DO UPDATE SET
        fingerprint = EXCLUDED.fingerprint,
        lease_id = EXCLUDED.lease_id,
        status = NULL,
        headers = NULL,
        body = NULL,
        expires_at_ms = EXCLUDED.expires_at_ms,
        created_at = now()
    WHERE r.expires_at_ms <= $6
    RETURNING 1
)
SELECT TRUE, NULL::BYTEA, NULL::SMALLINT, NULL::BYTEA, NULL::BYTEA, NULL::BIGINT FROM claimed
UNION ALL
SELECT FALSE, fingerprint, status, headers, body, expires_at_ms
FROM idempotency_records
WHERE scope = $1 AND key = $2 AND NOT EXISTS (SELECT 1 FROM claimed)";

/// The record that holds a key: read before claiming (a live record needs no write), and again
/// when the claim's snapshot predates the record that refused it (a concurrent claim committed
/// while this one waited).
const HOLDER: &str = "
SELECT FALSE, fingerprint, status, headers, body, expires_at_ms
FROM idempotency_records WHERE scope = $1 AND key = $2";

const COMPLETE: &str = "
UPDATE idempotency_records SET status = $4, headers = $5, body = $6, expires_at_ms = $7
WHERE scope = $1 AND key = $2 AND lease_id = $3 AND status IS NULL";

const RELEASE: &str = "
DELETE FROM idempotency_records
WHERE scope = $1 AND key = $2 AND lease_id = $3 AND status IS NULL";

/// Deletes one batch of ended records; records another process is pruning (or claiming) right
/// now are skipped, not waited for.
const PRUNE: &str = "
DELETE FROM idempotency_records
WHERE (scope, key) IN (
    SELECT scope, key FROM idempotency_records
    WHERE expires_at_ms <= $1
    ORDER BY expires_at_ms
    LIMIT $2
    FOR UPDATE SKIP LOCKED
) AND expires_at_ms <= $1";

/// How many times a claim looks again for a record that vanished or ended between its two
/// statements before it reports the key as busy.
const CLAIM_ATTEMPTS: usize = 8;

/// Idempotency records in the table `idempotency_records` (created by
/// [`crate::migrate()`]).
///
/// # A claim is one atomic statement
///
/// `INSERT … ON CONFLICT (scope, key) DO UPDATE … WHERE the record has ended RETURNING`: of
/// any number of concurrent claims of one key, in one process or many, exactly one inserts
/// (or takes over an ended record); the others read the record that holds the key and answer
/// in progress, replay or mismatch. A claim first reads the key's record: when it is live, the
/// answer comes from that read alone (a replay costs one indexed read, no lock, no commit);
/// the decision to take the key is never made from a read, only by the atomic statement.
///
/// # Completion and release only touch their own claim
///
/// Both match the claim's random lease id and an uncompleted record, so a claim taken over
/// after its lease ended can no longer be completed or released by its first holder.
///
/// # Pruning never blocks requests
///
/// [`IdempotencyStore::prune`] deletes at most `limit` ended records per call, oldest first,
/// skipping rows locked by a concurrent claim or another pruner (`FOR UPDATE SKIP LOCKED`).
///
/// # Outages are unavailable, within the pool's deadline
///
/// Every statement runs through the [`PgPool`], so an unreachable or stalled server gives
/// [`StoreError::is_unavailable`] (the catalog's 503 with `Retry-After`) within the
/// statement deadline.
///
/// # Replays are answered from memory once seen
///
/// A completed record never changes before its retention ends (completion is final, a
/// takeover needs an ended record, release only frees claims, pruning only deletes ended
/// records), so each store keeps the completed records it has read, up to
/// [`DEFAULT_REPLAY_CACHE`] of them (see [`PgIdempotencyStore::with_replay_cache`]), and
/// answers later claims of the same key from memory until the record's end. A replay then
/// costs no round trip, and keeps working while the database is unreachable.
#[derive(Debug, Clone)]
pub struct PgIdempotencyStore {
    pool: PgPool,
    replays: Arc<ReplayCache>,
}

/// How many completed records a [`PgIdempotencyStore`] keeps in memory by default.
pub const DEFAULT_REPLAY_CACHE: usize = 10_000;

/// Responses larger than this are never kept in memory (they are replayed from the database).
const MAX_CACHED_BODY: usize = 64 * 1024;

/// A completed record as the cache keeps it.
#[derive(Debug, Clone)]
struct Completed {
    fingerprint: Fingerprint,
    response: StoredResponse,
    expires_at: i64,
}

/// Completed records by scope and key, bounded: when full, ended records are dropped, and if
/// none has ended, nothing new is kept.
#[derive(Debug)]
struct ReplayCache {
    capacity: usize,
    entries: Mutex<HashMap<(String, String), Completed>>,
}

impl ReplayCache {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<(String, String), Completed>) -> T) -> T {
        // Every write is one insert, remove or retain: a poisoned map is still whole.
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut entries)
    }

    /// What the cached record of the request's key says, if it is cached and has not ended.
    fn answer(&self, request: &ClaimRequest) -> Option<ClaimOutcome> {
        if self.capacity == 0 {
            return None;
        }
        let id = (request.scope.clone(), request.key.as_str().to_owned());
        self.with(|entries| {
            let completed = entries.get(&id)?;
            if completed.expires_at <= request.now {
                entries.remove(&id);
                return None;
            }
            Some(ClaimOutcome::for_existing(
                request,
                &completed.fingerprint,
                Some(&completed.response),
                completed.expires_at,
            ))
        })
    }

    fn keep(&self, request: &ClaimRequest, completed: Completed) {
        if self.capacity == 0 || completed.response.body.len() > MAX_CACHED_BODY {
            return;
        }
        let id = (request.scope.clone(), request.key.as_str().to_owned());
        self.with(|entries| {
            if entries.len() >= self.capacity && !entries.contains_key(&id) {
                entries.retain(|_, c| c.expires_at > request.now);
                if entries.len() >= self.capacity {
                    return;
                }
            }
            entries.insert(id, completed);
        });
    }
}

impl PgIdempotencyStore {
    /// A store on `pool`; the schema must be migrated ([`crate::migrate()`]). It keeps up to
    /// [`DEFAULT_REPLAY_CACHE`] completed records in memory for replays.
    pub fn new(pool: PgPool) -> Self {
        PgIdempotencyStore {
            pool,
            replays: Arc::new(ReplayCache {
                capacity: DEFAULT_REPLAY_CACHE,
                entries: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Keeps at most `entries` completed records in memory (0: none; every replay reads the
    /// database).
    #[must_use]
    pub fn with_replay_cache(mut self, entries: usize) -> Self {
        self.replays = Arc::new(ReplayCache {
            capacity: entries,
            entries: Mutex::new(HashMap::new()),
        });
        self
    }

    /// The pool it uses.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Completes the claim of `token` inside the caller's transaction `tx`, so that the
    /// handler's own writes and the idempotency record commit together or not at all.
    ///
    /// `false` (and no change) when the record is no longer this claim; the caller should
    /// then roll back. Nothing is visible to others until `tx` commits.
    ///
    /// # Completed with the handler's writes, or not at all
    ///
    /// If the transaction rolls back (or is dropped), the record stays a claim that
    /// [`IdempotencyStore::release`] or the end of its lease frees.
    pub async fn complete_in(
        &self,
        tx: &mut PgTransaction<'_>,
        token: &ClaimToken,
        response: &StoredResponse,
        now: i64,
        retention: Duration,
    ) -> Result<bool, StoreError> {
        let p = CompleteParams::new(token, response, now, retention);
        let changed = tx
            .execute(
                COMPLETE,
                &[
                    &p.scope,
                    &p.key,
                    &p.lease_id,
                    &p.status,
                    &p.headers,
                    &p.body,
                    &p.expires,
                ],
            )
            .await?;
        Ok(changed == 1)
    }
}

/// The parameters of [`COMPLETE`].
struct CompleteParams<'a> {
    scope: &'a str,
    key: &'a str,
    lease_id: i64,
    status: i16,
    headers: Vec<u8>,
    body: &'a [u8],
    expires: i64,
}

impl<'a> CompleteParams<'a> {
    fn new(
        token: &'a ClaimToken,
        response: &'a StoredResponse,
        now: i64,
        retention: Duration,
    ) -> Self {
        CompleteParams {
            scope: token.scope(),
            key: token.key().as_str(),
            lease_id: token.lease_id(),
            // A status is three digits (100–999), so it fits.
            status: i16::try_from(response.status.as_u16()).unwrap_or(i16::MAX),
            headers: StoredResponse::encode_headers(&response.headers),
            body: &response.body,
            expires: until(now, retention),
        }
    }
}

/// `now + span` in Unix milliseconds, no later than [`END_OF_TIME_MS`].
fn until(now: i64, span: Duration) -> i64 {
    now.saturating_add(millis(span)).min(END_OF_TIME_MS)
}

/// Data in the table that this crate did not write.
#[derive(Debug)]
struct Corrupt(&'static str);

impl std::fmt::Display for Corrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unreadable idempotency record: {}", self.0)
    }
}

impl std::error::Error for Corrupt {}

/// Contention that outlasted [`CLAIM_ATTEMPTS`].
#[derive(Debug)]
struct Contended;

impl std::fmt::Display for Contended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an idempotency record kept changing under a claim")
    }
}

impl std::error::Error for Contended {}

/// What a row of [`CLAIM`] or [`HOLDER`] says, for `request`.
// Built once per claim and matched at once: boxing the outcome would only add an allocation.
#[allow(clippy::large_enum_variant)]
enum Seen {
    /// This claim took the key.
    Claimed,
    /// An unexpired record holds it (and, when completed, this is the record).
    Held(ClaimOutcome, Option<Completed>),
    /// The record ended or vanished since: claim again.
    Gone,
}

fn read_holder(request: &ClaimRequest, row: Option<&Row>) -> Result<Seen, StoreError> {
    let Some(row) = row else {
        return Ok(Seen::Gone);
    };
    if row.try_get::<_, bool>(0).map_err(StoreError::new)? {
        return Ok(Seen::Claimed);
    }
    let expires_at: i64 = row.try_get(5).map_err(StoreError::new)?;
    if expires_at <= request.now {
        return Ok(Seen::Gone);
    }
    let fingerprint: &[u8] = row.try_get(1).map_err(StoreError::new)?;
    let fingerprint =
        Fingerprint::from_bytes(fingerprint).ok_or(StoreError::new(Corrupt("fingerprint")))?;
    let status: Option<i16> = row.try_get(2).map_err(StoreError::new)?;
    let response = match status {
        None => None,
        Some(status) => {
            let status = u16::try_from(status)
                .ok()
                .and_then(|s| StatusCode::from_u16(s).ok())
                .ok_or(StoreError::new(Corrupt("status")))?;
            let headers: Option<&[u8]> = row.try_get(3).map_err(StoreError::new)?;
            let headers = StoredResponse::decode_headers(headers.unwrap_or_default())
                .ok_or(StoreError::new(Corrupt("headers")))?;
            let body: Option<Vec<u8>> = row.try_get(4).map_err(StoreError::new)?;
            Some(StoredResponse::new(
                status,
                headers,
                body.unwrap_or_default(),
            ))
        }
    };
    let outcome = ClaimOutcome::for_existing(request, &fingerprint, response.as_ref(), expires_at);
    let completed = response.map(|response| Completed {
        fingerprint,
        response,
        expires_at,
    });
    Ok(Seen::Held(outcome, completed))
}

impl PgIdempotencyStore {
    async fn claim_now(&self, request: &ClaimRequest) -> Result<ClaimOutcome, StoreError> {
        let key: &str = request.key.as_str();
        let fingerprint = request.fingerprint.to_bytes();
        let fingerprint: &[u8] = &fingerprint;
        let expires = until(request.now, request.lease);
        if let Some(outcome) = self.replays.answer(request) {
            return Ok(outcome);
        }
        let mut conn = self.pool.get().await?;
        // A live record answers from a plain read: replays and waits take no lock and write
        // nothing. Only when the key looks free does the claim write.
        let row = conn.query_opt(HOLDER, &[&request.scope, &key]).await?;
        if let Seen::Held(outcome, completed) = read_holder(request, row.as_ref())? {
            if let Some(completed) = completed {
                self.replays.keep(request, completed);
            }
            return Ok(outcome);
        }
        for _ in 0..CLAIM_ATTEMPTS {
            let row = conn
                .query_opt(
                    CLAIM,
                    &[
                        &request.scope,
                        &key,
                        &fingerprint,
                        &request.lease_id,
                        &expires,
                        &request.now,
                    ],
                )
                .await?;
            let seen = match read_holder(request, row.as_ref())? {
                // The key was taken by a claim this statement's snapshot could not see yet.
                Seen::Gone if row.is_none() => {
                    let row = conn.query_opt(HOLDER, &[&request.scope, &key]).await?;
                    read_holder(request, row.as_ref())?
                }
                seen => seen,
            };
            match seen {
                Seen::Claimed => return Ok(ClaimOutcome::Claimed(request.token())),
                Seen::Held(outcome, completed) => {
                    if let Some(completed) = completed {
                        self.replays.keep(request, completed);
                    }
                    return Ok(outcome);
                }
                Seen::Gone => continue,
            }
        }
        Err(StoreError::unavailable(Contended))
    }

    async fn complete_now(
        &self,
        token: &ClaimToken,
        response: &StoredResponse,
        now: i64,
        retention: Duration,
    ) -> Result<bool, StoreError> {
        let p = CompleteParams::new(token, response, now, retention);
        let changed = self
            .pool
            .get()
            .await?
            .execute(
                COMPLETE,
                &[
                    &p.scope,
                    &p.key,
                    &p.lease_id,
                    &p.status,
                    &p.headers,
                    &p.body,
                    &p.expires,
                ],
            )
            .await?;
        Ok(changed == 1)
    }

    async fn release_now(&self, token: &ClaimToken) -> Result<bool, StoreError> {
        let changed = self
            .pool
            .get()
            .await?
            .execute(
                RELEASE,
                &[&token.scope(), &token.key().as_str(), &token.lease_id()],
            )
            .await?;
        Ok(changed == 1)
    }

    async fn prune_now(&self, now: i64, limit: usize) -> Result<u64, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.pool.get().await?.execute(PRUNE, &[&now, &limit]).await
    }
}

impl IdempotencyStore for PgIdempotencyStore {
    fn claim<'a>(&'a self, request: &'a ClaimRequest) -> StoreFuture<'a, ClaimOutcome> {
        Box::pin(self.claim_now(request))
    }

    fn complete<'a>(
        &'a self,
        token: &'a ClaimToken,
        response: &'a StoredResponse,
        now: i64,
        retention: Duration,
    ) -> StoreFuture<'a, bool> {
        Box::pin(self.complete_now(token, response, now, retention))
    }

    fn release<'a>(&'a self, token: &'a ClaimToken) -> StoreFuture<'a, bool> {
        Box::pin(self.release_now(token))
    }

    fn prune(&self, now: i64, limit: usize) -> StoreFuture<'_, u64> {
        Box::pin(self.prune_now(now, limit))
    }
}
