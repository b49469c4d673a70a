//! [`SqliteIdempotencyStore`]: idempotency records in a SQLite file, through a [`Pool`], and
//! [`complete_in`], which completes a record inside a handler's own transaction.

use std::sync::Arc;
use std::time::Duration;

use faultline::idempotency::Fingerprint;
use faultline_axum::StoreError;
use faultline_axum::idempotency::store::millis;
use faultline_axum::idempotency::{
    ClaimOutcome, ClaimRequest, ClaimToken, IdempotencyStore, LocalClaims, StoredResponse,
};
use faultline_axum::store::StoreFuture;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::pool::Pool;

/// The table: one row per scope and key; `status` is null while the key is claimed.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS idempotency_records (
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    fingerprint BLOB NOT NULL,
    lease_id INTEGER NOT NULL,
    status INTEGER,
    headers BLOB,
    body BLOB,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE INDEX IF NOT EXISTS idempotency_records_by_expiry ON idempotency_records (expires_at);
";

/// Idempotency records in a SQLite database (the same file as the application's data, so that
/// handlers can complete records in their own transactions with [`complete_in`]).
///
/// # One atomic claim, for every process on the file
///
/// A claim is one immediate transaction on the writer connection: an upsert that inserts the
/// claim, or replaces a record whose end has passed, and does nothing to a live one; only when
/// nothing was written is the live record read, in the same transaction. Two processes on one
/// file are serialised by SQLite's write lock, so of concurrent claims exactly one wins.
///
/// # Replays take no write lock
///
/// A completed record never changes until it ends, so a claim first reads the record without a
/// transaction and replays a completed one from there; only a key that is absent, claimed or
/// ended opens the immediate transaction. Each claim is one trip to the writer connection.
///
/// # A claim or a release waits for no disk flush
///
/// On a file (which [`Pool::open`] puts in WAL mode), claims and releases commit with
/// `synchronous = NORMAL` for that one transaction, then the connection's own level comes back:
/// they are written to the log at once but not flushed to the disk, which saves a flush (about
/// 0.2 ms here) on every fresh key. A claim is a lock for a request in flight, not a record of
/// anything done: the only way to lose one unflushed is a power or OS failure, which ends the
/// request that held it, so a retry then runs again, as after any crash. Everything that records
/// an outcome (a completion, here or with [`complete_in`] in the handler's transaction, and the
/// application's own writes) commits at the connection's level, and flushing the log for it
/// flushes the claim written before it too. WAL mode keeps the file safe from corruption at
/// either level.
///
/// # Claims the handler's transaction decides
///
/// For routes whose handler completes in its own transaction
/// (`IdempotencyLayer::in_handler_transaction`), [`IdempotencyStore::claim_deferred`] reads
/// the record on an idle reader connection, inline ([`Pool::try_read_now`]; a completed answer is replayed, another request's
/// claim waits) and otherwise holds the claim in this process ([`LocalClaims`]), writing
/// nothing: [`complete_in`] then
/// inserts the record in the handler's transaction, or answers `false` when another
/// request's live record is there (another process got there first, or the key was completed
/// before), and the handler rolls back. A fresh key then costs one transaction, the
/// handler's own.
#[derive(Debug, Clone)]
pub struct SqliteIdempotencyStore {
    pool: Pool,
    local: Arc<LocalClaims>,
}

impl SqliteIdempotencyStore {
    /// The store on `pool` (which other stores and the application may share), creating its
    /// table if needed.
    pub fn new(pool: Pool) -> Result<Self, StoreError> {
        pool.write_blocking(|conn| conn.execute_batch(SCHEMA))?;
        Ok(SqliteIdempotencyStore {
            pool,
            local: Arc::new(LocalClaims::default()),
        })
    }

    /// A private in-memory database.
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::new(Pool::in_memory()?)
    }

    /// The pool underneath.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }
}

fn blob_error(column: usize, what: &'static str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Blob, what.into())
}

/// Runs `f` on `conn` with commits that are not flushed to the disk (`synchronous = NORMAL`)
/// when the connection's level is stricter, and puts that level back afterwards, error or not.
fn unflushed<T>(
    conn: &mut Connection,
    f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    const NORMAL: i64 = 1;
    let level: i64 = conn.pragma_query_value(None, "synchronous", |row| row.get(0))?;
    if level <= NORMAL {
        return f(conn);
    }
    conn.pragma_update(None, "synchronous", NORMAL)?;
    let result = f(conn);
    let restored = conn.pragma_update(None, "synchronous", level);
    let value = result?;
    restored?;
    Ok(value)
}

/// A record as read: fingerprint, response (when completed), end.
type Row = (Fingerprint, Option<StoredResponse>, i64);

fn read_record(conn: &Connection, scope: &str, key: &str) -> rusqlite::Result<Option<Row>> {
    conn.prepare_cached(
        "SELECT fingerprint, status, headers, body, expires_at FROM idempotency_records \
         WHERE scope = ?1 AND key = ?2",
    )?
    .query_row(params![scope, key], |row| {
        let fingerprint: Vec<u8> = row.get(0)?;
        let fingerprint = Fingerprint::from_bytes(&fingerprint)
            .ok_or_else(|| blob_error(0, "a fingerprint is 64 bytes"))?;
        let status: Option<u16> = row.get(1)?;
        let response = match status {
            None => None,
            Some(status) => {
                let status = axum::http::StatusCode::from_u16(status)
                    .map_err(|_| rusqlite::Error::IntegralValueOutOfRange(1, i64::from(status)))?;
                let headers: Vec<u8> = row.get::<_, Option<Vec<u8>>>(2)?.unwrap_or_default();
                let headers = StoredResponse::decode_headers(&headers)
                    .ok_or_else(|| blob_error(2, "stored headers are unreadable"))?;
                let body: Vec<u8> = row.get::<_, Option<Vec<u8>>>(3)?.unwrap_or_default();
                Some(StoredResponse::new(status, headers, body))
            }
        };
        Ok((fingerprint, response, row.get(4)?))
    })
    .optional()
}

fn claim_on(conn: &mut Connection, request: &ClaimRequest) -> rusqlite::Result<ClaimOutcome> {
    // A completed record never changes until it ends: it is replayed without a transaction.
    if let Some((fingerprint, Some(response), end)) =
        read_record(conn, &request.scope, request.key.as_str())?
        && end > request.now
    {
        return Ok(ClaimOutcome::for_existing(
            request,
            &fingerprint,
            Some(&response),
            end,
        ));
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let written = tx
        .prepare_cached(
            "INSERT INTO idempotency_records (scope, key, fingerprint, lease_id, expires_at) \
         VALUES (?1, ?2, ?3, ?4, ?5) \
         ON CONFLICT (scope, key) DO UPDATE SET \
             fingerprint = excluded.fingerprint, lease_id = excluded.lease_id, \
             status = NULL, headers = NULL, body = NULL, expires_at = excluded.expires_at \
         WHERE idempotency_records.expires_at <= ?6",
        )?
        .execute(params![
            request.scope,
            request.key.as_str(),
            &request.fingerprint.to_bytes()[..],
            request.lease_id,
            request.lease_expires_at(),
            request.now,
        ])?;
    let outcome = if written == 1 {
        ClaimOutcome::Claimed(request.token())
    } else {
        // Nothing written: a live record holds the key, and the transaction keeps it there.
        let (fingerprint, response, expires_at) =
            read_record(&tx, &request.scope, request.key.as_str())?.ok_or_else(|| {
                rusqlite::Error::QueryReturnedNoRows // cannot happen inside the transaction
            })?;
        ClaimOutcome::for_existing(request, &fingerprint, response.as_ref(), expires_at)
    };
    tx.commit()?;
    Ok(outcome)
}

/// Completes the claim of `token` with `response`, kept until `now + retention` (Unix
/// milliseconds), on `conn`: inside the caller's transaction when `conn` is one (a
/// [`rusqlite::Transaction`] derefs to a connection).
///
/// `Ok(false)` when the record is no longer this claim (its lease ended and another request
/// took it over, or it was released), or, for a claim held in this process only
/// ([`ClaimToken::is_local`]), when another request's live record is there: the caller should
/// then roll its transaction back, so that its own writes do not happen without the record
/// (and, for a local claim, call `IdempotencyClaim::superseded`).
///
/// # The write and the record commit together
///
/// ```
/// # use std::time::Duration;
/// # use faultline::idempotency::{Fingerprint, IdempotencyKey};
/// # use faultline_axum::idempotency::{ClaimOutcome, ClaimRequest, IdempotencyStore, StoredResponse};
/// # use faultline_sqlite::idempotency::{SqliteIdempotencyStore, complete_in};
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let store = SqliteIdempotencyStore::in_memory().unwrap();
/// store.pool().write_blocking(|c| c.execute_batch("CREATE TABLE things (id TEXT)")).unwrap();
/// let key = IdempotencyKey::new("k").unwrap();
/// let request = ClaimRequest::new("org", key, Fingerprint::new("POST", "/t", "", b""),
///     Duration::from_secs(60), 0);
/// let ClaimOutcome::Claimed(token) = store.claim(&request).await.unwrap() else { panic!() };
/// let response = StoredResponse::new(axum::http::StatusCode::CREATED, vec![], "{}");
/// // The handler fails after writing: neither its row nor the record is kept.
/// let failed = store.pool().write(move |conn| {
///     let tx = conn.transaction()?;
///     tx.execute("INSERT INTO things VALUES ('t1')", [])?;
///     assert!(complete_in(&tx, &token, &response, 0, Duration::from_secs(60))?);
///     Err::<(), _>(rusqlite::Error::InvalidQuery) // dropped: rolled back
/// }).await;
/// assert!(failed.is_err());
/// let rows: i64 = store.pool().write_blocking(|c| c.query_row(
///     "SELECT (SELECT count(*) FROM things) + \
///      (SELECT count(*) FROM idempotency_records WHERE status IS NOT NULL)", [], |r| r.get(0)
/// )).unwrap();
/// assert_eq!(rows, 0);
/// # });
/// ```
pub fn complete_in(
    conn: &Connection,
    token: &ClaimToken,
    response: &StoredResponse,
    now: i64,
    retention: Duration,
) -> rusqlite::Result<bool> {
    let headers = StoredResponse::encode_headers(&response.headers);
    let expires_at = now.saturating_add(millis(retention));
    let written = if token.is_local() {
        // Nothing was written at the claim: insert the record, or take an ended one over,
        // never a live one (another request's claim or answer).
        conn.prepare_cached(
            "INSERT INTO idempotency_records \
                 (scope, key, fingerprint, lease_id, status, headers, body, expires_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
             ON CONFLICT (scope, key) DO UPDATE SET \
                 fingerprint = excluded.fingerprint, lease_id = excluded.lease_id, \
                 status = excluded.status, headers = excluded.headers, body = excluded.body, \
                 expires_at = excluded.expires_at \
             WHERE idempotency_records.expires_at <= ?9",
        )?
        .execute(params![
            token.scope(),
            token.key().as_str(),
            &token.fingerprint().to_bytes()[..],
            token.lease_id(),
            response.status.as_u16(),
            headers,
            &response.body[..],
            expires_at,
            now,
        ])?
    } else {
        conn.prepare_cached(
            "UPDATE idempotency_records SET status = ?1, headers = ?2, body = ?3, expires_at = ?4 \
             WHERE scope = ?5 AND key = ?6 AND lease_id = ?7 AND status IS NULL",
        )?
        .execute(params![
            response.status.as_u16(),
            headers,
            &response.body[..],
            expires_at,
            token.scope(),
            token.key().as_str(),
            token.lease_id(),
        ])?
    };
    Ok(written == 1)
}

impl IdempotencyStore for SqliteIdempotencyStore {
    fn claim<'a>(&'a self, request: &'a ClaimRequest) -> StoreFuture<'a, ClaimOutcome> {
        let request = request.clone();
        Box::pin(
            self.pool
                .write(move |conn| unflushed(conn, |conn| claim_on(conn, &request))),
        )
    }

    fn complete<'a>(
        &'a self,
        token: &'a ClaimToken,
        response: &'a StoredResponse,
        now: i64,
        retention: Duration,
    ) -> StoreFuture<'a, bool> {
        let (token, response) = (token.clone(), response.clone());
        let local = Arc::clone(&self.local);
        Box::pin(async move {
            let written = self
                .pool
                .write({
                    let token = token.clone();
                    move |conn| complete_in(conn, &token, &response, now, retention)
                })
                .await;
            local.forget(&token);
            written
        })
    }

    fn claim_deferred<'a>(&'a self, request: &'a ClaimRequest) -> StoreFuture<'a, ClaimOutcome> {
        Box::pin(async move {
            // A record already there (a completed answer, or another request's written claim)
            // decides at once; only an absent or ended one leaves the key to this process.
            let found = match self
                .pool
                .try_read_now(|conn| read_record(conn, &request.scope, request.key.as_str()))
            {
                Some(found) => found?,
                None => {
                    let (scope, key) = (request.scope.clone(), request.key.as_str().to_owned());
                    self.pool
                        .read(move |conn| read_record(conn, &scope, &key))
                        .await?
                }
            };
            if let Some((fingerprint, response, end)) = found
                && end > request.now
            {
                return Ok(ClaimOutcome::for_existing(
                    request,
                    &fingerprint,
                    response.as_ref(),
                    end,
                ));
            }
            Ok(self.local.claim(request))
        })
    }

    fn settle(&self, token: &ClaimToken) {
        self.local.forget(token);
    }

    fn release<'a>(&'a self, token: &'a ClaimToken) -> StoreFuture<'a, bool> {
        if token.is_local() {
            // Nothing was written for it.
            return Box::pin(std::future::ready(Ok(self.local.forget(token))));
        }
        let token = token.clone();
        Box::pin(self.pool.write(move |conn| {
            unflushed(conn, |conn| {
                let deleted = conn
                    .prepare_cached(
                        "DELETE FROM idempotency_records \
                     WHERE scope = ?1 AND key = ?2 AND lease_id = ?3 AND status IS NULL",
                    )?
                    .execute(params![
                        token.scope(),
                        token.key().as_str(),
                        token.lease_id()
                    ])?;
                Ok(deleted == 1)
            })
        }))
    }

    fn prune(&self, now: i64, limit: usize) -> StoreFuture<'_, u64> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        Box::pin(self.pool.write(move |conn| {
            let deleted = conn
                .prepare_cached(
                    "DELETE FROM idempotency_records WHERE rowid IN \
                 (SELECT rowid FROM idempotency_records WHERE expires_at <= ?1 LIMIT ?2)",
                )?
                .execute(params![now, limit])?;
            Ok(deleted as u64)
        }))
    }
}
