//! The SQLite key store: every lifecycle state, paging, digests only on disk, owner-only
//! files, and a busy file answered as unavailable.
#![allow(clippy::unwrap_used)] // tests unwrap: a failure is the test failing

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use faultline_axum::auth::{CreateKeyError, KeyRecord};
use faultline_sqlite::{PoolOptions, SqliteKeyStore};
use rusqlite::Connection;

use faultline_axum::auth::suite::{self, Fixture, new_key};

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

async fn fixture(store: SqliteKeyStore) -> Fixture {
    Fixture::new(Arc::new(store)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_lifecycle_state_in_a_file() {
    let dir = TempDir::new("lifecycle");
    let store = SqliteKeyStore::open(&dir.db(), PoolOptions::default()).unwrap();
    suite::every_lifecycle_state(Arc::new(store)).await;
}

#[tokio::test]
async fn the_cap_is_kept_by_the_store() {
    let store = SqliteKeyStore::in_memory().unwrap();
    suite::the_cap_counts_unrevoked_keys_only(Arc::new(store)).await;
}

#[tokio::test]
async fn listings_page_by_creation_then_id() {
    let store = SqliteKeyStore::in_memory().unwrap();
    suite::listings_page_by_creation_then_id(Arc::new(store)).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn org_tiers_are_kept_in_a_file() {
    let dir = TempDir::new("tiers");
    let store = SqliteKeyStore::open(&dir.db(), PoolOptions::default()).unwrap();
    suite::org_tiers_reach_the_principal(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_from_before_tiers_gets_the_column_and_keeps_its_rows() {
    let dir = TempDir::new("migrate");
    {
        let conn = Connection::open(dir.db()).unwrap();
        conn.execute_batch(
            "CREATE TABLE orgs (id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, \
             active INTEGER NOT NULL, deleted_at INTEGER, created_at INTEGER NOT NULL);
             INSERT INTO orgs VALUES ('org_old', 'old', 1, NULL, 5);",
        )
        .unwrap();
    }
    // Opened twice, as two processes would: the column is added once.
    let first = SqliteKeyStore::open(&dir.db(), PoolOptions::default()).unwrap();
    let second = SqliteKeyStore::open(&dir.db(), PoolOptions::default()).unwrap();
    use faultline_axum::auth::KeyAdmin;
    let old = first.org_by_name("old").await.unwrap().unwrap();
    assert_eq!(
        (old.id.as_str(), old.created_at, old.tier),
        ("org_old", 5, None)
    );
    assert!(
        second
            .set_org_tier("org_old", Some("enterprise"))
            .await
            .unwrap()
    );
    let old = first.org_by_name("old").await.unwrap().unwrap();
    assert_eq!(old.tier.as_deref(), Some("enterprise"));
}
