//! API keys: format and checksum, every lifecycle state, the cache, the layers, and the SQLite
//! store's promise to keep digests only.
#![allow(clippy::unwrap_used)] // test helpers panic on purpose when a fixture is broken
#![cfg(feature = "sqlite")]

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Request};
use axum::routing::get;
use faultline::Situation;
use faultline::clock::ManualClock;
use faultline_axum::auth::{
    AuthFailure, AuthLayer, Authenticator, KeyFormat, KeyRecord, KeyStatus, KeyStore, Malformed,
    MemoryKeyStore, NewKey, OrgRecord, Principal, RequireScopeLayer, SqliteKeyStore, StatusChange,
};
use faultline_axum::{Contract, Faultline};
use http_body_util::BodyExt;
use proptest::prelude::*;
use serde_json::{Value, json};
use tower::ServiceExt;

const NOW: i64 = 1_900_000_000;

fn format() -> KeyFormat {
    KeyFormat::new("cb", "live").unwrap()
}

fn refused(result: Result<Principal, AuthFailure>) -> Situation {
    match result {
        Err(AuthFailure::Refused(situation)) => situation,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn new_key(scopes: &[&str]) -> NewKey {
    NewKey {
        name: "test".into(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        ..NewKey::default()
    }
}

#[test]
fn authorization_headers_are_read_strictly() {
    let header = |raw: &[u8]| HeaderValue::from_bytes(raw).unwrap();
    let credential = |raw: &[u8]| Authenticator::credential(Some(&header(raw))).map(str::to_owned);
    assert_eq!(
        Authenticator::credential(None),
        Err(Situation::MissingApiKey)
    );
    assert_eq!(credential(b""), Err(Situation::MissingApiKey));
    assert_eq!(credential(b"  "), Err(Situation::MissingApiKey));
    for bad in [
        &b"Basic dXNlcjpwYXNz"[..],
        b"Bearer",
        b"Bearer ",
        b"Token abc",
        b"Bearer a b",
        b"Bearerabc",
        "Bearer cl\u{e9}".as_bytes(),
    ] {
        assert_eq!(
            credential(bad),
            Err(Situation::MalformedApiKey),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
    let long = format!("Bearer {}", "k".repeat(10 * 1024));
    assert_eq!(credential(long.as_bytes()), Err(Situation::MalformedApiKey));
    assert_eq!(credential(b"Bearer abc").as_deref(), Ok("abc"));
    assert_eq!(credential(b"bearer abc").as_deref(), Ok("abc"));
    assert_eq!(credential(b"BEARER   abc ").as_deref(), Ok("abc"));
}

proptest! {
    #[test]
    fn any_single_character_change_breaks_the_checksum(
        position in 8usize..44,
        replacement in "[A-Za-z0-9]",
    ) {
        let format = format();
        let key = format.generate();
        let raw = key.expose();
        prop_assert_eq!(format.check(raw), Ok(()));
        let mut changed = raw.to_owned();
        changed.replace_range(position..=position, &replacement);
        prop_assume!(changed != raw);
        // CRC32 catches every error confined to 32 consecutive bits, so one character always.
        prop_assert_eq!(format.check(&changed), Err(Malformed::BadChecksum));
    }

    #[test]
    fn generated_keys_always_pass_and_differ(prefix in "[a-z0-9]{1,16}", env in "[a-z0-9]{1,16}") {
        let format = KeyFormat::new(&prefix, &env).unwrap();
        let a = format.generate();
        let b = format.generate();
        prop_assert_eq!(format.check(a.expose()), Ok(()));
        let lead = format!("{prefix}_{env}_");
        prop_assert!(a.expose().starts_with(&lead));
        prop_assert_ne!(a.expose(), b.expose());
    }

    #[test]
    fn credentials_never_panic_the_checker(text in ".{0,80}") {
        let _ = format().check(&text);
    }
}

struct Fixture {
    auth: Authenticator,
    clock: ManualClock,
    org: OrgRecord,
    store: Arc<dyn KeyStore>,
}

async fn fixture(store: Arc<dyn KeyStore>) -> Fixture {
    let clock = ManualClock::at(NOW);
    let auth = Authenticator::new(format(), Arc::clone(&store)).with_clock(Arc::new(clock.clone()));
    let org = auth.ensure_org("acme").await.unwrap();
    Fixture {
        auth,
        clock,
        org,
        store,
    }
}

/// Every state a key and its organisation can be in, against one store.
async fn every_lifecycle_state(store: Arc<dyn KeyStore>) {
    let f = fixture(store).await;
    let auth = &f.auth;

    // Malformed and unknown keys never reach a principal.
    assert_eq!(
        refused(auth.verify("cb_live_short").await),
        Situation::MalformedApiKey
    );
    let stranger = format().generate();
    assert_eq!(
        refused(auth.verify(stranger.expose()).await),
        Situation::InvalidApiKey
    );

    // Active: the principal carries org, key and scopes.
    let (record, key) = auth
        .create_key(&f.org.id, new_key(&["a:read"]))
        .await
        .unwrap();
    let principal = auth.verify(key.expose()).await.unwrap();
    assert_eq!(&*principal.org_id, f.org.id);
    assert_eq!(&*principal.key_id, record.id);
    assert!(principal.has_scope("a:read") && !principal.has_scope("a:write"));

    // Paused, resumed, revoked: each holds at once although the key is cached.
    let change = |action| auth.change_key(&f.org.id, &record.id, action);
    use faultline_axum::auth::KeyAction::{Pause, Resume, Revoke};
    assert!(matches!(
        change(Pause).await.unwrap(),
        StatusChange::Changed(_)
    ));
    assert_eq!(
        refused(auth.verify(key.expose()).await),
        Situation::ApiKeyPaused
    );
    assert!(matches!(
        change(Resume).await.unwrap(),
        StatusChange::Changed(_)
    ));
    assert!(auth.verify(key.expose()).await.is_ok());
    assert!(matches!(
        change(Revoke).await.unwrap(),
        StatusChange::Changed(_)
    ));
    assert_eq!(
        refused(auth.verify(key.expose()).await),
        Situation::ApiKeyRevoked
    );
    match change(Resume).await.unwrap() {
        StatusChange::Refused(key) => assert_eq!(key.status, KeyStatus::Revoked),
        other => panic!("a revoked key cannot be resumed: {other:?}"),
    }
    // Another organisation cannot touch the key: it is not found.
    assert_eq!(
        auth.change_key("org_other", &record.id, Pause)
            .await
            .unwrap(),
        StatusChange::NotFound
    );

    // Expired: refused from the second its expiry is reached.
    let mut expiring = new_key(&["a:read"]);
    expiring.expires_at = Some(NOW + 30);
    let (_, short) = auth.create_key(&f.org.id, expiring).await.unwrap();
    assert!(auth.verify(short.expose()).await.is_ok());
    f.clock.advance_secs(29);
    assert!(auth.verify(short.expose()).await.is_ok());
    f.clock.advance_secs(1);
    assert_eq!(
        refused(auth.verify(short.expose()).await),
        Situation::ApiKeyExpired
    );

    // Organisation inactive, then active again.
    let (_, good) = auth
        .create_key(&f.org.id, new_key(&["a:read"]))
        .await
        .unwrap();
    assert!(auth.verify(good.expose()).await.is_ok());
    assert!(auth.set_org_active(&f.org.id, false).await.unwrap());
    assert_eq!(
        refused(auth.verify(good.expose()).await),
        Situation::OrgInactive
    );
    assert!(auth.set_org_active(&f.org.id, true).await.unwrap());
    assert!(auth.verify(good.expose()).await.is_ok());

    // A soft-deleted organisation is inactive too.
    let deleted = OrgRecord {
        id: "org_deleted".into(),
        name: "deleted".into(),
        active: true,
        deleted_at: Some(NOW - 10),
        created_at: NOW - 100,
    };
    f.store.insert_org(deleted.clone()).await.unwrap();
    let (_, orphan) = auth
        .create_key(&deleted.id, new_key(&["a:read"]))
        .await
        .unwrap();
    assert_eq!(
        refused(auth.verify(orphan.expose()).await),
        Situation::OrgInactive
    );

    // Listing shows every key of the org, none of another.
    let listed = auth.list_keys(&f.org.id).await.unwrap();
    assert_eq!(listed.len(), 3);
    assert!(listed.iter().all(|k| k.org_id == f.org.id));
}

#[tokio::test]
async fn every_lifecycle_state_in_memory() {
    every_lifecycle_state(Arc::new(MemoryKeyStore::new())).await;
}

#[tokio::test]
async fn every_lifecycle_state_in_sqlite() {
    every_lifecycle_state(Arc::new(SqliteKeyStore::in_memory().unwrap())).await;
}

#[tokio::test]
async fn a_change_made_elsewhere_is_seen_when_the_cache_entry_expires() {
    let f = fixture(Arc::new(MemoryKeyStore::new())).await;
    let auth = f.auth.with_cache_ttl(10);
    let (record, key) = auth
        .create_key(&f.org.id, new_key(&["a:read"]))
        .await
        .unwrap();
    assert!(auth.verify(key.expose()).await.is_ok());
    assert!(
        auth.verify_cached(key.expose()).is_some(),
        "verified keys are cached"
    );
    // Another process revokes the key straight in the shared store.
    f.store
        .set_key_status(
            &f.org.id,
            &record.id,
            &[KeyStatus::Active],
            KeyStatus::Revoked,
        )
        .await
        .unwrap();
    f.clock.advance_secs(9);
    assert!(
        auth.verify(key.expose()).await.is_ok(),
        "within the time to live"
    );
    f.clock.advance_secs(1);
    assert!(auth.verify_cached(key.expose()).is_none());
    assert_eq!(
        refused(auth.verify(key.expose()).await),
        Situation::ApiKeyRevoked
    );
}

#[tokio::test]
async fn the_cap_counts_unrevoked_keys_only() {
    let f = fixture(Arc::new(MemoryKeyStore::new())).await;
    let auth = f.auth.with_max_keys_per_org(2);
    let (first, _) = auth.create_key(&f.org.id, new_key(&["a"])).await.unwrap();
    auth.create_key(&f.org.id, new_key(&["a"])).await.unwrap();
    assert!(matches!(
        auth.create_key(&f.org.id, new_key(&["a"])).await,
        Err(faultline_axum::auth::CreateKeyError::LimitReached { max: 2 })
    ));
    auth.change_key(
        &f.org.id,
        &first.id,
        faultline_axum::auth::KeyAction::Revoke,
    )
    .await
    .unwrap();
    assert!(auth.create_key(&f.org.id, new_key(&["a"])).await.is_ok());
}

#[tokio::test]
async fn sqlite_keeps_digests_never_keys() {
    let dir = std::env::temp_dir().join(format!("faultline-keys-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("keys.db");
    let store = Arc::new(SqliteKeyStore::open(&db).unwrap());
    let auth = Authenticator::new(format(), store.clone());
    let org = auth.ensure_org("acme").await.unwrap();
    let mut keys = Vec::new();
    for _ in 0..5 {
        let (record, key) = auth
            .create_key(&org.id, new_key(&["a:read"]))
            .await
            .unwrap();
        keys.push((record, key));
    }
    drop(auth);
    drop(store);

    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        bytes.extend(std::fs::read(entry.unwrap().path()).unwrap());
    }
    let contains = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    for (record, key) in &keys {
        let raw = key.expose();
        assert!(!contains(raw.as_bytes()), "the raw key is in the database");
        // Not even the secret part beyond the display prefix.
        assert!(!contains(&raw.as_bytes()[12..]));
        assert!(contains(&record.digest.0), "the digest is what is stored");
        assert!(contains(record.display_prefix.as_bytes()));
    }

    // Reopened, the store still verifies the keys: the digest is enough.
    let reopened = Authenticator::new(format(), Arc::new(SqliteKeyStore::open(&db).unwrap()));
    let principal = reopened.verify(keys[0].1.expose()).await.unwrap();
    assert_eq!(&*principal.key_id, keys[0].0.id);
    let listed: Vec<KeyRecord> = reopened.list_keys(&org.id).await.unwrap();
    assert_eq!(
        listed,
        keys.iter().map(|(r, _)| r.clone()).collect::<Vec<_>>()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn debug_output_never_shows_a_key() {
    let f = fixture(Arc::new(MemoryKeyStore::new())).await;
    let (record, key) = f.auth.create_key(&f.org.id, new_key(&["a"])).await.unwrap();
    let principal = f.auth.verify(key.expose()).await.unwrap();
    let secret = &key.expose()[12..];
    for debug in [
        format!("{key:?}"),
        format!("{record:?}"),
        format!("{principal:?}"),
        format!("{:?}", f.auth),
        format!("{:?}", key.digest()),
    ] {
        assert!(!debug.contains(secret), "{debug}");
    }
}

async fn layered_app() -> (Router, String, String) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/catalogs/chatbots.toml"
    );
    let catalog =
        faultline::Catalog::from_toml_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let auth = Arc::new(Authenticator::new(
        format(),
        Arc::new(MemoryKeyStore::new()),
    ));
    let org = auth.ensure_org("acme").await.unwrap();
    let (_, writer) = auth
        .create_key(&org.id, new_key(&["bots:write"]))
        .await
        .unwrap();
    let (_, reader) = auth
        .create_key(&org.id, new_key(&["bots:read"]))
        .await
        .unwrap();
    let router = Router::new()
        .route(
            "/bots",
            get(|principal: Principal| async move { principal.org_id.to_string() })
                .route_layer(RequireScopeLayer::new("bots:write"))
                .route_layer(AuthLayer::new(auth)),
        )
        .route("/open", get(|| async { "open" }));
    let app = Faultline::new(Contract::new(catalog).unwrap()).install(router);
    (app, writer.expose().to_owned(), reader.expose().to_owned())
}

async fn call(app: &Router, path: &str, authorization: Option<&str>) -> (u16, Value) {
    let mut request = Request::get(path);
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, body)
}

#[tokio::test]
async fn the_layers_answer_with_catalog_errors() {
    let (app, writer, reader) = layered_app().await;
    let (status, body) = call(&app, "/bots", None).await;
    assert_eq!((status, &body["error"]), (401, &json!("missing_api_key")));

    let (status, body) = call(&app, "/bots", Some(&format!("Bearer {reader}"))).await;
    assert_eq!(status, 403);
    assert_eq!(body["error"], "insufficient_scope");
    assert_eq!(body["details"], json!({"required": "bots:write"}));

    let (status, body) = call(&app, "/bots", Some(&format!("Bearer {writer}"))).await;
    assert_eq!(status, 200);
    assert!(body.as_str().unwrap().starts_with("org_"));
    // The second call is served from the cache, with the same answer.
    assert_eq!(
        call(&app, "/bots", Some(&format!("Bearer {writer}")))
            .await
            .0,
        200
    );

    // A key never comes back in an error body.
    let mut bad = writer.clone();
    bad.pop();
    bad.push('!');
    let (status, body) = call(&app, "/bots", Some(&format!("Bearer {bad}"))).await;
    assert_eq!((status, &body["error"]), (401, &json!("malformed_api_key")));
    assert!(!body.to_string().contains(&bad[8..20]));

    // Routes without the layer stay open.
    assert_eq!(call(&app, "/open", None).await.0, 200);
}

/// A store that counts digest lookups.
struct Counting {
    inner: MemoryKeyStore,
    lookups: std::sync::atomic::AtomicUsize,
}

impl KeyStore for Counting {
    fn find_by_digest(
        &self,
        digest: faultline_axum::auth::KeyDigest,
    ) -> faultline_axum::auth::StoreFuture<'_, Option<(KeyRecord, OrgRecord)>> {
        self.lookups
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.find_by_digest(digest)
    }
    fn insert_key(
        &self,
        key: KeyRecord,
        max: usize,
    ) -> faultline_axum::auth::StoreFuture<'_, faultline_axum::auth::Inserted> {
        self.inner.insert_key(key, max)
    }
    fn list_keys(&self, org_id: &str) -> faultline_axum::auth::StoreFuture<'_, Vec<KeyRecord>> {
        self.inner.list_keys(org_id)
    }
    fn set_key_status(
        &self,
        org_id: &str,
        key_id: &str,
        from: &[KeyStatus],
        to: KeyStatus,
    ) -> faultline_axum::auth::StoreFuture<'_, StatusChange> {
        self.inner.set_key_status(org_id, key_id, from, to)
    }
    fn insert_org(&self, org: OrgRecord) -> faultline_axum::auth::StoreFuture<'_, ()> {
        self.inner.insert_org(org)
    }
    fn org_by_name(&self, name: &str) -> faultline_axum::auth::StoreFuture<'_, Option<OrgRecord>> {
        self.inner.org_by_name(name)
    }
    fn set_org_active(
        &self,
        org_id: &str,
        active: bool,
    ) -> faultline_axum::auth::StoreFuture<'_, bool> {
        self.inner.set_org_active(org_id, active)
    }
    fn count_orgs(&self) -> faultline_axum::auth::StoreFuture<'_, u64> {
        self.inner.count_orgs()
    }
}

#[tokio::test]
async fn made_up_keys_cost_one_lookup_per_time_to_live() {
    let store = Arc::new(Counting {
        inner: MemoryKeyStore::new(),
        lookups: 0.into(),
    });
    let f = fixture(store.clone()).await;
    let lookups = || store.lookups.load(std::sync::atomic::Ordering::SeqCst);
    let made_up = format().generate();
    for _ in 0..100 {
        assert_eq!(
            refused(f.auth.verify(made_up.expose()).await),
            Situation::InvalidApiKey
        );
    }
    assert_eq!(lookups(), 1);
    // Malformed keys never reach the store at all.
    assert_eq!(
        refused(f.auth.verify("cb_live_nope").await),
        Situation::MalformedApiKey
    );
    assert_eq!(lookups(), 1);
    f.clock.advance_secs(DEFAULT_TTL);
    assert_eq!(
        refused(f.auth.verify(made_up.expose()).await),
        Situation::InvalidApiKey
    );
    assert_eq!(lookups(), 2, "asked again once the entry is stale");

    // A real key is looked up once, then served from the cache.
    let (_, key) = f.auth.create_key(&f.org.id, new_key(&["a"])).await.unwrap();
    for _ in 0..10 {
        assert!(f.auth.verify(key.expose()).await.is_ok());
    }
    assert_eq!(lookups(), 3);
}

const DEFAULT_TTL: i64 = faultline_axum::auth::DEFAULT_CACHE_TTL_SECS;
