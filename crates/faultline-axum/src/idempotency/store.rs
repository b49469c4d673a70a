//! Where idempotency records live: the [`IdempotencyStore`] trait, the types it exchanges, and
//! [`MemoryIdempotencyStore`] for one process.
//!
//! # Time
//!
//! Stores never read a clock: every call that depends on time is given `now` in **Unix
//! milliseconds** by the caller (the layer reads its injectable [`faultline::clock::Clock`]), so tests
//! drive expiry with a manual clock and engines on several machines agree with the layer.
//!
//! # One record per scope and key
//!
//! A record is either a **claim** (a request holds the key until its lease ends) or a
//! **completed** response (kept until its retention ends). A record whose end has passed counts
//! as absent: the next claim replaces it in the same atomic step.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use faultline::idempotency::{Difference, Fingerprint, IdempotencyKey};

pub use crate::store::{StoreError, StoreFuture};

/// Milliseconds in a duration, saturating at `i64::MAX`.
pub fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// A request's attempt to take a key: what [`IdempotencyStore::claim`] is given.
///
/// Built with [`ClaimRequest::new`], which draws the random lease id a store keeps with the
/// claim; its fields are public to read.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClaimRequest {
    /// Whose key it is (e.g. an organisation and API key id); keys of two scopes never meet.
    pub scope: String,
    /// The key.
    pub key: IdempotencyKey,
    /// The request's fingerprint, compared with the one stored.
    pub fingerprint: Fingerprint,
    /// How long the claim holds before another request may take it over.
    pub lease: Duration,
    /// Unix milliseconds.
    pub now: i64,
    /// A random id for this claim: only the holder of the [`ClaimToken`] with it may complete
    /// or release the record.
    pub lease_id: i64,
}

impl ClaimRequest {
    /// A claim of `key` in `scope` for a request with `fingerprint`, holding for `lease` from
    /// `now` (Unix milliseconds), with a fresh random lease id.
    pub fn new(
        scope: impl Into<String>,
        key: IdempotencyKey,
        fingerprint: Fingerprint,
        lease: Duration,
        now: i64,
    ) -> Self {
        ClaimRequest {
            scope: scope.into(),
            key,
            fingerprint,
            lease,
            now,
            lease_id: rand::random(),
        }
    }

    /// When the lease ends if the claim succeeds (Unix milliseconds).
    pub fn lease_expires_at(&self) -> i64 {
        self.now.saturating_add(millis(self.lease))
    }

    /// The token a successful claim hands back.
    pub fn token(&self) -> ClaimToken {
        ClaimToken {
            scope: self.scope.clone(),
            key: self.key.clone(),
            lease_id: self.lease_id,
            fingerprint: self.fingerprint.clone(),
            local: false,
        }
    }
}

/// Proof of a claim: completing or releasing the record needs it.
///
/// # A claim taken over cannot be completed by its first holder
///
/// The token names the claim's random lease id; once another request takes an expired lease
/// over, the old token matches nothing and [`IdempotencyStore::complete`] answers `false`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClaimToken {
    scope: String,
    key: IdempotencyKey,
    lease_id: i64,
    fingerprint: Fingerprint,
    local: bool,
}

impl ClaimToken {
    /// The scope of the claim.
    pub fn scope(&self) -> &str {
        &self.scope
    }

    /// The key claimed.
    pub fn key(&self) -> &IdempotencyKey {
        &self.key
    }

    /// The claim's lease id.
    pub fn lease_id(&self) -> i64 {
        self.lease_id
    }

    /// The fingerprint of the request that holds the claim (a store that writes the record
    /// only at completion keeps it then).
    pub fn fingerprint(&self) -> &Fingerprint {
        &self.fingerprint
    }

    /// Whether the claim is held in this process only ([`LocalClaims`]): nothing was written,
    /// and completing it inserts the record.
    pub fn is_local(&self) -> bool {
        self.local
    }
}

/// What a claim came to.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClaimOutcome {
    /// The key is this request's: run the handler, then complete or release with the token.
    Claimed(ClaimToken),
    /// Another request with the same key and fingerprint holds a live lease.
    InProgress {
        /// The lease's remaining time, in whole seconds rounded up (at least one).
        retry_after: Duration,
    },
    /// The key was completed for the same fingerprint: this is the stored response.
    Replay(StoredResponse),
    /// The key is held or completed for another request; says what differs, never what the
    /// stored response was.
    Mismatch(Difference),
}

impl ClaimOutcome {
    /// [`ClaimOutcome::InProgress`] for a lease that ends at `expires_at`, seen at `now` (Unix
    /// milliseconds): the remaining time rounded up to whole seconds, at least one.
    pub fn in_progress(expires_at: i64, now: i64) -> Self {
        let remaining = u64::try_from(expires_at.saturating_sub(now)).unwrap_or(0);
        ClaimOutcome::InProgress {
            retry_after: Duration::from_secs(remaining.div_ceil(1000).max(1)),
        }
    }

    /// What an existing, unexpired record means for `request`: a mismatch when fingerprints
    /// differ, else the replay of a completed response or the wait for a live claim. Stores
    /// that hold records in memory share this rule through it.
    pub fn for_existing(
        request: &ClaimRequest,
        fingerprint: &Fingerprint,
        response: Option<&StoredResponse>,
        expires_at: i64,
    ) -> Self {
        if let Some(difference) = fingerprint.difference(&request.fingerprint) {
            return ClaimOutcome::Mismatch(difference);
        }
        match response {
            Some(response) => ClaimOutcome::Replay(response.clone()),
            None => ClaimOutcome::in_progress(expires_at, request.now),
        }
    }
}

/// A response kept for replay: status, the headers chosen to keep, and the body bytes.
///
/// # Headers survive encoding byte for byte, in order
///
/// [`StoredResponse::encode_headers`] gives the one blob format every SQL store keeps, and
/// [`StoredResponse::decode_headers`] reads it back.
///
/// ```
/// use axum::http::{HeaderName, HeaderValue};
/// use faultline_axum::idempotency::StoredResponse;
/// let headers = vec![
///     (HeaderName::from_static("location"), HeaderValue::from_static("/v1/chatbots/cb_1")),
///     (HeaderName::from_static("x-note"), HeaderValue::from_bytes(b"caf\xe9: ok").unwrap()),
///     (HeaderName::from_static("x-note"), HeaderValue::from_static("")),
/// ];
/// let blob = StoredResponse::encode_headers(&headers);
/// assert_eq!(StoredResponse::decode_headers(&blob), Some(headers));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoredResponse {
    /// The status.
    pub status: StatusCode,
    /// The headers kept, in order (a name may repeat).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The body bytes.
    pub body: Bytes,
}

impl StoredResponse {
    /// A response with this status, headers and body.
    pub fn new(
        status: StatusCode,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: impl Into<Bytes>,
    ) -> Self {
        StoredResponse {
            status,
            headers,
            body: body.into(),
        }
    }

    /// The headers as one blob: `name:value` lines, each ended by `\n` (a header value holds
    /// no line break and a name no colon, so the format needs no escaping).
    pub fn encode_headers(headers: &[(HeaderName, HeaderValue)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, value) in headers {
            out.extend_from_slice(name.as_str().as_bytes());
            out.push(b':');
            out.extend_from_slice(value.as_bytes());
            out.push(b'\n');
        }
        out
    }

    /// Reads [`StoredResponse::encode_headers`] back; `None` for a blob it did not write.
    pub fn decode_headers(blob: &[u8]) -> Option<Vec<(HeaderName, HeaderValue)>> {
        let Some(body) = blob.strip_suffix(b"\n") else {
            return blob.is_empty().then(Vec::new);
        };
        body.split(|b| *b == b'\n')
            .map(|line| {
                let colon = line.iter().position(|b| *b == b':')?;
                let name = HeaderName::from_bytes(&line[..colon]).ok()?;
                let value = HeaderValue::from_bytes(&line[colon + 1..]).ok()?;
                Some((name, value))
            })
            .collect()
    }
}

/// Storage for idempotency records, shared by every request of one or many processes.
///
/// # Every method is one atomic step
///
/// [`IdempotencyStore::claim`] decides and writes at once (a unique insert, or a conditional
/// replace of an expired record), never a read followed by a write: of any number of concurrent
/// claims of one key, exactly one is [`ClaimOutcome::Claimed`]. [`IdempotencyStore::complete`]
/// and [`IdempotencyStore::release`] change the record only while it is still the claim their
/// token names. `faultline_axum::idempotency::suite` (feature `store-suite`) holds every
/// store to these rules.
///
/// # A recipe for SQL engines
///
/// One row per `(scope, key)` with the fingerprint, the lease id, the response (null while
/// claimed) and `expires_at`. A claim is an `INSERT … ON CONFLICT DO NOTHING`; when no row was
/// inserted, an `UPDATE … WHERE scope = ? AND key = ? AND expires_at <= now` takes an ended
/// record over; when that changes nothing either, the row read back is an unexpired record and
/// [`ClaimOutcome::for_existing`] says what it means (should it vanish in between, start
/// again). Completion and release update or delete `WHERE … AND lease_id = ? AND response IS
/// NULL`.
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Claims `request.key` in `request.scope`: [`ClaimOutcome::Claimed`] when there is no
    /// record or only an expired one (a lease or a retention that has ended at `request.now`),
    /// otherwise what the unexpired record says (see [`ClaimOutcome::for_existing`]).
    fn claim<'a>(&'a self, request: &'a ClaimRequest) -> StoreFuture<'a, ClaimOutcome>;

    /// Turns the claim into a completed record holding `response`, kept until `now + retention`
    /// (Unix milliseconds). `false`, and no change, when the record is no longer this claim
    /// (released, taken over or already completed).
    fn complete<'a>(
        &'a self,
        token: &'a ClaimToken,
        response: &'a StoredResponse,
        now: i64,
        retention: Duration,
    ) -> StoreFuture<'a, bool>;

    /// Removes the claim so that a retry runs again. `false`, and no change, when the record is
    /// no longer this claim.
    fn release<'a>(&'a self, token: &'a ClaimToken) -> StoreFuture<'a, bool>;

    /// Deletes up to `limit` records whose lease or retention has ended at `now` (Unix
    /// milliseconds); returns how many.
    fn prune(&self, now: i64, limit: usize) -> StoreFuture<'_, u64>;

    /// Claims `request.key` for a handler that records its outcome in its own transaction
    /// (a route with `IdempotencyLayer::in_handler_transaction`). By default the same as
    /// [`IdempotencyStore::claim`].
    ///
    /// # A claim the handler's commit decides
    ///
    /// A store whose records live in the database the handler writes to may instead hold the
    /// claim in this process only ([`LocalClaims`]: no write before the handler runs) and let
    /// the handler's transaction decide: its in-transaction completion inserts the record
    /// unless a live record of another request is there, in which case it reports failure and
    /// the handler rolls back. Two requests in one process still meet here (the second is in
    /// progress or a mismatch); two in different processes both run up to their commit, and
    /// only one commits. A claim held this way ends with its process, so after a crash the
    /// retry runs at once rather than after the lease. Such a store also completes a record
    /// that was never written as a claim ([`IdempotencyStore::complete`] inserts it) and
    /// forgets the local claim on [`IdempotencyStore::complete`],
    /// [`IdempotencyStore::release`] and [`IdempotencyStore::settle`].
    fn claim_deferred<'a>(&'a self, request: &'a ClaimRequest) -> StoreFuture<'a, ClaimOutcome> {
        self.claim(request)
    }

    /// The request holding `token` recorded its outcome in its own transaction: a store that
    /// keeps claims in this process forgets it. By default nothing.
    fn settle(&self, token: &ClaimToken) {
        let _ = token;
    }
}

impl<S: IdempotencyStore + ?Sized> IdempotencyStore for Arc<S> {
    fn claim<'a>(&'a self, request: &'a ClaimRequest) -> StoreFuture<'a, ClaimOutcome> {
        (**self).claim(request)
    }

    fn complete<'a>(
        &'a self,
        token: &'a ClaimToken,
        response: &'a StoredResponse,
        now: i64,
        retention: Duration,
    ) -> StoreFuture<'a, bool> {
        (**self).complete(token, response, now, retention)
    }

    fn claim_deferred<'a>(&'a self, request: &'a ClaimRequest) -> StoreFuture<'a, ClaimOutcome> {
        (**self).claim_deferred(request)
    }

    fn settle(&self, token: &ClaimToken) {
        (**self).settle(token);
    }

    fn release<'a>(&'a self, token: &'a ClaimToken) -> StoreFuture<'a, bool> {
        (**self).release(token)
    }

    fn prune(&self, now: i64, limit: usize) -> StoreFuture<'_, u64> {
        (**self).prune(now, limit)
    }
}

/// Claims held in this process only, for stores that let the handler's transaction decide
/// between processes (see [`IdempotencyStore::claim_deferred`]).
///
/// # Two requests of one process never both run
///
/// Of concurrent claims of one key here, one is [`ClaimOutcome::Claimed`]; the others are in
/// progress (same fingerprint) or a mismatch, until the holder is forgotten or its lease ends.
///
/// ```
/// # use std::time::Duration;
/// # use faultline::idempotency::{Fingerprint, IdempotencyKey};
/// use faultline_axum::idempotency::store::{ClaimOutcome, ClaimRequest, LocalClaims};
/// let claims = LocalClaims::default();
/// let request = |body: &[u8]| ClaimRequest::new("org", IdempotencyKey::new("k").unwrap(),
///     Fingerprint::new("POST", "/t", "", body), Duration::from_secs(60), 0);
/// let ClaimOutcome::Claimed(token) = claims.claim(&request(b"{}")) else { panic!() };
/// assert!(matches!(claims.claim(&request(b"{}")), ClaimOutcome::InProgress { .. }));
/// assert!(matches!(claims.claim(&request(b"[]")), ClaimOutcome::Mismatch(_)));
/// assert!(claims.forget(&token));
/// assert!(matches!(claims.claim(&request(b"{}")), ClaimOutcome::Claimed(_)));
/// ```
#[derive(Debug, Default)]
pub struct LocalClaims {
    held: Mutex<HashMap<(String, String), LocalClaim>>,
}

#[derive(Debug)]
struct LocalClaim {
    lease_id: i64,
    fingerprint: Fingerprint,
    expires_at: i64,
}

impl LocalClaims {
    /// Claims `request.key` in this process: claimed when no live local claim holds it,
    /// otherwise what that claim says (in progress, or a mismatch).
    pub fn claim(&self, request: &ClaimRequest) -> ClaimOutcome {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let id = (request.scope.clone(), request.key.as_str().to_owned());
        if let Some(live) = held.get(&id).filter(|c| c.expires_at > request.now) {
            return ClaimOutcome::for_existing(request, &live.fingerprint, None, live.expires_at);
        }
        held.insert(
            id,
            LocalClaim {
                lease_id: request.lease_id,
                fingerprint: request.fingerprint.clone(),
                expires_at: request.lease_expires_at(),
            },
        );
        let mut token = request.token();
        token.local = true;
        ClaimOutcome::Claimed(token)
    }

    /// Forgets the claim of `token`; `false` when this process does not hold it (never did,
    /// or another request took it over).
    pub fn forget(&self, token: &ClaimToken) -> bool {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let id = (token.scope().to_owned(), token.key().as_str().to_owned());
        if held
            .get(&id)
            .is_some_and(|c| c.lease_id == token.lease_id())
        {
            held.remove(&id);
            return true;
        }
        false
    }

    /// How many claims are held.
    pub fn len(&self) -> usize {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether no claim is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Records in memory, for one process (tests, demos, a single instance).
///
/// One mutex over a map and an index of records by their end, held only for the few lookups of
/// one call and never across an `await`. Records are also indexed by the time they end, so
/// [`IdempotencyStore::prune`] visits only the ended records it deletes, however many live ones
/// the store holds.
#[derive(Clone, Default)]
pub struct MemoryIdempotencyStore {
    inner: Arc<Mutex<Tables>>,
}

type RecordId = (String, IdempotencyKey);

#[derive(Debug, Default)]
struct Tables {
    records: HashMap<RecordId, Record>,
    /// Every record's `(expires_at, id)`, so ended records are found in order.
    by_end: BTreeSet<(i64, RecordId)>,
}

#[derive(Debug)]
struct Record {
    fingerprint: Fingerprint,
    lease_id: i64,
    response: Option<StoredResponse>,
    /// Unix milliseconds: end of the lease, or of the retention once completed.
    expires_at: i64,
}

impl Tables {
    fn insert(&mut self, id: RecordId, record: Record) {
        self.remove(&id);
        self.by_end.insert((record.expires_at, id.clone()));
        self.records.insert(id, record);
    }

    fn remove(&mut self, id: &RecordId) -> Option<Record> {
        let old = self.records.remove(id)?;
        self.by_end.remove(&(old.expires_at, id.clone()));
        Some(old)
    }

    /// The record `token` names, while it is still that claim.
    fn claim_of(&self, token: &ClaimToken) -> Option<RecordId> {
        let id = (token.scope.clone(), token.key.clone());
        let record = self.records.get(&id)?;
        (record.lease_id == token.lease_id && record.response.is_none()).then_some(id)
    }
}

impl fmt::Debug for MemoryIdempotencyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryIdempotencyStore")
            .field("records", &self.len())
            .finish()
    }
}

impl MemoryIdempotencyStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many records it holds, ended ones included until pruned.
    pub fn len(&self) -> usize {
        self.with(|t| t.records.len())
    }

    /// Whether it holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn with<T>(&self, f: impl FnOnce(&mut Tables) -> T) -> T {
        // A panic inside these short sections would need an allocation failure; even then the
        // worst left behind is an index entry without its record, which pruning skips.
        let mut tables = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut tables)
    }
}

fn ready<T: Send + 'static>(value: T) -> StoreFuture<'static, T> {
    Box::pin(std::future::ready(Ok(value)))
}

impl IdempotencyStore for MemoryIdempotencyStore {
    fn claim<'a>(&'a self, request: &'a ClaimRequest) -> StoreFuture<'a, ClaimOutcome> {
        let id = (request.scope.clone(), request.key.clone());
        ready(self.with(|t| {
            if let Some(r) = t.records.get(&id).filter(|r| r.expires_at > request.now) {
                return ClaimOutcome::for_existing(
                    request,
                    &r.fingerprint,
                    r.response.as_ref(),
                    r.expires_at,
                );
            }
            t.insert(
                id,
                Record {
                    fingerprint: request.fingerprint.clone(),
                    lease_id: request.lease_id,
                    response: None,
                    expires_at: request.lease_expires_at(),
                },
            );
            ClaimOutcome::Claimed(request.token())
        }))
    }

    fn complete<'a>(
        &'a self,
        token: &'a ClaimToken,
        response: &'a StoredResponse,
        now: i64,
        retention: Duration,
    ) -> StoreFuture<'a, bool> {
        ready(self.with(|t| {
            let Some(id) = t.claim_of(token) else {
                return false;
            };
            let Some(mut record) = t.remove(&id) else {
                return false;
            };
            record.response = Some(response.clone());
            record.expires_at = now.saturating_add(millis(retention));
            t.insert(id, record);
            true
        }))
    }

    fn release<'a>(&'a self, token: &'a ClaimToken) -> StoreFuture<'a, bool> {
        ready(self.with(|t| t.claim_of(token).is_some_and(|id| t.remove(&id).is_some())))
    }

    fn prune(&self, now: i64, limit: usize) -> StoreFuture<'_, u64> {
        ready(self.with(|t| {
            let ended: Vec<RecordId> = t
                .by_end
                .iter()
                .take_while(|(end, _)| *end <= now)
                .take(limit)
                .map(|(_, id)| id.clone())
                .collect();
            ended.iter().filter(|id| t.remove(id).is_some()).count() as u64
        }))
    }
}
