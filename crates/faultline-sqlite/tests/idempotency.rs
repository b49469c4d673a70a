//! The idempotency store suite on SQLite: in memory, and on a WAL file shared by two stores
//! (as two processes would share it).
#![cfg(feature = "idempotency")]

use std::path::PathBuf;
use std::sync::Arc;

use faultline_axum::idempotency::suite;
use faultline_sqlite::idempotency::SqliteIdempotencyStore;
use faultline_sqlite::{Pool, PoolOptions};

fn memory() -> Arc<SqliteIdempotencyStore> {
    Arc::new(SqliteIdempotencyStore::in_memory().expect("an in-memory store"))
}

/// A fresh database file in the temporary directory, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "faultline-idem-{name}-{}-{}.db",
            std::process::id(),
            rand_suffix()
        ));
        TempFile(path)
    }

    fn store(&self) -> Arc<SqliteIdempotencyStore> {
        let pool = Pool::open(&self.0, PoolOptions::default()).expect("a database file");
        Arc::new(SqliteIdempotencyStore::new(pool).expect("the table"))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.0.display()));
        }
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claims_elect_one() {
    suite::concurrent_claims_elect_one(memory()).await;
    let file = TempFile::new("race");
    suite::concurrent_claims_elect_one(file.store()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_pools_on_one_file_elect_one_claim() {
    use faultline_axum::idempotency::{ClaimOutcome, IdempotencyStore};
    let file = TempFile::new("two");
    let (a, b) = (file.store(), file.store());
    let clock = suite::clock();
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let store = if i % 2 == 0 {
                Arc::clone(&a)
            } else {
                Arc::clone(&b)
            };
            let request = suite::request(&clock, "org", "two-pools", b"{}");
            tokio::spawn(async move { store.claim(&request).await.expect("the store answers") })
        })
        .collect();
    let mut won = 0;
    for task in tasks {
        match task.await.expect("the task finishes") {
            ClaimOutcome::Claimed(_) => won += 1,
            ClaimOutcome::InProgress { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(won, 1);
}

#[tokio::test]
async fn replays_are_byte_identical() {
    suite::replays_are_byte_identical(memory()).await;
    let file = TempFile::new("replay");
    suite::replays_are_byte_identical(file.store()).await;
}

#[tokio::test]
async fn mismatches_say_what_differs() {
    suite::mismatches_say_what_differs(memory()).await;
    let file = TempFile::new("mismatch");
    suite::mismatches_say_what_differs(file.store()).await;
}

#[tokio::test]
async fn scopes_are_independent() {
    suite::scopes_are_independent(memory()).await;
}

#[tokio::test]
async fn an_expired_lease_is_taken_over() {
    suite::an_expired_lease_is_taken_over(memory()).await;
    let file = TempFile::new("lease");
    suite::an_expired_lease_is_taken_over(file.store()).await;
}

#[tokio::test]
async fn release_lets_a_retry_run() {
    suite::release_lets_a_retry_run(memory()).await;
}

#[tokio::test]
async fn retention_and_pruning() {
    suite::retention_and_pruning(memory()).await;
    let file = TempFile::new("prune");
    suite::retention_and_pruning(file.store()).await;
}
