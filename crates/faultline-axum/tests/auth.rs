//! API keys: format and checksum, every lifecycle state, the cache, the layers, the rules on
//! what a key may do to other keys. (The SQLite store's own tests are in faultline-sqlite.)
#![allow(clippy::unwrap_used)] // test helpers panic on purpose when a fixture is broken
#![cfg(feature = "auth")]

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Request};
use axum::routing::get;
use faultline::Situation;
use faultline::clock::ManualClock;
use faultline_axum::auth::{
    AuthLayer, Authenticator, ChangeKeyError, CreateKeyError, KeyAction, KeyAdmin, KeyFormat,
    KeyLookup, KeyManager, KeyRecord, KeyStatus, Malformed, MemoryKeyStore, NewKey, OrgRecord,
    Overreach, Principal, RequireScopeLayer, StatusChange,
};
use faultline_axum::{Contract, Faultline};
use http_body_util::BodyExt;
use proptest::prelude::*;
use serde_json::{Value, json};
use tower::ServiceExt;

use faultline_axum::auth::suite::{self, Fixture, NOW, format, new_key, refused};

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

#[tokio::test]
async fn every_lifecycle_state_in_memory() {
    suite::every_lifecycle_state(Arc::new(MemoryKeyStore::new())).await;
}

#[tokio::test]
async fn a_change_made_elsewhere_is_seen_when_the_cache_entry_expires() {
    let store = Arc::new(MemoryKeyStore::new());
    let f = Fixture::with(store.clone(), |auth| auth.with_cache_ttl(10)).await;
    let auth = &f.auth;
    let (record, key) = f
        .keys
        .create_key(&f.org.id, new_key(&["a:read"]))
        .await
        .unwrap();
    assert!(auth.verify(key.expose()).await.is_ok());
    assert!(
        auth.verify_cached(key.expose()).is_some(),
        "verified keys are cached"
    );
    // Another process revokes the key straight in the shared store.
    store
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
    suite::the_cap_counts_unrevoked_keys_only(Arc::new(MemoryKeyStore::new())).await;
}

#[tokio::test]
async fn debug_output_never_shows_a_key() {
    let f = Fixture::new(Arc::new(MemoryKeyStore::new())).await;
    let (record, key) = f.keys.create_key(&f.org.id, new_key(&["a"])).await.unwrap();
    let principal = f.auth.verify(key.expose()).await.unwrap();
    let secret = &key.expose()[12..];
    for debug in [
        format!("{key:?}"),
        format!("{record:?}"),
        format!("{principal:?}"),
        format!("{:?}", f.auth),
        format!("{:?}", f.keys),
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
    let store = Arc::new(MemoryKeyStore::new());
    let auth = Arc::new(Authenticator::new(format(), store.clone()));
    let keys = KeyManager::new(Arc::clone(&auth), store);
    let org = keys.ensure_org("acme").await.unwrap();
    let (_, writer) = keys
        .create_key(&org.id, new_key(&["bots:write"]))
        .await
        .unwrap();
    let (_, reader) = keys
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

/// A store that counts digest lookups; management goes to the memory store directly.
struct Counting {
    inner: MemoryKeyStore,
    lookups: std::sync::atomic::AtomicUsize,
}

impl KeyLookup for Counting {
    fn find_by_digest(
        &self,
        digest: faultline_axum::auth::KeyDigest,
    ) -> faultline_axum::auth::StoreFuture<'_, Option<(KeyRecord, OrgRecord)>> {
        self.lookups
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.find_by_digest(digest)
    }
}

#[tokio::test]
async fn made_up_keys_cost_one_lookup_per_time_to_live() {
    let memory = MemoryKeyStore::new();
    let store = Arc::new(Counting {
        inner: memory.clone(),
        lookups: 0.into(),
    });
    // The authenticator sees the counting lookup; the manager writes to the same tables.
    let clock = ManualClock::at(NOW);
    let auth =
        Arc::new(Authenticator::new(format(), store.clone()).with_clock(Arc::new(clock.clone())));
    let keys = KeyManager::new(Arc::clone(&auth), Arc::new(memory));
    let org = keys.ensure_org("acme").await.unwrap();
    let f = Fixture {
        auth,
        keys,
        clock,
        org,
    };
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
    let (_, key) = f.keys.create_key(&f.org.id, new_key(&["a"])).await.unwrap();
    for _ in 0..10 {
        assert!(f.auth.verify(key.expose()).await.is_ok());
    }
    assert_eq!(lookups(), 3);
}

const DEFAULT_TTL: i64 = faultline_axum::auth::DEFAULT_CACHE_TTL_SECS;

/// The principal of a freshly created key, as the layer would hand it to a handler.
async fn principal_of(f: &Fixture, new: NewKey) -> Principal {
    principal_and_key(f, new).await.0
}

async fn principal_and_key(f: &Fixture, new: NewKey) -> (Principal, String) {
    let (_, key) = f.keys.create_key(&f.org.id, new).await.unwrap();
    let principal = f.auth.verify(key.expose()).await.unwrap();
    (principal, key.expose().to_owned())
}

#[tokio::test]
async fn a_key_creates_no_key_stronger_than_itself() {
    let f = Fixture::new(Arc::new(MemoryKeyStore::new())).await;
    let writer = principal_of(&f, new_key(&["api_keys:write", "bots:read"])).await;

    match f
        .keys
        .create_key_as(
            &writer,
            new_key(&["bots:write", "bots:read", "api_keys:read"]),
        )
        .await
    {
        Err(CreateKeyError::Overreach(Overreach::Scopes(missing))) => {
            assert_eq!(missing.joined(), "api_keys:read bots:write");
        }
        other => panic!("scope escalation must be refused: {other:?}"),
    }
    let (made, _) = f
        .keys
        .create_key_as(&writer, new_key(&["bots:read"]))
        .await
        .unwrap();
    assert_eq!(
        made.org_id, f.org.id,
        "created in the caller's organisation"
    );

    // An expiring key: no key without expiry, none that expires later; the same or sooner is fine.
    let expiring = principal_of(
        &f,
        new_key(&["api_keys:write", "bots:read"]).with_expiry(Some(NOW + 60)),
    )
    .await;
    for asked in [None, Some(NOW + 61)] {
        assert!(
            matches!(
                f.keys
                    .create_key_as(&expiring, new_key(&["bots:read"]).with_expiry(asked))
                    .await,
                Err(CreateKeyError::Overreach(Overreach::OutlivesCaller {
                    caller_expires_at
                })) if caller_expires_at == NOW + 60
            ),
            "{asked:?}"
        );
    }
    for asked in [NOW + 60, NOW + 1] {
        let (made, _) = f
            .keys
            .create_key_as(&expiring, new_key(&["bots:read"]).with_expiry(Some(asked)))
            .await
            .unwrap();
        assert_eq!(made.expires_at, Some(asked));
    }
    // Nothing refused was stored.
    assert_eq!(
        f.keys.list_keys(&f.org.id, None, 100).await.unwrap().len(),
        5
    );
}

#[tokio::test]
async fn a_key_changes_no_key_stronger_than_itself_and_never_pauses_itself() {
    let f = Fixture::new(Arc::new(MemoryKeyStore::new())).await;
    let admin = principal_of(&f, new_key(&["api_keys:write", "bots:write", "bots:read"])).await;
    let (helper, helper_key) =
        principal_and_key(&f, new_key(&["api_keys:write", "bots:read"])).await;

    for action in [KeyAction::Pause, KeyAction::Revoke] {
        match f.keys.change_key_as(&helper, &admin.key_id, action).await {
            Err(ChangeKeyError::Overreach(Overreach::Scopes(missing))) => {
                assert_eq!(missing.joined(), "bots:write");
            }
            other => panic!("{action:?} of a stronger key must be refused: {other:?}"),
        }
    }
    assert!(
        f.keys
            .list_keys(&f.org.id, None, 100)
            .await
            .unwrap()
            .iter()
            .all(|k| k.status == KeyStatus::Active),
        "nothing changed"
    );

    // The stronger key may pause and resume the weaker one.
    let changed = |c: StatusChange| match c {
        StatusChange::Changed(key) => key.status,
        other => panic!("{other:?}"),
    };
    let paused = f
        .keys
        .change_key_as(&admin, &helper.key_id, KeyAction::Pause);
    assert_eq!(changed(paused.await.unwrap()), KeyStatus::Paused);
    let resumed = f
        .keys
        .change_key_as(&admin, &helper.key_id, KeyAction::Resume);
    assert_eq!(changed(resumed.await.unwrap()), KeyStatus::Active);

    // A key cannot pause itself, and stays usable; it may revoke itself.
    assert!(matches!(
        f.keys
            .change_key_as(&helper, &helper.key_id, KeyAction::Pause)
            .await,
        Err(ChangeKeyError::Overreach(Overreach::PausesItself))
    ));
    assert!(f.auth.verify(&helper_key).await.is_ok());
    let revoked = f
        .keys
        .change_key_as(&helper, &helper.key_id, KeyAction::Revoke);
    assert_eq!(changed(revoked.await.unwrap()), KeyStatus::Revoked);

    // Another organisation's key is not found, whatever the caller holds.
    let other = f.keys.ensure_org("other").await.unwrap();
    let (foreign, _) = f
        .keys
        .create_key(&other.id, new_key(&["bots:read"]))
        .await
        .unwrap();
    assert_eq!(
        f.keys
            .change_key_as(&admin, &foreign.id, KeyAction::Revoke)
            .await
            .unwrap(),
        StatusChange::NotFound
    );
}

#[tokio::test]
async fn listings_page_by_creation_then_id() {
    suite::listings_page_by_creation_then_id(Arc::new(MemoryKeyStore::new())).await;
}

#[tokio::test]
async fn org_tiers_reach_the_principal() {
    suite::org_tiers_reach_the_principal(Arc::new(MemoryKeyStore::new())).await;
}
