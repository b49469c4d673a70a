//! [`KeyManager`]: creating and changing keys and organisations, through a [`KeyAdmin`].

use std::fmt;
use std::sync::Arc;

use super::Authenticator;
use super::invalidate::{Invalidation, InvalidationSink};
use super::key::ApiKeySecret;
use super::principal::{Overreach, Principal};
use super::store::{
    Inserted, KeyAdmin, KeyPosition, KeyRecord, KeyStatus, OrgRecord, StatusChange, StoreError,
};

/// The default cap on unrevoked keys per organisation.
pub const DEFAULT_MAX_KEYS_PER_ORG: usize = 10;

/// The settings of a key to create.
///
/// ```
/// use faultline_axum::auth::NewKey;
/// let new = NewKey::new("ci", ["chatbots:read"]).with_expiry(Some(2_000_000_000));
/// assert_eq!(new.scopes, ["chatbots:read"]);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NewKey {
    /// A name for people.
    pub name: String,
    /// Scopes to grant.
    pub scopes: Vec<String>,
    /// Unix seconds after which the key is refused; `None`: never.
    pub expires_at: Option<i64>,
}

impl NewKey {
    /// A key named `name` granting `scopes`, that does not expire.
    pub fn new<S: Into<String>>(
        name: impl Into<String>,
        scopes: impl IntoIterator<Item = S>,
    ) -> Self {
        NewKey {
            name: name.into(),
            scopes: scopes.into_iter().map(Into::into).collect(),
            expires_at: None,
        }
    }

    /// Sets when the key stops working (unix seconds; `None`: never).
    #[must_use]
    pub fn with_expiry(mut self, expires_at: Option<i64>) -> Self {
        self.expires_at = expires_at;
        self
    }
}

/// Why a key could not be created.
#[derive(Debug)]
#[non_exhaustive]
pub enum CreateKeyError {
    /// The organisation holds the maximum number of unrevoked keys.
    LimitReached {
        /// The cap.
        max: usize,
    },
    /// The acting key may not create this key ([`KeyManager::create_key_as`]).
    Overreach(Overreach),
    /// The store failed.
    Store(StoreError),
}

impl fmt::Display for CreateKeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CreateKeyError::LimitReached { max } => {
                write!(f, "the organisation already holds {max} unrevoked keys")
            }
            CreateKeyError::Overreach(overreach) => overreach.fmt(f),
            CreateKeyError::Store(e) => write!(f, "cannot store the key: {e}"),
        }
    }
}

impl std::error::Error for CreateKeyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CreateKeyError::Store(e) => Some(e),
            CreateKeyError::Overreach(o) => Some(o),
            CreateKeyError::LimitReached { .. } => None,
        }
    }
}

/// Why a key's status could not be changed by another key.
#[derive(Debug)]
#[non_exhaustive]
pub enum ChangeKeyError {
    /// The acting key may not change this key ([`Principal::may_change`]).
    Overreach(Overreach),
    /// The store failed.
    Store(StoreError),
}

impl fmt::Display for ChangeKeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChangeKeyError::Overreach(overreach) => overreach.fmt(f),
            ChangeKeyError::Store(e) => write!(f, "cannot change the key: {e}"),
        }
    }
}

impl std::error::Error for ChangeKeyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ChangeKeyError::Store(e) => Some(e),
            ChangeKeyError::Overreach(o) => Some(o),
        }
    }
}

impl From<StoreError> for ChangeKeyError {
    fn from(e: StoreError) -> Self {
        ChangeKeyError::Store(e)
    }
}

/// A change of a key's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAction {
    /// Refuse the key for good (from active or paused).
    ///
    /// A key may revoke itself: whoever holds a leaked key can kill it, and rotation
    /// (create the new key, then revoke the old one with itself) needs nothing else. It only
    /// ever takes power away, so it cannot be used to escalate.
    Revoke,
    /// Refuse the key until resumed (from active). A key may not pause itself.
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

/// Creates and changes keys and organisations through a [`KeyAdmin`], and keeps its
/// [`Authenticator`]'s cache in step.
///
/// The authenticator verifies with a [`super::KeyLookup`] and nothing more; the manager holds
/// the write side. A store that implements both traits is passed to each:
///
/// ```
/// use std::sync::Arc;
/// use faultline_axum::auth::{Authenticator, KeyFormat, KeyManager, MemoryKeyStore, NewKey};
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let store = Arc::new(MemoryKeyStore::new());
/// let auth = Arc::new(Authenticator::new(KeyFormat::new("cb", "live")?, store.clone()));
/// let keys = KeyManager::new(Arc::clone(&auth), store);
/// let org = keys.ensure_org("acme").await?;
/// let (_, secret) = keys.create_key(&org.id, NewKey::new("ci", ["chatbots:read"])).await?;
/// assert!(auth.verify(secret.expose()).await.is_ok());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
///
/// # A change made here holds at once in this process
///
/// Pausing, resuming or revoking a key, or changing its organisation's standing, drops the
/// authenticator's cache entries for it: the next request sees the change, cached or not.
pub struct KeyManager {
    auth: Arc<Authenticator>,
    admin: Arc<dyn KeyAdmin>,
    max_keys_per_org: usize,
    invalidations: Option<Arc<dyn InvalidationSink>>,
}

impl fmt::Debug for KeyManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyManager")
            .field("auth", &self.auth)
            .field("max_keys_per_org", &self.max_keys_per_org)
            .finish_non_exhaustive()
    }
}

impl KeyManager {
    /// Manages the keys that `auth` verifies, stored through `admin`.
    pub fn new(auth: Arc<Authenticator>, admin: Arc<dyn KeyAdmin>) -> Self {
        KeyManager {
            auth,
            admin,
            max_keys_per_org: DEFAULT_MAX_KEYS_PER_ORG,
            invalidations: None,
        }
    }

    /// Announces every key or organisation change through `sink`, so that other instances'
    /// authenticators drop their cached verdicts at once (see [`Invalidation`]).
    ///
    /// # The change is committed first
    ///
    /// The store's write has succeeded when the event is published; a failed publish is logged
    /// and leaves the other instances to the cache's time to live, never undoes the change.
    #[must_use]
    pub fn with_invalidations(mut self, sink: Arc<dyn InvalidationSink>) -> Self {
        self.invalidations = Some(sink);
        self
    }

    async fn announce(&self, event: Invalidation) {
        if let Some(sink) = &self.invalidations
            && let Err(e) = sink.publish(event.clone()).await
        {
            tracing::warn!(%event, cause = %e, "cannot tell other instances of a key change");
        }
    }

    /// Caps the unrevoked keys of an organisation.
    #[must_use]
    pub fn with_max_keys_per_org(mut self, max: usize) -> Self {
        self.max_keys_per_org = max;
        self
    }

    /// The authenticator whose cache this manager keeps in step.
    pub fn authenticator(&self) -> &Arc<Authenticator> {
        &self.auth
    }

    /// The store.
    pub fn admin(&self) -> &Arc<dyn KeyAdmin> {
        &self.admin
    }

    /// The cap on unrevoked keys per organisation.
    pub fn max_keys_per_org(&self) -> usize {
        self.max_keys_per_org
    }

    /// Creates a key for `org_id`, with no check of who asks (operators, start-up seeding).
    /// The raw key is returned once and never stored.
    pub async fn create_key(
        &self,
        org_id: &str,
        new: NewKey,
    ) -> Result<(KeyRecord, ApiKeySecret), CreateKeyError> {
        let secret = self.auth.format().generate();
        let mut record = KeyRecord::new(
            &format!("key_{}", uuid::Uuid::new_v4().simple()),
            org_id,
            secret.digest(),
            KeyStatus::Active,
        );
        record.name = new.name;
        record.display_prefix = secret.display_prefix();
        record.scopes = new.scopes;
        record.expires_at = new.expires_at;
        record.created_at = self.auth.clock().now();
        match self
            .admin
            .insert_key(record.clone(), self.max_keys_per_org)
            .await
            .map_err(CreateKeyError::Store)?
        {
            Inserted::Stored => {
                // 178 random bits never collide with a key tried before; forgetting an
                // "unknown" answer for this digest keeps the cache honest even so.
                self.auth.forget_key(record.digest);
                Ok((record, secret))
            }
            Inserted::LimitReached => Err(CreateKeyError::LimitReached {
                max: self.max_keys_per_org,
            }),
        }
    }

    /// Creates a key in `principal`'s organisation on its behalf, if
    /// [`Principal::may_grant`] allows it: no scope the principal lacks, no later expiry.
    pub async fn create_key_as(
        &self,
        principal: &Principal,
        new: NewKey,
    ) -> Result<(KeyRecord, ApiKeySecret), CreateKeyError> {
        principal
            .may_grant(&new.scopes, new.expires_at)
            .map_err(CreateKeyError::Overreach)?;
        self.create_key(&principal.org_id, new).await
    }

    /// Applies `action` to a key of `org_id`, with no check of who asks.
    pub async fn change_key(
        &self,
        org_id: &str,
        key_id: &str,
        action: KeyAction,
    ) -> Result<StatusChange, StoreError> {
        let (from, to) = action.transition();
        let change = self.admin.set_key_status(org_id, key_id, from, to).await?;
        if let StatusChange::Changed(key) = &change {
            self.auth.forget_key(key.digest);
            self.announce(Invalidation::Key(key.id.clone())).await;
        }
        Ok(change)
    }

    /// Applies `action` to a key of `principal`'s organisation on its behalf, if
    /// [`Principal::may_change`] allows it. A key of another organisation is
    /// [`StatusChange::NotFound`].
    ///
    /// A key's scopes never change once it is stored, so checking them before the status
    /// change cannot be raced.
    pub async fn change_key_as(
        &self,
        principal: &Principal,
        key_id: &str,
        action: KeyAction,
    ) -> Result<StatusChange, ChangeKeyError> {
        let Some(target) = self.admin.key(&principal.org_id, key_id).await? else {
            return Ok(StatusChange::NotFound);
        };
        principal
            .may_change(&target, action)
            .map_err(ChangeKeyError::Overreach)?;
        Ok(self.change_key(&principal.org_id, key_id, action).await?)
    }

    /// Up to `limit` keys of `org_id` after `after`, oldest first (see
    /// [`KeyAdmin::list_keys`]).
    pub async fn list_keys(
        &self,
        org_id: &str,
        after: Option<KeyPosition>,
        limit: usize,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        self.admin.list_keys(org_id, after, limit).await
    }

    /// The organisation named `name`.
    pub async fn org_by_name(&self, name: &str) -> Result<Option<OrgRecord>, StoreError> {
        self.admin.org_by_name(name).await
    }

    /// How many organisations exist.
    pub async fn count_orgs(&self) -> Result<u64, StoreError> {
        self.admin.count_orgs().await
    }

    /// The organisation named `name`, created (active) if there is none.
    pub async fn ensure_org(&self, name: &str) -> Result<OrgRecord, StoreError> {
        if let Some(org) = self.admin.org_by_name(name).await? {
            return Ok(org);
        }
        let org = OrgRecord::new(
            &format!("org_{}", uuid::Uuid::new_v4().simple()),
            name,
            self.auth.clock().now(),
        );
        self.admin.insert_org(org.clone()).await?;
        Ok(org)
    }

    /// Activates or deactivates an organisation; its keys follow at once in this process.
    pub async fn set_org_active(&self, org_id: &str, active: bool) -> Result<bool, StoreError> {
        let found = self.admin.set_org_active(org_id, active).await?;
        self.auth.forget_org(org_id);
        if found {
            self.announce(Invalidation::Org(org_id.to_owned())).await;
        }
        Ok(found)
    }

    /// Puts an organisation on plan tier `tier` (`None`: the default); its keys follow at once
    /// in this process, and in others when their caches expire.
    pub async fn set_org_tier(&self, org_id: &str, tier: Option<&str>) -> Result<bool, StoreError> {
        let found = self.admin.set_org_tier(org_id, tier).await?;
        self.auth.forget_org(org_id);
        // Other instances' cached principals carry the old tier (and so the old limits).
        if found {
            self.announce(Invalidation::Org(org_id.to_owned())).await;
        }
        Ok(found)
    }
}
