//! API keys, scopes and tenancy (feature `auth`).
//!
//! - [`KeyFormat`]: `<prefix>_<env>_<random><checksum>` keys; a malformed key is refused
//!   without touching the store;
//! - [`KeyLookup`] and [`KeyAdmin`]: where keys live, as SHA-256 digests. The lookup is the
//!   one read each uncached request makes; the admin side is everything else.
//!   [`MemoryKeyStore`] implements both, and so does `faultline_sqlite::SqliteKeyStore`;
//! - [`Authenticator`]: verifies a credential against a [`KeyLookup`], with an in-process
//!   cache. It cannot write;
//! - [`KeyManager`]: creates, lists, pauses, resumes and revokes keys and manages
//!   organisations through a [`KeyAdmin`], and tells its authenticator at once;
//! - [`AuthLayer`] puts the [`Principal`] in each request; [`RequireScopeLayer`] guards a
//!   route by scope; [`Principal::scope`] turns another tenant's resource into not found;
//!   [`Principal::may_grant`] and [`Principal::may_change`] keep a key from creating or
//!   touching a key stronger than itself.
//!
//! Every refusal is the code the catalog binds to the situation: missing key, malformed key,
//! invalid key, revoked, expired, paused, organisation inactive, scope denied.
//!
//! The two layers share one response future, [`crate::refuse::RefuseOr`].

mod invalidate;
mod key;
mod layer;
mod manager;
mod principal;
mod scope;
mod store;
#[cfg(feature = "store-suite")]
pub mod suite;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use axum::http::HeaderValue;
use faultline::Situation;
use faultline::clock::Clock;

use crate::clock::CounterClock;

use crate::contract::Error;

pub use invalidate::{
    AbortOnDrop, Invalidation, InvalidationSink, MAX_INVALIDATION_ID_LEN, SubscriberCounts,
    Subscription, resubscribe_forever,
};
pub use key::{
    ApiKeySecret, CHECKSUM_LEN, InvalidKeyFormat, KeyDigest, KeyFormat, MAX_CREDENTIAL_LEN,
    Malformed, RANDOM_LEN,
};
#[allow(deprecated)]
pub use layer::AuthService;
pub use layer::{Auth, AuthFuture, AuthLayer, VerifyFuture};
pub use manager::{
    ChangeKeyError, CreateKeyError, DEFAULT_MAX_KEYS_PER_ORG, KeyAction, KeyManager, NewKey,
};
pub use principal::{MissingScopes, OrgScoped, Overreach, Principal, PrincipalData};
pub use scope::{RequireScope, RequireScopeLayer, ScopeFuture};
pub use store::{
    Inserted, KeyAdmin, KeyLookup, KeyPosition, KeyRecord, KeyStatus, MemoryKeyStore, OrgRecord,
    StatusChange, StoreError, StoreFuture,
};

/// How long a verified key is trusted from the cache before the store is asked again.
pub const DEFAULT_CACHE_TTL_SECS: i64 = 10;
/// The scheme of an `Authorization` header with an API key, and the space after it.
const BEARER: &[u8] = b"bearer ";
/// Entries the cache holds at most.
const CACHE_CAPACITY: usize = 10_000;

/// Why a credential was not accepted.
#[derive(Debug)]
#[non_exhaustive]
pub enum AuthFailure {
    /// Refused: the situation names the catalog code.
    Refused(Situation),
    /// The store failed; the client gets the service-unavailable code when the store is busy
    /// or unreachable, the internal error otherwise.
    Store(StoreError),
}

impl fmt::Display for AuthFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthFailure::Refused(situation) => {
                write!(f, "credential refused: {}", situation.as_str())
            }
            AuthFailure::Store(e) => write!(f, "cannot verify the credential: {e}"),
        }
    }
}

impl std::error::Error for AuthFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AuthFailure::Refused(_) => None,
            AuthFailure::Store(e) => Some(e),
        }
    }
}

impl From<AuthFailure> for Error {
    fn from(failure: AuthFailure) -> Self {
        match failure {
            AuthFailure::Refused(situation) => Error::bound(situation),
            AuthFailure::Store(e) => Error::from(e),
        }
    }
}

/// A key and its organisation as last read from the store.
#[derive(Debug)]
struct Cached {
    key: KeyRecord,
    org_in_good_standing: bool,
    principal: Principal,
}

/// What the store said of a digest, and when.
#[derive(Debug, Clone)]
struct Slot {
    fetched_at: i64,
    /// `None`: the store knows no key with this digest.
    key: Option<Arc<Cached>>,
}

/// Verifies API keys against a [`KeyLookup`]; it holds no way to write (see [`KeyManager`]).
///
/// # Cost
///
/// A verified key is cached in process for [`DEFAULT_CACHE_TTL_SECS`]: a cache hit costs a
/// SHA-256 of the key and a map lookup. A well-formed key the store does not know is
/// remembered as unknown for as long: the checksum is public, so a flood of made-up keys costs
/// one store lookup each per time to live. Revoking or pausing a key through a [`KeyManager`]
/// of this authenticator, or changing its organisation's standing, updates the cache at once;
/// a change made by another process is seen when the entry's time to live runs out.
pub struct Authenticator {
    format: KeyFormat,
    lookup: Arc<dyn KeyLookup>,
    clock: Arc<dyn Clock>,
    cache: RwLock<HashMap<KeyDigest, Slot, DigestHashing>>,
    cache_ttl: i64,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("format", &self.format)
            .field("cache_ttl", &self.cache_ttl)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Verifies keys of `format` found through `lookup`, on the system's wall time read
    /// through the CPU's counter ([`CounterClock`]: the cache reads the time on every
    /// request).
    pub fn new(format: KeyFormat, lookup: Arc<dyn KeyLookup>) -> Self {
        Authenticator {
            format,
            lookup,
            clock: Arc::new(CounterClock::new()),
            cache: RwLock::new(HashMap::with_hasher(DigestHashing::random())),
            cache_ttl: DEFAULT_CACHE_TTL_SECS,
        }
    }

    /// Uses `clock` for expiry and cache lifetimes.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Trusts a cached verification for `seconds` (0 disables the cache).
    #[must_use]
    pub fn with_cache_ttl(mut self, seconds: i64) -> Self {
        self.cache_ttl = seconds;
        self
    }

    /// The key format.
    pub fn format(&self) -> &KeyFormat {
        &self.format
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Reads the key out of an `Authorization` header value.
    ///
    /// No header, or one that is blank, is a missing key. Anything but `Bearer <key>` (the
    /// scheme compared case-insensitively, as RFC 9110 says), a header that is not visible
    /// ASCII or is longer than any key could be, is a malformed key.
    pub fn credential(header: Option<&HeaderValue>) -> Result<&str, Situation> {
        let Some(value) = header else {
            return Err(Situation::MissingApiKey);
        };
        let bytes = value.as_bytes();
        // The shape every client sends, `Bearer <visible ASCII without spaces>`, in one pass;
        // anything else takes `parse_credential`, which gives the same answer for this
        // shape too.
        if bytes.len() <= MAX_CREDENTIAL_LEN
            && let Some((scheme, token)) = bytes.split_at_checked(BEARER.len())
            && scheme.eq_ignore_ascii_case(BEARER)
            && !token.is_empty()
            // Folded rather than `all`, so that it runs over whole vectors without a branch.
            && token.iter().fold(true, |ok, b| ok & b.is_ascii_graphic())
            && let Ok(token) = std::str::from_utf8(token)
        {
            return Ok(token);
        }
        parse_credential(value)
    }

    /// Verifies a raw key.
    pub async fn verify(&self, token: &str) -> Result<Principal, AuthFailure> {
        let digest = KeyDigest::of(token);
        if let Some(verdict) = self.judge_cached(digest) {
            return verdict;
        }
        self.check_format(token)?;
        let found = self
            .lookup
            .find_by_digest(digest)
            .await
            .map_err(AuthFailure::Store)?
            // The store found the row by digest; comparing again in constant time keeps the
            // guarantee for stores whose lookup is not exact (a prefix index, say).
            .filter(|(key, _)| key.digest == digest);
        let slot = self.remember(digest, found);
        self.judge(slot.key.as_deref(), slot.fetched_at)
    }

    /// Verifies a key from the cache alone: `None` when the store would have to be asked.
    /// This is the path most requests take; see [`Authenticator`]'s cost section.
    ///
    /// # A malformed key is refused, never looked up
    ///
    /// The format (prefix, length, alphabet, checksum) is checked whenever the cache has no
    /// answer, before the store could be asked. A cache hit skips the check: only a key that
    /// passed it is ever cached, so a digest found there is one of a well-formed key.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use faultline::Situation;
    /// use faultline_axum::auth::{AuthFailure, Authenticator, KeyFormat, MemoryKeyStore};
    /// let auth = Authenticator::new(
    ///     KeyFormat::new("cb", "live").unwrap(),
    ///     Arc::new(MemoryKeyStore::new()),
    /// );
    /// let refused = auth.verify_cached("cb_live_not-a-key");
    /// assert!(matches!(refused, Some(Err(AuthFailure::Refused(Situation::MalformedApiKey)))));
    /// // A well-formed key the cache does not know needs the store.
    /// let key = KeyFormat::new("cb", "live").unwrap().generate();
    /// assert!(auth.verify_cached(key.expose()).is_none());
    /// ```
    pub fn verify_cached(&self, token: &str) -> Option<Result<Principal, AuthFailure>> {
        let verdict = self.judge_cached(KeyDigest::of(token));
        if verdict.is_none()
            && let Err(failure) = self.check_format(token)
        {
            return Some(Err(failure));
        }
        verdict
    }

    fn check_format(&self, token: &str) -> Result<(), AuthFailure> {
        self.format
            .check(token)
            .map_err(|_| AuthFailure::Refused(Situation::MalformedApiKey))
    }

    /// The verdict on the store's last answer for `digest`, while it is fresh; `None` when
    /// the store has to be asked.
    ///
    /// The verdict is reached under the read lock, with one clock reading for both the time
    /// to live and the key's expiry, and only the principal is cloned out of the cache.
    fn judge_cached(&self, digest: KeyDigest) -> Option<Result<Principal, AuthFailure>> {
        let cache = self.cache.read().unwrap_or_else(PoisonError::into_inner);
        let slot = cache.get(&digest)?;
        let now = self.clock.now();
        (now - slot.fetched_at < self.cache_ttl).then(|| self.judge(slot.key.as_deref(), now))
    }

    /// Keeps the store's answer for `digest` (a key and its organisation, or nothing).
    fn remember(&self, digest: KeyDigest, found: Option<(KeyRecord, OrgRecord)>) -> Slot {
        let now = self.clock.now();
        let slot = Slot {
            fetched_at: now,
            key: found.map(|(key, org)| {
                Arc::new(Cached {
                    principal: Principal::of_key(&key).with_tier(org.tier.as_deref()),
                    org_in_good_standing: org.in_good_standing(),
                    key,
                })
            }),
        };
        if self.cache_ttl > 0 {
            let mut cache = self.cache.write().unwrap_or_else(PoisonError::into_inner);
            if cache.len() >= CACHE_CAPACITY {
                cache.retain(|_, s| now - s.fetched_at < self.cache_ttl);
                if cache.len() >= CACHE_CAPACITY {
                    cache.clear();
                }
            }
            cache.insert(digest, slot.clone());
        }
        slot
    }

    /// The verdict on a key as stored, at `now` (unix seconds): the key's own state first,
    /// then its organisation's.
    fn judge(&self, cached: Option<&Cached>, now: i64) -> Result<Principal, AuthFailure> {
        let refuse = |s| Err(AuthFailure::Refused(s));
        let Some(cached) = cached else {
            return refuse(Situation::InvalidApiKey);
        };
        match cached.key.status {
            KeyStatus::Revoked => return refuse(Situation::ApiKeyRevoked),
            KeyStatus::Paused => return refuse(Situation::ApiKeyPaused),
            KeyStatus::Active => {}
        }
        if cached.key.expires_at.is_some_and(|at| now >= at) {
            return refuse(Situation::ApiKeyExpired);
        }
        if !cached.org_in_good_standing {
            return refuse(Situation::OrgInactive);
        }
        Ok(cached.principal.clone())
    }

    /// Drops what the cache holds for `digest`: the next request with that key asks the store.
    pub fn forget_key(&self, digest: KeyDigest) {
        self.forget(|d, _| *d == digest);
    }

    /// Drops every cached key of `org_id`.
    pub fn forget_org(&self, org_id: &str) {
        self.forget(|_, cached| cached.is_some_and(|c| &*c.principal.org_id == org_id));
    }

    /// Applies a change another instance announced (see [`Invalidation`]): the next request
    /// with an affected key asks the store.
    ///
    /// # A revocation elsewhere is refused here once applied
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use faultline_axum::auth::*;
    /// # let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    /// # rt.block_on(async {
    /// let store = Arc::new(MemoryKeyStore::new());
    /// let format = KeyFormat::new("cb", "live").unwrap();
    /// // Two instances on one store: each has its own cache.
    /// let here = Arc::new(Authenticator::new(format.clone(), store.clone()));
    /// let there = Arc::new(Authenticator::new(format, store.clone()));
    /// let manager = KeyManager::new(Arc::clone(&here), store.clone());
    /// let org = manager.ensure_org("acme").await.unwrap();
    /// let (record, key) = manager.create_key(&org.id, NewKey::new("ci", Vec::<String>::new())).await.unwrap();
    /// assert!(there.verify(key.expose()).await.is_ok()); // now cached there
    /// manager.change_key(&org.id, &record.id, KeyAction::Revoke).await.unwrap();
    /// assert!(there.verify(key.expose()).await.is_ok()); // stale until told
    /// there.apply(&Invalidation::Key(record.id.clone()));
    /// assert!(there.verify(key.expose()).await.is_err());
    /// # });
    /// ```
    pub fn apply(&self, event: &Invalidation) {
        match event {
            Invalidation::Key(id) => {
                self.forget(|_, cached| cached.is_some_and(|c| c.key.id == *id));
            }
            Invalidation::Org(id) => self.forget_org(id),
            Invalidation::All => self.forget(|_, _| true),
        }
    }

    fn forget(&self, matches: impl Fn(&KeyDigest, Option<&Cached>) -> bool) {
        let mut cache = self.cache.write().unwrap_or_else(PoisonError::into_inner);
        cache.retain(|digest, slot| !matches(digest, slot.key.as_deref()));
    }
}

/// How the cache hashes digests: a folded multiply under a random per-cache key.
///
/// The map's default, SipHash, is made for keys an attacker chooses. A digest is already the
/// output of SHA-256, and the secret key keeps anyone from aiming keys at one bucket: that
/// would need the hashes, which never leave the process. Two multiplies instead of SipHash's
/// rounds.
#[derive(Clone)]
struct DigestHashing {
    key: [u64; 2],
}

impl DigestHashing {
    fn random() -> Self {
        DigestHashing {
            key: rand::random(),
        }
    }
}

impl std::hash::BuildHasher for DigestHashing {
    type Hasher = DigestHasher;

    fn build_hasher(&self) -> DigestHasher {
        DigestHasher {
            key: self.key,
            hash: self.key[0].rotate_left(23),
        }
    }
}

/// The hasher of [`DigestHashing`].
struct DigestHasher {
    key: [u64; 2],
    hash: u64,
}

/// The two halves of a 128-bit product, folded into one word.
fn folded_multiply(a: u64, b: u64) -> u64 {
    let product = u128::from(a) * u128::from(b);
    (product as u64) ^ ((product >> 64) as u64)
}

impl std::hash::Hasher for DigestHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut blocks = bytes.chunks_exact(16);
        for block in &mut blocks {
            let (a, b) = block.split_at(8);
            self.mix(
                u64::from_le_bytes(a.try_into().expect("eight bytes")),
                u64::from_le_bytes(b.try_into().expect("eight bytes")),
            );
        }
        let rest = blocks.remainder();
        if !rest.is_empty() {
            let mut block = [0u8; 16];
            block[..rest.len()].copy_from_slice(rest);
            let (a, b) = block.split_at(8);
            self.mix(
                u64::from_le_bytes(a.try_into().expect("eight bytes")),
                u64::from_le_bytes(b.try_into().expect("eight bytes")) ^ rest.len() as u64,
            );
        }
    }

    fn finish(&self) -> u64 {
        self.hash
    }
}

impl DigestHasher {
    fn mix(&mut self, a: u64, b: u64) {
        self.hash = folded_multiply(a ^ self.key[0] ^ self.hash, b ^ self.key[1]);
    }
}

/// [`Authenticator::credential`] for any header value: every rule in turn.
fn parse_credential(value: &HeaderValue) -> Result<&str, Situation> {
    let bytes = value.as_bytes();
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(Situation::MissingApiKey);
    }
    if bytes.len() > MAX_CREDENTIAL_LEN {
        return Err(Situation::MalformedApiKey);
    }
    let text = value.to_str().map_err(|_| Situation::MalformedApiKey)?;
    let (scheme, token) = text
        .trim()
        .split_once(' ')
        .ok_or(Situation::MalformedApiKey)?;
    let token = token.trim_start();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || token.contains(' ') {
        return Err(Situation::MalformedApiKey);
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The one-pass path answers exactly as the general rules do: for headers of the
        /// usual shape (where it applies) and for any other header (where it must step aside).
        #[test]
        fn the_fast_path_agrees_with_the_rules(
            scheme in "(?i:bearer)|Basic|bearer\t|",
            gap in " {0,2}|\t",
            token in "[ -~\t]{0,80}|[A-Za-z0-9_]{1,300}",
            tail in " ?",
        ) {
            let text = format!("{scheme}{gap}{token}{tail}");
            let Ok(value) = HeaderValue::from_str(&text) else { return Ok(()) };
            prop_assert_eq!(Authenticator::credential(Some(&value)), parse_credential(&value));
        }

        #[test]
        fn any_bytes_get_the_rules_answer(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let Ok(value) = HeaderValue::from_bytes(&bytes) else { return Ok(()) };
            prop_assert_eq!(Authenticator::credential(Some(&value)), parse_credential(&value));
        }
    }

    #[test]
    fn the_cache_hash_depends_on_every_byte_and_on_the_key() {
        use std::hash::BuildHasher;
        let hashing = DigestHashing::random();
        let digest = KeyDigest::of("cb_live_x");
        let hash = hashing.hash_one(digest);
        assert_eq!(hash, hashing.hash_one(KeyDigest(digest.0)));
        for at in 0..32 {
            let mut other = digest.0;
            other[at] ^= 1;
            assert_ne!(hash, hashing.hash_one(KeyDigest(other)), "byte {at}");
        }
        assert_ne!(hash, DigestHashing::random().hash_one(digest));
    }

    #[test]
    fn digests_equal_only_when_every_byte_is() {
        let digest = KeyDigest::of("cb_live_x");
        assert_eq!(digest, KeyDigest(digest.0));
        for at in 0..32 {
            let mut other = digest.0;
            other[at] ^= 1;
            assert_ne!(digest, KeyDigest(other), "byte {at}");
        }
    }
}
