//! API keys, scopes and tenancy (feature `auth`; the SQLite store needs feature `sqlite`).
//!
//! - [`KeyFormat`]: `<prefix>_<env>_<random><checksum>` keys; a malformed key is refused
//!   without touching the store;
//! - [`KeyStore`]: where keys live, as SHA-256 digests ([`MemoryKeyStore`], and
//!   `SqliteKeyStore`);
//! - [`Authenticator`]: verifies a credential, with an in-process cache, and manages keys;
//! - [`AuthLayer`] puts the [`Principal`] in each request; [`RequireScopeLayer`] guards a
//!   route by scope; [`Principal::scope`] turns another tenant's resource into not found.
//!
//! Every refusal is the code the catalog binds to the situation: missing key, malformed key,
//! invalid key, revoked, expired, paused, organisation inactive, scope denied.

mod key;
mod layer;
mod scope;
#[cfg(feature = "sqlite")]
mod sqlite;
mod store;

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use axum::extract::FromRequestParts;
use axum::http::HeaderValue;
use axum::http::request::Parts;
use faultline::Situation;
use faultline::clock::{Clock, SystemClock};

use crate::contract::Error;

pub use key::{
    ApiKeySecret, CHECKSUM_LEN, InvalidKeyFormat, KeyDigest, KeyFormat, MAX_CREDENTIAL_LEN,
    Malformed, RANDOM_LEN,
};
pub use layer::{AuthFuture, AuthLayer, AuthService};
pub use scope::{RequireScope, RequireScopeLayer, ScopeFuture};
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteKeyStore;
pub use store::{
    Inserted, KeyRecord, KeyStatus, KeyStore, MemoryKeyStore, OrgRecord, StatusChange, StoreError,
    StoreFuture,
};

/// The default cap on unrevoked keys per organisation.
pub const DEFAULT_MAX_KEYS_PER_ORG: usize = 10;
/// How long a verified key is trusted from the cache before the store is asked again.
pub const DEFAULT_CACHE_TTL_SECS: i64 = 10;
/// Entries the cache holds at most.
const CACHE_CAPACITY: usize = 10_000;

/// Who a request acts for: the key's organisation, the key and its scopes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The organisation (tenant) every resource of the request must belong to.
    pub org_id: Arc<str>,
    /// The key's public id.
    pub key_id: Arc<str>,
    /// The scopes the key grants.
    pub scopes: Arc<[String]>,
}

/// A resource that belongs to one organisation.
pub trait OrgScoped {
    /// The owning organisation's id.
    fn org_id(&self) -> &str;
}

impl Principal {
    /// Whether the key grants `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }

    /// Keeps a loaded resource only if it belongs to this principal's organisation.
    ///
    /// # Another tenant's resource is not found, never forbidden
    ///
    /// A resource of another organisation gives exactly the answer of one that does not
    /// exist: the catalog's resource-not-found code, same status, message and details. A
    /// 403 would confirm that the id exists.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use faultline_axum::auth::{OrgScoped, Principal};
    /// struct Bot { org: String }
    /// impl OrgScoped for Bot { fn org_id(&self) -> &str { &self.org } }
    /// let me = Principal { org_id: "org_a".into(), key_id: "key_1".into(), scopes: Arc::new([]) };
    /// assert!(me.scope(Some(Bot { org: "org_a".into() })).is_ok());
    /// assert!(me.scope(Some(Bot { org: "org_b".into() })).is_err());
    /// assert!(me.scope(None::<Bot>).is_err());
    /// ```
    pub fn scope<T: OrgScoped>(&self, found: Option<T>) -> Result<T, Error> {
        found
            .filter(|resource| self.owns(resource))
            .ok_or_else(|| Error::bound(Situation::ResourceNotFound))
    }

    /// Whether `resource` belongs to this principal's organisation. Prefer
    /// [`Principal::scope`], which also gives the not-found answer.
    pub fn owns<T: OrgScoped>(&self, resource: &T) -> bool {
        resource.org_id() == &*self.org_id
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = Error;

    /// The principal [`AuthLayer`] verified; without that layer, the request has no key.
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Error> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| Error::bound(Situation::MissingApiKey))
    }
}

/// Why a credential was not accepted.
#[derive(Debug)]
pub enum AuthFailure {
    /// Refused: the situation names the catalog code.
    Refused(Situation),
    /// The store failed; the client gets the internal error.
    Store(StoreError),
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

/// The settings of a key to create.
#[derive(Debug, Clone, Default)]
pub struct NewKey {
    /// A name for people.
    pub name: String,
    /// Scopes to grant.
    pub scopes: Vec<String>,
    /// Unix seconds after which the key is refused.
    pub expires_at: Option<i64>,
    /// Where events for this key go.
    pub webhook_url: Option<String>,
}

/// Why a key could not be created.
#[derive(Debug)]
pub enum CreateKeyError {
    /// The organisation holds the maximum number of unrevoked keys.
    LimitReached {
        /// The cap.
        max: usize,
    },
    /// The store failed.
    Store(StoreError),
}

/// A change of a key's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAction {
    /// Refuse the key for good (from active or paused).
    Revoke,
    /// Refuse the key until resumed (from active).
    Pause,
    /// Accept a paused key again.
    Resume,
}

impl KeyAction {
    fn transition(self) -> (&'static [KeyStatus], KeyStatus) {
        match self {
            KeyAction::Revoke => (&[KeyStatus::Active, KeyStatus::Paused], KeyStatus::Revoked),
            KeyAction::Pause => (&[KeyStatus::Active], KeyStatus::Paused),
            KeyAction::Resume => (&[KeyStatus::Paused], KeyStatus::Active),
        }
    }
}

/// Verifies API keys and manages them.
///
/// # Cost
///
/// A verified key is cached in process for [`DEFAULT_CACHE_TTL_SECS`]: a cache hit costs a
/// SHA-256 of the key and a map lookup. A well-formed key the store does not know is
/// remembered as unknown for as long: the checksum is public, so a flood of made-up keys costs
/// one store lookup each per time to live. Revoking or pausing a key through this
/// authenticator, or changing its organisation's standing, updates the cache at once; a change
/// made by another process is seen when the entry's time to live runs out.
pub struct Authenticator {
    format: KeyFormat,
    store: Arc<dyn KeyStore>,
    clock: Arc<dyn Clock>,
    cache: RwLock<HashMap<KeyDigest, Slot>>,
    cache_ttl: i64,
    max_keys_per_org: usize,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("format", &self.format)
            .field("cache_ttl", &self.cache_ttl)
            .field("max_keys_per_org", &self.max_keys_per_org)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Verifies keys of `format` against `store`, on the system clock.
    pub fn new(format: KeyFormat, store: Arc<dyn KeyStore>) -> Self {
        Authenticator {
            format,
            store,
            clock: Arc::new(SystemClock),
            cache: RwLock::new(HashMap::new()),
            cache_ttl: DEFAULT_CACHE_TTL_SECS,
            max_keys_per_org: DEFAULT_MAX_KEYS_PER_ORG,
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

    /// Caps the unrevoked keys of an organisation.
    #[must_use]
    pub fn with_max_keys_per_org(mut self, max: usize) -> Self {
        self.max_keys_per_org = max;
        self
    }

    /// The key format.
    pub fn format(&self) -> &KeyFormat {
        &self.format
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn KeyStore> {
        &self.store
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The cap on unrevoked keys per organisation.
    pub fn max_keys_per_org(&self) -> usize {
        self.max_keys_per_org
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

    /// Verifies a raw key.
    pub async fn verify(&self, token: &str) -> Result<Principal, AuthFailure> {
        let digest = self.precheck(token)?;
        if let Some(slot) = self.cached(digest) {
            return self.judge(slot.key.as_deref());
        }
        let found = self
            .store
            .find_by_digest(digest)
            .await
            .map_err(AuthFailure::Store)?
            // The store found the row by digest; comparing again in constant time keeps the
            // guarantee for stores whose lookup is not exact (a prefix index, say).
            .filter(|(key, _)| key.digest == digest);
        let slot = self.remember(digest, found);
        self.judge(slot.key.as_deref())
    }

    /// Verifies a key from the cache alone: `None` when the store would have to be asked.
    /// This is the path most requests take; see [`Authenticator`]'s cost section.
    pub fn verify_cached(&self, token: &str) -> Option<Result<Principal, AuthFailure>> {
        let digest = match self.precheck(token) {
            Ok(digest) => digest,
            Err(failure) => return Some(Err(failure)),
        };
        self.cached(digest)
            .map(|slot| self.judge(slot.key.as_deref()))
    }

    fn precheck(&self, token: &str) -> Result<KeyDigest, AuthFailure> {
        self.format
            .check(token)
            .map_err(|_| AuthFailure::Refused(Situation::MalformedApiKey))?;
        Ok(KeyDigest::of(token))
    }

    /// The store's last answer for `digest`, while it is fresh.
    fn cached(&self, digest: KeyDigest) -> Option<Slot> {
        let cache = self.cache.read().unwrap_or_else(PoisonError::into_inner);
        let slot = cache.get(&digest)?;
        (self.clock.now() - slot.fetched_at < self.cache_ttl).then(|| slot.clone())
    }

    /// Keeps the store's answer for `digest` (a key and its organisation, or nothing).
    fn remember(&self, digest: KeyDigest, found: Option<(KeyRecord, OrgRecord)>) -> Slot {
        let now = self.clock.now();
        let slot = Slot {
            fetched_at: now,
            key: found.map(|(key, org)| {
                Arc::new(Cached {
                    principal: Principal {
                        org_id: key.org_id.as_str().into(),
                        key_id: key.id.as_str().into(),
                        scopes: key.scopes.clone().into(),
                    },
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

    /// The verdict on a key as stored: the key's own state first, then its organisation's.
    fn judge(&self, cached: Option<&Cached>) -> Result<Principal, AuthFailure> {
        let refuse = |s| Err(AuthFailure::Refused(s));
        let Some(cached) = cached else {
            return refuse(Situation::InvalidApiKey);
        };
        match cached.key.status {
            KeyStatus::Revoked => return refuse(Situation::ApiKeyRevoked),
            KeyStatus::Paused => return refuse(Situation::ApiKeyPaused),
            KeyStatus::Active => {}
        }
        if cached
            .key
            .expires_at
            .is_some_and(|at| self.clock.now() >= at)
        {
            return refuse(Situation::ApiKeyExpired);
        }
        if !cached.org_in_good_standing {
            return refuse(Situation::OrgInactive);
        }
        Ok(cached.principal.clone())
    }

    /// Creates a key for `org_id`. The raw key is returned once and never stored.
    pub async fn create_key(
        &self,
        org_id: &str,
        new: NewKey,
    ) -> Result<(KeyRecord, ApiKeySecret), CreateKeyError> {
        let secret = self.format.generate();
        let record = KeyRecord {
            id: format!("key_{}", uuid::Uuid::new_v4().simple()),
            org_id: org_id.to_owned(),
            name: new.name,
            display_prefix: secret.display_prefix(),
            digest: secret.digest(),
            scopes: new.scopes,
            status: KeyStatus::Active,
            expires_at: new.expires_at,
            webhook_url: new.webhook_url,
            created_at: self.clock.now(),
        };
        match self
            .store
            .insert_key(record.clone(), self.max_keys_per_org)
            .await
            .map_err(CreateKeyError::Store)?
        {
            Inserted::Stored => {
                // 178 random bits never collide with a key tried before; forgetting an
                // "unknown" answer for this digest keeps the cache honest even so.
                self.forget(|digest, _| *digest == record.digest);
                Ok((record, secret))
            }
            Inserted::LimitReached => Err(CreateKeyError::LimitReached {
                max: self.max_keys_per_org,
            }),
        }
    }

    /// Applies `action` to a key of `org_id`; the change holds in this process at once.
    pub async fn change_key(
        &self,
        org_id: &str,
        key_id: &str,
        action: KeyAction,
    ) -> Result<StatusChange, StoreError> {
        let (from, to) = action.transition();
        let change = self.store.set_key_status(org_id, key_id, from, to).await?;
        if let StatusChange::Changed(key) = &change {
            self.forget(|digest, _| *digest == key.digest);
        }
        Ok(change)
    }

    /// The keys of `org_id`.
    pub async fn list_keys(&self, org_id: &str) -> Result<Vec<KeyRecord>, StoreError> {
        self.store.list_keys(org_id).await
    }

    /// The organisation named `name`, created (active) if there is none.
    pub async fn ensure_org(&self, name: &str) -> Result<OrgRecord, StoreError> {
        if let Some(org) = self.store.org_by_name(name).await? {
            return Ok(org);
        }
        let org = OrgRecord {
            id: format!("org_{}", uuid::Uuid::new_v4().simple()),
            name: name.to_owned(),
            active: true,
            deleted_at: None,
            created_at: self.clock.now(),
        };
        self.store.insert_org(org.clone()).await?;
        Ok(org)
    }

    /// Activates or deactivates an organisation; its keys follow at once in this process.
    pub async fn set_org_active(&self, org_id: &str, active: bool) -> Result<bool, StoreError> {
        let found = self.store.set_org_active(org_id, active).await?;
        self.forget(|_, cached| cached.is_some_and(|c| &*c.principal.org_id == org_id));
        Ok(found)
    }

    fn forget(&self, matches: impl Fn(&KeyDigest, Option<&Cached>) -> bool) {
        let mut cache = self.cache.write().unwrap_or_else(PoisonError::into_inner);
        cache.retain(|digest, slot| !matches(digest, slot.key.as_deref()));
    }
}
