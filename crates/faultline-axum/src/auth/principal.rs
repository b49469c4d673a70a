//! [`Principal`]: who a request acts for, and the rules that keep a key from handing out or
//! touching more than it holds.

use std::fmt;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use faultline::Situation;
use faultline::details::RequiredScope;

use super::manager::KeyAction;
use super::store::KeyRecord;
use crate::contract::Error;

/// Who a request acts for: the key's organisation, the key, its scopes and its expiry.
///
/// Its fields are read through [`PrincipalData`] (`principal.org_id`, `principal.scopes`).
///
/// # Cheap to copy
///
/// A principal is one shared pointer: cloning it, as the auth layer does for every request
/// and the extractor again, is one reference count, whatever the key holds.
///
/// ```
/// use faultline_axum::auth::Principal;
/// let me = Principal::new("org_a", "key_1", ["bots:read".to_string()]);
/// assert_eq!(std::mem::size_of::<Principal>(), std::mem::size_of::<usize>());
/// let copy = me.clone();
/// assert!(std::sync::Arc::ptr_eq(&me.org_id, &copy.org_id));
/// assert_eq!(&*copy.org_id, "org_a");
/// assert_eq!(copy, me);
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Principal(Arc<PrincipalData>);

/// What a [`Principal`] holds; a principal derefs to it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PrincipalData {
    /// The organisation (tenant) every resource of the request must belong to.
    pub org_id: Arc<str>,
    /// The key's public id.
    pub key_id: Arc<str>,
    /// The scopes the key grants.
    pub scopes: Arc<[String]>,
    /// Unix seconds after which the key is refused; `None`: it does not expire.
    pub expires_at: Option<i64>,
    /// The organisation's plan tier (for limits); `None`: the catalog's default tier.
    pub tier: Option<Arc<str>>,
}

impl std::ops::Deref for Principal {
    type Target = PrincipalData;

    fn deref(&self) -> &PrincipalData {
        &self.0
    }
}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Principal")
            .field("org_id", &self.org_id)
            .field("key_id", &self.key_id)
            .field("scopes", &self.scopes)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// A resource that belongs to one organisation.
pub trait OrgScoped {
    /// The owning organisation's id.
    fn org_id(&self) -> &str;
}

/// Scopes a key lacks for what it asked, sorted and without repeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingScopes(Vec<String>);

impl MissingScopes {
    /// The scopes.
    pub fn scopes(&self) -> &[String] {
        &self.0
    }

    /// The scopes, space-separated: the `required` member of the scope-denied details.
    pub fn joined(&self) -> String {
        self.0.join(" ")
    }
}

impl fmt::Display for MissingScopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the key lacks the scopes: {}", self.joined())
    }
}

impl std::error::Error for MissingScopes {}

/// The catalog's scope-denied code, with `details.required` listing the missing scopes
/// space-separated (one scope for a route guard, as many as are missing for key management).
impl From<MissingScopes> for Error {
    fn from(missing: MissingScopes) -> Self {
        Error::bound(Situation::ScopeDenied).with_details(RequiredScope {
            required: missing.joined(),
        })
    }
}

/// Why a key may not create or change another key.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Overreach {
    /// The other key holds, or would hold, scopes the acting key lacks.
    Scopes(MissingScopes),
    /// The new key would outlive the acting key, which expires at `caller_expires_at`
    /// (unix seconds): it asked for a later expiry, or none.
    OutlivesCaller {
        /// When the acting key expires.
        caller_expires_at: i64,
    },
    /// The key asked to pause itself: paused, it could not resume itself, and an organisation
    /// whose only key it is would be locked out.
    PausesItself,
}

impl fmt::Display for Overreach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Overreach::Scopes(missing) => missing.fmt(f),
            Overreach::OutlivesCaller { caller_expires_at } => write!(
                f,
                "the new key would outlive the acting key, which expires at {caller_expires_at}"
            ),
            Overreach::PausesItself => f.write_str("a key cannot pause itself"),
        }
    }
}

impl std::error::Error for Overreach {}

impl Principal {
    /// The principal of key `key_id` of `org_id`, holding `scopes`, that does not expire.
    pub fn new(org_id: &str, key_id: &str, scopes: impl IntoIterator<Item = String>) -> Self {
        Principal(Arc::new(PrincipalData {
            org_id: org_id.into(),
            key_id: key_id.into(),
            scopes: scopes.into_iter().collect(),
            expires_at: None,
            tier: None,
        }))
    }

    /// The same principal, its organisation on plan tier `tier` (`None`: the default tier).
    #[must_use]
    pub fn with_tier(mut self, tier: Option<&str>) -> Self {
        Arc::make_mut(&mut self.0).tier = tier.map(Arc::from);
        self
    }

    /// The same principal, expiring at `expires_at` (unix seconds; `None`: never).
    #[must_use]
    pub fn with_expiry(mut self, expires_at: Option<i64>) -> Self {
        Arc::make_mut(&mut self.0).expires_at = expires_at;
        self
    }

    /// The principal of a stored key.
    pub fn of_key(key: &KeyRecord) -> Self {
        Principal::new(&key.org_id, &key.id, key.scopes.iter().cloned()).with_expiry(key.expires_at)
    }

    /// Whether the key grants `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }

    /// The scopes of `wanted` this key lacks, if any.
    fn missing<'a>(&self, wanted: impl IntoIterator<Item = &'a String>) -> Option<MissingScopes> {
        let mut missing: Vec<String> = wanted
            .into_iter()
            .filter(|scope| !self.has_scope(scope))
            .cloned()
            .collect();
        missing.sort_unstable();
        missing.dedup();
        (!missing.is_empty()).then_some(MissingScopes(missing))
    }

    /// Whether this key may create a key holding `scopes` that expires at `expires_at`.
    ///
    /// # A key never creates a key stronger than itself
    ///
    /// The new key's scopes must all be held by this key, and it must expire no later than
    /// this key does: a key that expires cannot create one that never expires, nor one that
    /// expires later. Such a request is refused, not quietly narrowed: the client asked for
    /// something it cannot have and should know. Missing scopes are reported before expiry.
    ///
    /// ```
    /// use faultline_axum::auth::{Overreach, Principal};
    /// let scopes = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    /// let me = Principal::new("org_a", "key_1", scopes(&["api_keys:write", "bots:read"]))
    ///     .with_expiry(Some(2_000));
    /// assert!(me.may_grant(&scopes(&["bots:read"]), Some(1_500)).is_ok());
    /// let Err(Overreach::Scopes(missing)) = me.may_grant(&scopes(&["bots:write"]), Some(1_500))
    /// else { panic!() };
    /// assert_eq!(missing.joined(), "bots:write");
    /// assert_eq!(
    ///     me.may_grant(&scopes(&["bots:read"]), None),
    ///     Err(Overreach::OutlivesCaller { caller_expires_at: 2_000 }),
    /// );
    /// ```
    pub fn may_grant(&self, scopes: &[String], expires_at: Option<i64>) -> Result<(), Overreach> {
        if let Some(missing) = self.missing(scopes) {
            return Err(Overreach::Scopes(missing));
        }
        match (self.expires_at, expires_at) {
            (Some(mine), None) => Err(Overreach::OutlivesCaller {
                caller_expires_at: mine,
            }),
            (Some(mine), Some(theirs)) if theirs > mine => Err(Overreach::OutlivesCaller {
                caller_expires_at: mine,
            }),
            _ => Ok(()),
        }
    }

    /// Whether this key may apply `action` to `target` (a key of its own organisation).
    ///
    /// # A key acts only on keys no stronger than itself, and never pauses itself
    ///
    /// Revoking, pausing or resuming a key needs every scope that key holds: otherwise a key
    /// could switch off (or, once paused, back on) a key with powers it does not have. A key
    /// may not pause itself, since a paused key cannot resume itself; it may revoke itself
    /// (see [`KeyAction::Revoke`]).
    ///
    /// ```
    /// use faultline_axum::auth::{KeyAction, KeyRecord, KeyStatus, Overreach, Principal, KeyDigest};
    /// let mut admin = KeyRecord::new("key_admin", "org_a", KeyDigest::of("a"), KeyStatus::Active);
    /// admin.scopes = vec!["api_keys:write".into(), "bots:write".into()];
    /// let mut helper = KeyRecord::new("key_help", "org_a", KeyDigest::of("b"), KeyStatus::Active);
    /// helper.scopes = vec!["api_keys:write".into()];
    /// let as_helper = Principal::of_key(&helper);
    /// assert!(matches!(as_helper.may_change(&admin, KeyAction::Revoke), Err(Overreach::Scopes(_))));
    /// assert!(Principal::of_key(&admin).may_change(&helper, KeyAction::Pause).is_ok());
    /// assert_eq!(as_helper.may_change(&helper, KeyAction::Pause), Err(Overreach::PausesItself));
    /// assert!(as_helper.may_change(&helper, KeyAction::Revoke).is_ok());
    /// ```
    pub fn may_change(&self, target: &KeyRecord, action: KeyAction) -> Result<(), Overreach> {
        if let Some(missing) = self.missing(&target.scopes) {
            return Err(Overreach::Scopes(missing));
        }
        if action == KeyAction::Pause && *self.key_id == target.id && *self.org_id == target.org_id
        {
            return Err(Overreach::PausesItself);
        }
        Ok(())
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
    /// use faultline_axum::auth::{OrgScoped, Principal};
    /// struct Bot { org: String }
    /// impl OrgScoped for Bot { fn org_id(&self) -> &str { &self.org } }
    /// let me = Principal::new("org_a", "key_1", []);
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

    /// The principal [`super::AuthLayer`] verified; without that layer, the request has no key.
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Error> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| Error::bound(Situation::MissingApiKey))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{KeyDigest, KeyStatus};

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn key(id: &str, scopes: &[&str]) -> KeyRecord {
        let mut key = KeyRecord::new(id, "org_a", KeyDigest::of(id), KeyStatus::Active);
        key.scopes = strings(scopes);
        key
    }

    #[test]
    fn a_key_grants_only_scopes_it_holds() {
        let writer = Principal::new("org_a", "k", strings(&["api_keys:write"]));
        assert_eq!(
            writer.may_grant(
                &strings(&["chatbots:write", "api_keys:write", "a:b", "a:b"]),
                None
            ),
            Err(Overreach::Scopes(MissingScopes(strings(&[
                "a:b",
                "chatbots:write"
            ])))),
        );
        assert_eq!(
            writer.may_grant(&strings(&["api_keys:write"]), None),
            Ok(())
        );
        assert_eq!(writer.may_grant(&[], None), Ok(()));
    }

    #[test]
    fn an_expiring_key_creates_keys_that_expire_no_later() {
        let me = Principal::new("org_a", "k", strings(&["s"])).with_expiry(Some(100));
        let outlives = Err(Overreach::OutlivesCaller {
            caller_expires_at: 100,
        });
        assert_eq!(me.may_grant(&strings(&["s"]), None), outlives);
        assert_eq!(me.may_grant(&strings(&["s"]), Some(101)), outlives);
        assert_eq!(me.may_grant(&strings(&["s"]), Some(100)), Ok(()));
        assert_eq!(me.may_grant(&strings(&["s"]), Some(50)), Ok(()));
        // A key that never expires may create keys with any expiry.
        let forever = Principal::new("org_a", "k", strings(&["s"]));
        assert_eq!(forever.may_grant(&strings(&["s"]), None), Ok(()));
        assert_eq!(forever.may_grant(&strings(&["s"]), Some(i64::MAX)), Ok(()));
    }

    #[test]
    fn acting_on_a_key_needs_every_scope_it_holds() {
        let me = Principal::new("org_a", "mine", strings(&["api_keys:write", "x"]));
        let stronger = key("other", &["api_keys:write", "x", "y", "z"]);
        assert_eq!(
            me.may_change(&stronger, KeyAction::Revoke),
            Err(Overreach::Scopes(MissingScopes(strings(&["y", "z"])))),
        );
        for action in [KeyAction::Pause, KeyAction::Resume] {
            assert!(matches!(
                me.may_change(&stronger, action),
                Err(Overreach::Scopes(_))
            ));
        }
        let weaker = key("other", &["x"]);
        for action in [KeyAction::Pause, KeyAction::Resume, KeyAction::Revoke] {
            assert_eq!(me.may_change(&weaker, action), Ok(()));
        }
    }

    #[test]
    fn a_key_may_revoke_but_not_pause_itself() {
        let itself = key("mine", &["api_keys:write"]);
        let me = Principal::of_key(&itself);
        assert_eq!(
            me.may_change(&itself, KeyAction::Pause),
            Err(Overreach::PausesItself)
        );
        assert_eq!(me.may_change(&itself, KeyAction::Revoke), Ok(()));
    }

    #[test]
    fn missing_scopes_render_as_scope_denied_with_every_scope() {
        let error = Error::from(MissingScopes(strings(&["a", "b"])));
        match &*error.0 {
            crate::contract::Repr::Bound {
                situation, details, ..
            } => {
                assert_eq!(*situation, Situation::ScopeDenied);
                assert_eq!(details, &Some(serde_json::json!({"required": "a b"})));
            }
            other => panic!("{other:?}"),
        }
    }
}
