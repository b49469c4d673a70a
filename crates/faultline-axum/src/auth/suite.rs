//! One test suite for every key store (feature `store-suite`): each function drives a store
//! through the authenticator and the key manager and panics at the first broken promise.
//!
//! A store crate runs it from its tests, so the in-memory store, SQLite and any later engine
//! are held to exactly the same assertions:
//!
//! ```
//! # async fn lifecycle() {
//! // In a store crate's test: `#[tokio::test] async fn lifecycle() { … }` with its own store.
//! let store = std::sync::Arc::new(faultline_axum::auth::MemoryKeyStore::new());
//! faultline_axum::auth::suite::every_lifecycle_state(store).await;
//! # }
//! ```
#![allow(clippy::missing_panics_doc)] // panicking is how a suite reports a failure

use std::sync::Arc;

use faultline::Situation;
use faultline::clock::ManualClock;

use super::{
    AuthFailure, Authenticator, CreateKeyError, KeyAction, KeyAdmin, KeyFormat, KeyLookup,
    KeyManager, KeyPosition, KeyRecord, KeyStatus, NewKey, OrgRecord, Principal, StatusChange,
};

/// The time the suite's clock starts at (unix seconds).
pub const NOW: i64 = 1_900_000_000;

/// A store, its authenticator and manager on a manual clock, and one organisation `acme`.
#[derive(Debug)]
pub struct Fixture {
    /// Verifies keys against the store.
    pub auth: Arc<Authenticator>,
    /// Manages keys in the store.
    pub keys: KeyManager,
    /// The authenticator's clock.
    pub clock: ManualClock,
    /// The organisation `acme`.
    pub org: OrgRecord,
}

impl Fixture {
    /// The fixture on `store`.
    pub async fn new<S: KeyLookup + KeyAdmin>(store: Arc<S>) -> Self {
        Self::with(store, |auth| auth).await
    }

    /// The fixture on `store`, its authenticator changed by `configure`.
    pub async fn with<S: KeyLookup + KeyAdmin>(
        store: Arc<S>,
        configure: impl FnOnce(Authenticator) -> Authenticator,
    ) -> Self {
        let clock = ManualClock::at(NOW);
        let auth = Arc::new(configure(
            Authenticator::new(format(), store.clone()).with_clock(Arc::new(clock.clone())),
        ));
        let keys = KeyManager::new(Arc::clone(&auth), store);
        let org = keys.ensure_org("acme").await.expect("an organisation");
        Fixture {
            auth,
            keys,
            clock,
            org,
        }
    }
}

/// The key format of the suite (`cb_live_…`).
pub fn format() -> KeyFormat {
    KeyFormat::new("cb", "live").expect("a valid format")
}

/// A key named `test` with `scopes`.
pub fn new_key(scopes: &[&str]) -> NewKey {
    NewKey::new("test", scopes.iter().copied())
}

/// The situation a verification was refused with.
pub fn refused(result: Result<Principal, AuthFailure>) -> Situation {
    match result {
        Err(AuthFailure::Refused(situation)) => situation,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Every state a key and its organisation can be in: malformed, unknown, active, paused,
/// resumed, revoked, expired, organisation inactive, organisation deleted; listings by org.
pub async fn every_lifecycle_state<S: KeyLookup + KeyAdmin>(store: Arc<S>) {
    let f = Fixture::new(store.clone()).await;
    let (auth, keys) = (&f.auth, &f.keys);

    // Malformed and unknown keys never reach a principal.
    assert_eq!(
        refused(auth.verify("cb_live_short").await),
        Situation::MalformedApiKey
    );
    assert_eq!(
        refused(auth.verify(format().generate().expose()).await),
        Situation::InvalidApiKey
    );

    // Active: the principal carries org, key, expiry and exactly the scopes granted.
    let (record, key) = keys
        .create_key(&f.org.id, new_key(&["a:read", "b:write"]))
        .await
        .expect("a key");
    let principal = auth.verify(key.expose()).await.expect("an active key");
    assert_eq!(&*principal.org_id, f.org.id);
    assert_eq!(&*principal.key_id, record.id);
    assert_eq!(principal.expires_at, None);
    assert_eq!(&*principal.scopes, ["a:read", "b:write"]);
    assert!(!principal.has_scope("a:write"));

    // Paused, resumed, revoked: each holds at once although the key is cached.
    let change = |action| keys.change_key(&f.org.id, &record.id, action);
    let changed = |change: StatusChange| matches!(change, StatusChange::Changed(_));
    assert!(changed(change(KeyAction::Pause).await.expect("pause")));
    assert_eq!(
        refused(auth.verify(key.expose()).await),
        Situation::ApiKeyPaused
    );
    assert!(changed(change(KeyAction::Resume).await.expect("resume")));
    assert!(auth.verify(key.expose()).await.is_ok());
    assert!(changed(change(KeyAction::Revoke).await.expect("revoke")));
    assert_eq!(
        refused(auth.verify(key.expose()).await),
        Situation::ApiKeyRevoked
    );
    match change(KeyAction::Resume).await.expect("a status change") {
        StatusChange::Refused(key) => assert_eq!(key.status, KeyStatus::Revoked),
        other => panic!("a revoked key cannot be resumed: {other:?}"),
    }
    // Another organisation cannot touch the key: it is not found.
    assert_eq!(
        keys.change_key("org_other", &record.id, KeyAction::Pause)
            .await
            .expect("a status change"),
        StatusChange::NotFound
    );

    // Expired: refused from the second its expiry is reached.
    let expiring = new_key(&["a:read"]).with_expiry(Some(NOW + 30));
    let (_, short) = keys.create_key(&f.org.id, expiring).await.expect("a key");
    assert_eq!(
        auth.verify(short.expose())
            .await
            .expect("not yet expired")
            .expires_at,
        Some(NOW + 30),
        "the principal carries the key's expiry"
    );
    f.clock.advance_secs(29);
    assert!(auth.verify(short.expose()).await.is_ok());
    f.clock.advance_secs(1);
    assert_eq!(
        refused(auth.verify(short.expose()).await),
        Situation::ApiKeyExpired
    );

    // Organisation inactive, then active again.
    let (_, good) = keys
        .create_key(&f.org.id, new_key(&["a:read"]))
        .await
        .expect("a key");
    assert!(auth.verify(good.expose()).await.is_ok());
    assert!(
        keys.set_org_active(&f.org.id, false)
            .await
            .expect("deactivate")
    );
    assert_eq!(
        refused(auth.verify(good.expose()).await),
        Situation::OrgInactive
    );
    assert!(
        keys.set_org_active(&f.org.id, true)
            .await
            .expect("activate")
    );
    assert!(auth.verify(good.expose()).await.is_ok());

    // A soft-deleted organisation is inactive too, and reads back as written.
    let mut deleted = OrgRecord::new("org_deleted", "deleted", NOW - 100);
    deleted.deleted_at = Some(NOW - 10);
    store
        .insert_org(deleted.clone())
        .await
        .expect("an organisation");
    let (_, orphan) = keys
        .create_key(&deleted.id, new_key(&["a:read"]))
        .await
        .expect("a key");
    assert_eq!(
        refused(auth.verify(orphan.expose()).await),
        Situation::OrgInactive
    );
    assert_eq!(keys.count_orgs().await.expect("a count"), 2);
    assert_eq!(
        keys.org_by_name("deleted").await.expect("a lookup"),
        Some(deleted),
        "an organisation reads back as written"
    );

    // Listing shows every key of the org, none of another.
    let listed = keys.list_keys(&f.org.id, None, 100).await.expect("a list");
    assert_eq!(listed.len(), 3);
    assert!(listed.iter().all(|k| k.org_id == f.org.id));
}

/// The cap counts unrevoked keys only, and the store keeps it.
pub async fn the_cap_counts_unrevoked_keys_only<S: KeyLookup + KeyAdmin>(store: Arc<S>) {
    let f = Fixture::new(store).await;
    let keys = f.keys.with_max_keys_per_org(2);
    let (first, _) = keys
        .create_key(&f.org.id, new_key(&["a"]))
        .await
        .expect("a key");
    keys.create_key(&f.org.id, new_key(&["a"]))
        .await
        .expect("a key");
    assert!(matches!(
        keys.create_key(&f.org.id, new_key(&["a"])).await,
        Err(CreateKeyError::LimitReached { max: 2 })
    ));
    keys.change_key(&f.org.id, &first.id, KeyAction::Revoke)
        .await
        .expect("revoke");
    assert!(keys.create_key(&f.org.id, new_key(&["a"])).await.is_ok());
}

/// Listings page by creation time, then id, within one organisation; a key is found by id in
/// its own organisation only.
pub async fn listings_page_by_creation_then_id<S: KeyLookup + KeyAdmin>(store: Arc<S>) {
    let f = Fixture::new(store).await;
    let mut made = Vec::new();
    for i in 0..5 {
        // Two keys per second: the id orders keys of the same second.
        f.clock.set(NOW + i / 2);
        let (record, _) = f
            .keys
            .create_key(&f.org.id, new_key(&["a"]))
            .await
            .expect("a key");
        made.push(record);
    }
    let other = f.keys.ensure_org("other").await.expect("an organisation");
    f.keys
        .create_key(&other.id, new_key(&["a"]))
        .await
        .expect("a key");
    made.sort_by_key(KeyRecord::position);

    let mut seen = Vec::new();
    let mut after: Option<KeyPosition> = None;
    // Bounded, so that a store that ignores `after` fails instead of looping.
    for _ in 0..10 {
        let page = f.keys.list_keys(&f.org.id, after, 2).await.expect("a page");
        assert!(page.len() <= 2);
        if page.is_empty() {
            break;
        }
        after = page.last().map(KeyRecord::position);
        seen.extend(page);
    }
    assert_eq!(
        seen, made,
        "every key of the org once, in order, none of another"
    );
    assert_eq!(
        f.keys
            .admin()
            .key(&f.org.id, &made[0].id)
            .await
            .expect("a lookup"),
        Some(made[0].clone())
    );
    assert_eq!(
        f.keys
            .admin()
            .key(&other.id, &made[0].id)
            .await
            .expect("a lookup"),
        None,
        "a key is found in its own organisation only"
    );
}

/// An organisation's plan tier is kept, reaches its keys' principals (once the key manager
/// changes it, at once), and can be cleared back to the default.
pub async fn org_tiers_reach_the_principal<S: KeyLookup + KeyAdmin>(store: Arc<S>) {
    let f = Fixture::new(store).await;
    let (_, secret) = f
        .keys
        .create_key(&f.org.id, new_key(&["bots:read"]))
        .await
        .expect("a key");
    let principal = f.auth.verify(secret.expose()).await.expect("verified");
    assert_eq!(principal.tier, None, "a new organisation has no tier");
    assert!(
        f.keys
            .set_org_tier(&f.org.id, Some("pro"))
            .await
            .expect("stored")
    );
    let principal = f.auth.verify(secret.expose()).await.expect("verified");
    assert_eq!(principal.tier.as_deref(), Some("pro"));
    let stored = f
        .keys
        .org_by_name("acme")
        .await
        .expect("read")
        .expect("the org");
    assert_eq!(stored.tier.as_deref(), Some("pro"));
    assert!(f.keys.set_org_tier(&f.org.id, None).await.expect("stored"));
    let principal = f.auth.verify(secret.expose()).await.expect("verified");
    assert_eq!(principal.tier, None);
    assert!(
        !f.keys
            .set_org_tier("org_missing", Some("pro"))
            .await
            .expect("answered")
    );
}
