//! Where keys and organisations live: [`KeyLookup`] (the per-request read), [`KeyAdmin`]
//! (everything else) and an in-memory store that implements both.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use super::key::KeyDigest;
pub use crate::store::StoreError;

/// The future a store method returns (boxed, so that stores can sit behind `dyn KeyLookup` and
/// `dyn KeyAdmin`).
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// The state of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyStatus {
    /// Usable.
    Active,
    /// Temporarily refused; can be resumed.
    Paused,
    /// Refused for good.
    Revoked,
}

impl KeyStatus {
    /// The name used in storage and in API bodies.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyStatus::Active => "active",
            KeyStatus::Paused => "paused",
            KeyStatus::Revoked => "revoked",
        }
    }

    /// Whether a key in this status may move to `to` in a change allowed from `from`: a key
    /// already in `to` stays (the change is idempotent).
    pub fn may_become(self, from: &[KeyStatus], to: KeyStatus) -> bool {
        self == to || from.contains(&self)
    }

    /// Parses [`KeyStatus::as_str`].
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "active" => Some(KeyStatus::Active),
            "paused" => Some(KeyStatus::Paused),
            "revoked" => Some(KeyStatus::Revoked),
            _ => None,
        }
    }
}

/// A stored key: everything but the key itself.
///
/// Built with [`KeyRecord::new`]; its other fields are public and set after.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyRecord {
    /// Public id, e.g. `key_…`.
    pub id: String,
    /// The owning organisation.
    pub org_id: String,
    /// A name for people.
    pub name: String,
    /// The first characters of the key, for listings.
    pub display_prefix: String,
    /// SHA-256 of the key.
    pub digest: KeyDigest,
    /// Scopes granted.
    pub scopes: Vec<String>,
    /// Lifecycle state.
    pub status: KeyStatus,
    /// Unix seconds after which the key is refused.
    pub expires_at: Option<i64>,
    /// Unix seconds.
    pub created_at: i64,
}

impl KeyRecord {
    /// A key with this id, organisation, digest and status; no name, display prefix or
    /// scopes, no expiry, created at 0. Stores fill in the rest from their rows.
    pub fn new(id: &str, org_id: &str, digest: KeyDigest, status: KeyStatus) -> Self {
        KeyRecord {
            id: id.to_owned(),
            org_id: org_id.to_owned(),
            name: String::new(),
            display_prefix: String::new(),
            digest,
            scopes: Vec::new(),
            status,
            expires_at: None,
            created_at: 0,
        }
    }

    /// Where this key sorts in a listing: oldest first, then by id.
    pub fn position(&self) -> KeyPosition {
        KeyPosition {
            created_at: self.created_at,
            id: self.id.clone(),
        }
    }
}

/// A place in an organisation's key listing: the `created_at` and id of the last key seen.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct KeyPosition {
    /// Unix seconds.
    pub created_at: i64,
    /// The key's id, which orders keys created in the same second.
    pub id: String,
}

/// An organisation (tenant).
///
/// Built with [`OrgRecord::new`]; its other fields are public and set after.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OrgRecord {
    /// Public id, e.g. `org_…`.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Whether it may make calls.
    pub active: bool,
    /// Unix seconds of a soft delete.
    pub deleted_at: Option<i64>,
    /// Unix seconds.
    pub created_at: i64,
    /// The plan tier its limits follow; `None`: the catalog's default tier.
    pub tier: Option<String>,
}

impl OrgRecord {
    /// An active organisation, never deleted.
    pub fn new(id: &str, name: &str, created_at: i64) -> Self {
        OrgRecord {
            id: id.to_owned(),
            name: name.to_owned(),
            active: true,
            deleted_at: None,
            created_at,
            tier: None,
        }
    }

    /// Whether its keys may make calls: active and not deleted.
    pub fn in_good_standing(&self) -> bool {
        self.active && self.deleted_at.is_none()
    }
}

/// What inserting a key came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// The key was stored.
    Stored,
    /// The organisation already holds the maximum number of unrevoked keys.
    LimitReached,
}

/// What a status change came to.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StatusChange {
    /// The key now has the new status (or already had it).
    Changed(KeyRecord),
    /// No key with this id in this organisation.
    NotFound,
    /// The key's current status does not allow the change; the record is unchanged.
    Refused(KeyRecord),
}

/// The read that every request without a cached key makes: a key by its digest.
///
/// Kept apart from [`KeyAdmin`] so that the per-request path ([`super::Authenticator`], the
/// layer) holds no way to write, and a deployment can serve it from a replica or a cache.
pub trait KeyLookup: Send + Sync + 'static {
    /// The key with this digest and its organisation.
    fn find_by_digest(&self, digest: KeyDigest) -> StoreFuture<'_, Option<(KeyRecord, OrgRecord)>>;
}

/// Management of keys and organisations: what [`super::KeyManager`] needs.
///
/// Implementations must make [`KeyAdmin::insert_key`] and [`KeyAdmin::set_key_status`]
/// atomic: the cap check and the insert, the status check and the update, happen as one.
pub trait KeyAdmin: Send + Sync + 'static {
    /// Stores `key` unless its organisation already holds `max_per_org` unrevoked keys.
    fn insert_key(&self, key: KeyRecord, max_per_org: usize) -> StoreFuture<'_, Inserted>;

    /// The key `key_id` of `org_id` (a key of another organisation is not found).
    fn key(&self, org_id: &str, key_id: &str) -> StoreFuture<'_, Option<KeyRecord>>;

    /// Up to `limit` keys of an organisation, ordered by [`KeyPosition`] (oldest first, then
    /// by id), strictly after `after` when given.
    fn list_keys(
        &self,
        org_id: &str,
        after: Option<KeyPosition>,
        limit: usize,
    ) -> StoreFuture<'_, Vec<KeyRecord>>;

    /// Moves a key of `org_id` to `to` when its status is one of `from` (or already `to`).
    fn set_key_status(
        &self,
        org_id: &str,
        key_id: &str,
        from: &[KeyStatus],
        to: KeyStatus,
    ) -> StoreFuture<'_, StatusChange>;

    /// Stores an organisation.
    fn insert_org(&self, org: OrgRecord) -> StoreFuture<'_, ()>;

    /// The organisation with this name.
    fn org_by_name(&self, name: &str) -> StoreFuture<'_, Option<OrgRecord>>;

    /// Activates or deactivates an organisation; `false` when there is none with this id.
    fn set_org_active(&self, org_id: &str, active: bool) -> StoreFuture<'_, bool>;

    /// How many organisations exist.
    fn count_orgs(&self) -> StoreFuture<'_, u64>;

    /// Puts an organisation on plan tier `tier` (`None`: the default tier); `false` when there
    /// is none with this id. Stores that keep no tiers answer with an error (the default).
    fn set_org_tier(&self, org_id: &str, tier: Option<&str>) -> StoreFuture<'_, bool> {
        let _ = (org_id, tier);
        Box::pin(std::future::ready(Err(StoreError::new(
            "this key store keeps no plan tiers",
        ))))
    }
}

/// A store in memory, for tests and single-process demos.
#[derive(Debug, Clone, Default)]
pub struct MemoryKeyStore {
    inner: Arc<Mutex<Tables>>,
}

#[derive(Debug, Default)]
struct Tables {
    keys: Vec<KeyRecord>,
    by_digest: HashMap<KeyDigest, usize>,
    orgs: Vec<OrgRecord>,
}

impl MemoryKeyStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut Tables) -> T) -> T {
        // A panic while holding the lock cannot leave the tables half-written: every write
        // below is a single push or field assignment.
        let mut tables = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut tables)
    }
}

fn ready<T: Send + 'static>(value: T) -> StoreFuture<'static, T> {
    Box::pin(std::future::ready(Ok(value)))
}

impl KeyLookup for MemoryKeyStore {
    fn find_by_digest(&self, digest: KeyDigest) -> StoreFuture<'_, Option<(KeyRecord, OrgRecord)>> {
        ready(self.with(|t| {
            let key = t.keys.get(*t.by_digest.get(&digest)?)?.clone();
            let org = t.orgs.iter().find(|o| o.id == key.org_id)?.clone();
            Some((key, org))
        }))
    }
}

impl KeyAdmin for MemoryKeyStore {
    fn insert_key(&self, key: KeyRecord, max_per_org: usize) -> StoreFuture<'_, Inserted> {
        ready(self.with(|t| {
            let held = t
                .keys
                .iter()
                .filter(|k| k.org_id == key.org_id && k.status != KeyStatus::Revoked)
                .count();
            if held >= max_per_org {
                return Inserted::LimitReached;
            }
            t.by_digest.insert(key.digest, t.keys.len());
            t.keys.push(key);
            Inserted::Stored
        }))
    }

    fn key(&self, org_id: &str, key_id: &str) -> StoreFuture<'_, Option<KeyRecord>> {
        ready(self.with(|t| {
            t.keys
                .iter()
                .find(|k| k.org_id == org_id && k.id == key_id)
                .cloned()
        }))
    }

    fn list_keys(
        &self,
        org_id: &str,
        after: Option<KeyPosition>,
        limit: usize,
    ) -> StoreFuture<'_, Vec<KeyRecord>> {
        ready(self.with(|t| {
            let mut keys: Vec<&KeyRecord> = t
                .keys
                .iter()
                .filter(|k| k.org_id == org_id)
                .filter(|k| after.as_ref().is_none_or(|after| k.position() > *after))
                .collect();
            keys.sort_by_key(|k| k.position());
            keys.into_iter().take(limit).cloned().collect()
        }))
    }

    fn set_key_status(
        &self,
        org_id: &str,
        key_id: &str,
        from: &[KeyStatus],
        to: KeyStatus,
    ) -> StoreFuture<'_, StatusChange> {
        ready(self.with(|t| {
            let Some(key) = t
                .keys
                .iter_mut()
                .find(|k| k.org_id == org_id && k.id == key_id)
            else {
                return StatusChange::NotFound;
            };
            if key.status.may_become(from, to) {
                key.status = to;
                StatusChange::Changed(key.clone())
            } else {
                StatusChange::Refused(key.clone())
            }
        }))
    }

    fn insert_org(&self, org: OrgRecord) -> StoreFuture<'_, ()> {
        self.with(|t| t.orgs.push(org));
        ready(())
    }

    fn org_by_name(&self, name: &str) -> StoreFuture<'_, Option<OrgRecord>> {
        ready(self.with(|t| t.orgs.iter().find(|o| o.name == name).cloned()))
    }

    fn set_org_active(&self, org_id: &str, active: bool) -> StoreFuture<'_, bool> {
        ready(self.with(|t| {
            t.orgs
                .iter_mut()
                .find(|o| o.id == org_id)
                .map(|o| o.active = active)
                .is_some()
        }))
    }

    fn count_orgs(&self) -> StoreFuture<'_, u64> {
        ready(self.with(|t| t.orgs.len() as u64))
    }

    fn set_org_tier(&self, org_id: &str, tier: Option<&str>) -> StoreFuture<'_, bool> {
        ready(self.with(|t| {
            t.orgs
                .iter_mut()
                .find(|o| o.id == org_id)
                .map(|o| o.tier = tier.map(str::to_owned))
                .is_some()
        }))
    }
}
