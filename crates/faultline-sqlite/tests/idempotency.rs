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

/// Claims and releases commit without a disk flush, but only for themselves: the writer
/// connection keeps the level its owner set, so the application's writes and completions are
/// flushed as before.
#[tokio::test]
async fn claims_leave_the_connections_flush_level_as_it_was() {
    use faultline_axum::idempotency::{ClaimOutcome, IdempotencyStore};
    let file = TempFile::new("sync");
    let store = file.store();
    let level = |store: &SqliteIdempotencyStore| -> i64 {
        store
            .pool()
            .write_blocking(|c| c.pragma_query_value(None, "synchronous", |r| r.get(0)))
            .expect("the level")
    };
    let clock = suite::clock();
    for set in [2_i64, 3, 1, 0] {
        store
            .pool()
            .write_blocking(|c| c.pragma_update(None, "synchronous", set))
            .expect("a level");
        let request = suite::request(&clock, "org", &format!("sync-{set}"), b"{}");
        let ClaimOutcome::Claimed(token) = store.claim(&request).await.expect("a claim") else {
            panic!("a fresh key is claimed");
        };
        assert_eq!(level(&store), set, "after a claim");
        assert!(store.release(&token).await.expect("a release"));
        assert_eq!(level(&store), set, "after a release");
    }
    // A claim that fails (the table is gone) puts the level back too.
    store
        .pool()
        .write_blocking(|c| {
            c.pragma_update(None, "synchronous", 2)?;
            c.execute_batch("DROP TABLE idempotency_records")
        })
        .expect("the table dropped");
    let request = suite::request(&clock, "org", "sync-error", b"{}");
    assert!(store.claim(&request).await.is_err());
    assert_eq!(level(&store), 2, "after a failed claim");
}

/// A claim the handler's transaction decides: nothing is written before that transaction;
/// of two processes on one file that both ran, only the first commit keeps its write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_claims_are_decided_by_the_handlers_commit() {
    use axum::http::StatusCode;
    use faultline_axum::idempotency::{ClaimOutcome, IdempotencyStore, StoredResponse};
    use faultline_sqlite::idempotency::complete_in;
    let file = TempFile::new("deferred");
    let (a, b) = (file.store(), file.store());
    a.pool()
        .write_blocking(|c| c.execute_batch("CREATE TABLE things (id TEXT)"))
        .expect("a table");
    let clock = suite::clock();
    let records = |store: &SqliteIdempotencyStore| -> i64 {
        store
            .pool()
            .write_blocking(|c| {
                c.query_row("SELECT count(*) FROM idempotency_records", [], |r| r.get(0))
            })
            .expect("a count")
    };
    let request = suite::request(&clock, "org", "deferred", b"{}");
    let ClaimOutcome::Claimed(first) = a.claim_deferred(&request).await.expect("a claim") else {
        panic!("a fresh key is claimed");
    };
    assert!(first.is_local());
    assert_eq!(records(&a), 0, "nothing written at the claim");
    // The same process: the second request waits, another body is a mismatch.
    let again = suite::request(&clock, "org", "deferred", b"{}");
    assert!(matches!(
        a.claim_deferred(&again).await.expect("an answer"),
        ClaimOutcome::InProgress { .. }
    ));
    let other = suite::request(&clock, "org", "deferred", b"[]");
    assert!(matches!(
        a.claim_deferred(&other).await.expect("an answer"),
        ClaimOutcome::Mismatch(_)
    ));
    // Another process does not see it, and runs too.
    let ClaimOutcome::Claimed(second) = b.claim_deferred(&again).await.expect("a claim") else {
        panic!("another process claims locally too");
    };
    let response = StoredResponse::new(StatusCode::CREATED, vec![], "{\"id\":1}");
    let now = request.now;
    let commit = |store: &SqliteIdempotencyStore, token, thing: &'static str| {
        let response = response.clone();
        store.pool().write_blocking(move |conn| {
            let tx = conn.transaction()?;
            tx.execute("INSERT INTO things VALUES (?1)", [thing])?;
            if !complete_in(
                &tx,
                &token,
                &response,
                now,
                std::time::Duration::from_secs(60),
            )? {
                return Ok(false); // rolled back
            }
            tx.commit()?;
            Ok(true)
        })
    };
    assert!(commit(&b, second.clone(), "b").expect("b commits"));
    assert!(!commit(&a, first.clone(), "a").expect("a rolls back"));
    let things: Vec<String> = a
        .pool()
        .write_blocking(|c| {
            let mut stmt = c.prepare("SELECT id FROM things")?;
            stmt.query_map([], |r| r.get(0))?.collect()
        })
        .expect("the rows");
    assert_eq!(things, ["b"], "only the first commit's write is there");
    a.settle(&first);
    b.settle(&second);
    // Every later claim, in either process, replays the record.
    for store in [&a, &b] {
        let later = suite::request(&clock, "org", "deferred", b"{}");
        assert_eq!(
            store.claim(&later).await.expect("an answer"),
            ClaimOutcome::Replay(response.clone())
        );
    }
}

/// A local claim is released without a write, and frees the key at once.
#[tokio::test]
async fn releasing_a_deferred_claim_writes_nothing() {
    use faultline_axum::idempotency::{ClaimOutcome, IdempotencyStore};
    let file = TempFile::new("deferred-release");
    let store = file.store();
    let clock = suite::clock();
    let request = suite::request(&clock, "org", "k", b"{}");
    let ClaimOutcome::Claimed(token) = store.claim_deferred(&request).await.expect("a claim")
    else {
        panic!("a fresh key is claimed");
    };
    assert!(store.release(&token).await.expect("released"));
    assert!(!store.release(&token).await.expect("gone"), "only once");
    let again = suite::request(&clock, "org", "k", b"{}");
    assert!(matches!(
        store.claim_deferred(&again).await.expect("a claim"),
        ClaimOutcome::Claimed(_)
    ));
}

/// The layer's own completion of a local claim (an answer the handler did not record, e.g. a
/// validation error) inserts the record, unless another request's live record is there.
#[tokio::test]
async fn completing_a_deferred_claim_inserts_the_record() {
    use axum::http::StatusCode;
    use faultline_axum::idempotency::{ClaimOutcome, IdempotencyStore, StoredResponse};
    let file = TempFile::new("deferred-complete");
    let (a, b) = (file.store(), file.store());
    let clock = suite::clock();
    let response = StoredResponse::new(StatusCode::UNPROCESSABLE_ENTITY, vec![], "{}");
    let request = suite::request(&clock, "org", "k", b"{}");
    let ClaimOutcome::Claimed(token) = a.claim_deferred(&request).await.expect("a claim") else {
        panic!("a fresh key is claimed");
    };
    // Meanwhile another process holds a written claim of the key.
    let durable = suite::request(&clock, "org", "k", b"{}");
    assert!(matches!(
        b.claim(&durable).await.expect("a claim"),
        ClaimOutcome::Claimed(_)
    ));
    // A written claim is seen by a deferred claim made after it, in any process.
    let third = suite::request(&clock, "org", "k", b"{}");
    assert!(matches!(
        a.claim_deferred(&third).await.expect("an answer"),
        ClaimOutcome::InProgress { .. }
    ));
    let retention = std::time::Duration::from_secs(60);
    assert!(
        !a.complete(&token, &response, request.now, retention)
            .await
            .expect("an answer"),
        "a live record of another request is never replaced"
    );
    let fresh = suite::request(&clock, "org", "k2", b"{}");
    let ClaimOutcome::Claimed(token) = a.claim_deferred(&fresh).await.expect("a claim") else {
        panic!("a fresh key is claimed");
    };
    assert!(
        a.complete(&token, &response, fresh.now, retention)
            .await
            .expect("stored")
    );
    let later = suite::request(&clock, "org", "k2", b"{}");
    assert_eq!(
        b.claim(&later).await.expect("an answer"),
        ClaimOutcome::Replay(response)
    );
}
