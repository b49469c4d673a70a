//! The SQLite key store: every lifecycle state, paging, digests only on disk, owner-only
//! files, and a busy file answered as unavailable.
#![allow(clippy::unwrap_used)] // tests unwrap: a failure is the test failing

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use faultline::Situation;
use faultline::clock::ManualClock;
use faultline_axum::auth::{
    AuthFailure, Authenticator, CreateKeyError, KeyAction, KeyFormat, KeyManager, KeyPosition,
    KeyRecord, KeyStatus, NewKey, OrgRecord, Principal, StatusChange,
};
use faultline_sqlite::{PoolOptions, SqliteKeyStore};
use rusqlite::Connection;

const NOW: i64 = 1_900_000_000;

/// A fresh directory in the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "faultline-sqlite-keys-{name}-{}-{:?}",
            std::process::id(),
            Instant::now()
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    fn db(&self) -> PathBuf {
        self.0.join("keys.db")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn format() -> KeyFormat {
    KeyFormat::new("cb", "live").unwrap()
}

fn new_key(scopes: &[&str]) -> NewKey {
    NewKey::new("test", scopes.iter().copied())
}

fn refused(result: Result<Principal, AuthFailure>) -> Situation {
    match result {
        Err(AuthFailure::Refused(situation)) => situation,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

struct Fixture {
    auth: Arc<Authenticator>,
    keys: KeyManager,
    clock: ManualClock,
    org: OrgRecord,
}

async fn fixture(store: SqliteKeyStore) -> Fixture {
    let store = Arc::new(store);
    let clock = ManualClock::at(NOW);
    let auth =
        Arc::new(Authenticator::new(format(), store.clone()).with_clock(Arc::new(clock.clone())));
    let keys = KeyManager::new(Arc::clone(&auth), store);
    let org = keys.ensure_org("acme").await.unwrap();
    Fixture {
        auth,
        keys,
        clock,
        org,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_lifecycle_state_in_a_file() {
    let dir = TempDir::new("lifecycle");
    let f = fixture(SqliteKeyStore::open(&dir.db(), PoolOptions::default()).unwrap()).await;
    let (auth, keys) = (&f.auth, &f.keys);

    assert_eq!(
        refused(auth.verify(format().generate().expose()).await),
        Situation::InvalidApiKey
    );
    let (record, key) = keys
        .create_key(&f.org.id, new_key(&["a:read", "a:write"]))
        .await
        .unwrap();
    let principal = auth.verify(key.expose()).await.unwrap();
    assert_eq!(&*principal.key_id, record.id);
    assert_eq!(&*principal.scopes, ["a:read", "a:write"]);

    let change = |action| keys.change_key(&f.org.id, &record.id, action);
    assert!(matches!(
        change(KeyAction::Pause).await.unwrap(),
        StatusChange::Changed(_)
    ));
    assert_eq!(
        refused(auth.verify(key.expose()).await),
        Situation::ApiKeyPaused
    );
    assert!(matches!(
        change(KeyAction::Resume).await.unwrap(),
        StatusChange::Changed(_)
    ));
    assert!(auth.verify(key.expose()).await.is_ok());
    assert!(matches!(
        change(KeyAction::Revoke).await.unwrap(),
        StatusChange::Changed(_)
    ));
    assert_eq!(
        refused(auth.verify(key.expose()).await),
        Situation::ApiKeyRevoked
    );
    match change(KeyAction::Resume).await.unwrap() {
        StatusChange::Refused(key) => assert_eq!(key.status, KeyStatus::Revoked),
        other => panic!("a revoked key cannot be resumed: {other:?}"),
    }
    assert_eq!(
        keys.change_key("org_other", &record.id, KeyAction::Pause)
            .await
            .unwrap(),
        StatusChange::NotFound
    );

    let expiring = new_key(&["a:read"]).with_expiry(Some(NOW + 30));
    let (_, short) = keys.create_key(&f.org.id, expiring).await.unwrap();
    assert_eq!(
        auth.verify(short.expose()).await.unwrap().expires_at,
        Some(NOW + 30)
    );
    f.clock.advance_secs(30);
    assert_eq!(
        refused(auth.verify(short.expose()).await),
        Situation::ApiKeyExpired
    );

    let (_, good) = keys
        .create_key(&f.org.id, new_key(&["a:read"]))
        .await
        .unwrap();
    assert!(keys.set_org_active(&f.org.id, false).await.unwrap());
    assert_eq!(
        refused(auth.verify(good.expose()).await),
        Situation::OrgInactive
    );
    assert!(keys.set_org_active(&f.org.id, true).await.unwrap());
    assert!(auth.verify(good.expose()).await.is_ok());

    let mut deleted = OrgRecord::new("org_deleted", "deleted", NOW - 100);
    deleted.deleted_at = Some(NOW - 10);
    keys.admin().insert_org(deleted.clone()).await.unwrap();
    let (_, orphan) = keys
        .create_key(&deleted.id, new_key(&["a:read"]))
        .await
        .unwrap();
    assert_eq!(
        refused(auth.verify(orphan.expose()).await),
        Situation::OrgInactive
    );

    assert_eq!(keys.count_orgs().await.unwrap(), 2);
    assert_eq!(
        keys.org_by_name("deleted").await.unwrap(),
        Some(deleted),
        "an organisation reads back as written"
    );
    let listed = keys.list_keys(&f.org.id, None, 100).await.unwrap();
    assert_eq!(listed.len(), 3);
    assert!(listed.iter().all(|k| k.org_id == f.org.id));
}

#[tokio::test]
async fn the_cap_is_kept_by_the_store() {
    let f = fixture(SqliteKeyStore::in_memory().unwrap()).await;
    let keys = f.keys.with_max_keys_per_org(2);
    let (first, _) = keys.create_key(&f.org.id, new_key(&["a"])).await.unwrap();
    keys.create_key(&f.org.id, new_key(&["a"])).await.unwrap();
    assert!(matches!(
        keys.create_key(&f.org.id, new_key(&["a"])).await,
        Err(CreateKeyError::LimitReached { max: 2 })
    ));
    keys.change_key(&f.org.id, &first.id, KeyAction::Revoke)
        .await
        .unwrap();
    assert!(keys.create_key(&f.org.id, new_key(&["a"])).await.is_ok());
}

#[tokio::test]
async fn listings_page_by_creation_then_id() {
    let f = fixture(SqliteKeyStore::in_memory().unwrap()).await;
    let mut made = Vec::new();
    for i in 0..5 {
        f.clock.set(NOW + i / 2);
        let (record, _) = f.keys.create_key(&f.org.id, new_key(&["a"])).await.unwrap();
        made.push(record);
    }
    let other = f.keys.ensure_org("other").await.unwrap();
    f.keys.create_key(&other.id, new_key(&["a"])).await.unwrap();
    made.sort_by_key(KeyRecord::position);

    let mut seen = Vec::new();
    let mut after: Option<KeyPosition> = None;
    // Bounded, so that a store that ignores `after` fails instead of looping.
    for _ in 0..10 {
        let page = f.keys.list_keys(&f.org.id, after, 2).await.unwrap();
        assert!(page.len() <= 2);
        if page.is_empty() {
            break;
        }
        after = page.last().map(KeyRecord::position);
        seen.extend(page);
    }
    assert_eq!(seen, made);
    assert_eq!(
        f.keys.admin().key(&f.org.id, &made[0].id).await.unwrap(),
        Some(made[0].clone())
    );
    assert_eq!(
        f.keys.admin().key(&other.id, &made[0].id).await.unwrap(),
        None,
        "a key is found in its own organisation only"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_keeps_digests_never_keys() {
    let dir = TempDir::new("digests");
    let db = dir.db();
    let f = fixture(SqliteKeyStore::open(&db, PoolOptions::default()).unwrap()).await;
    let mut made = Vec::new();
    for _ in 0..5 {
        made.push(
            f.keys
                .create_key(&f.org.id, new_key(&["a:read"]))
                .await
                .unwrap(),
        );
    }
    let org_id = f.org.id.clone();
    drop(f);

    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(&dir.0).unwrap() {
        bytes.extend(std::fs::read(entry.unwrap().path()).unwrap());
    }
    let contains = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    for (record, key) in &made {
        let raw = key.expose();
        assert!(!contains(raw.as_bytes()), "the raw key is in the database");
        // Not even the secret part beyond the display prefix.
        assert!(!contains(&raw.as_bytes()[12..]));
        assert!(contains(&record.digest.0), "the digest is what is stored");
        assert!(contains(record.display_prefix.as_bytes()));
    }

    // Reopened, the store still verifies the keys: the digest is enough.
    let reopened = fixture(SqliteKeyStore::open(&db, PoolOptions::default()).unwrap()).await;
    let principal = reopened.auth.verify(made[0].1.expose()).await.unwrap();
    assert_eq!(&*principal.key_id, made[0].0.id);
    let listed = reopened.keys.list_keys(&org_id, None, 100).await.unwrap();
    let mut expected: Vec<KeyRecord> = made.into_iter().map(|(r, _)| r).collect();
    expected.sort_by_key(KeyRecord::position);
    assert_eq!(listed, expected);
}

#[cfg(unix)]
#[tokio::test]
async fn a_new_file_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("mode");
    let _store = SqliteKeyStore::open(&dir.db(), PoolOptions::default()).unwrap();
    let mode = std::fs::metadata(dir.db()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_lock_held_elsewhere_is_unavailable_and_lookups_go_on() {
    let dir = TempDir::new("busy");
    let mut options = PoolOptions::default();
    options.busy_timeout = Duration::from_millis(100);
    let f = fixture(SqliteKeyStore::open(&dir.db(), options).unwrap()).await;
    let (_, key) = f.keys.create_key(&f.org.id, new_key(&["a"])).await.unwrap();

    // Another process holds the write lock.
    let other = Connection::open(dir.db()).unwrap();
    other
        .execute_batch("BEGIN IMMEDIATE; UPDATE orgs SET name = name;")
        .unwrap();

    // A key not in the cache is looked up on a reader, which does not wait for the lock.
    assert!(f.auth.verify(key.expose()).await.is_ok());
    match f.keys.create_key(&f.org.id, new_key(&["a"])).await {
        Err(CreateKeyError::Store(e)) => assert!(e.is_unavailable(), "{e}"),
        other => panic!("a busy file must be unavailable: {other:?}"),
    }
    let error = f.keys.set_org_active(&f.org.id, false).await.unwrap_err();
    assert!(error.is_unavailable(), "{error}");

    other.execute_batch("COMMIT").unwrap();
    assert!(f.keys.create_key(&f.org.id, new_key(&["a"])).await.is_ok());
}
