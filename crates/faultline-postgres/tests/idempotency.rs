//! `PgIdempotencyStore` against a real PostgreSQL (`FAULTLINE_TEST_POSTGRES_URL`): the shared
//! idempotency store suite, the in-transaction completion, and outages through a proxy.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use faultline::clock::Clock;
use faultline_axum::idempotency::suite;
use faultline_axum::idempotency::{ClaimOutcome, IdempotencyStore};
use faultline_postgres::testing::TestDatabase;
use faultline_postgres::{PgIdempotencyStore, PgOptions, PgPool, migrate};
use faultline_testkit::TcpProxy;

fn store_on(db: &TestDatabase) -> PgIdempotencyStore {
    PgIdempotencyStore::new(PgPool::new(&db.options()).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_idempotency_store_suite_passes_on_postgresql() {
    if faultline_postgres::testing::server_url().is_none() {
        return;
    }
    // A fresh database for every part of the suite; all dropped at the end.
    let mut databases = Vec::new();
    suite::all(|| {
        let db = TestDatabase::migrated().unwrap();
        let store = Arc::new(store_on(&db));
        databases.push(db);
        store
    })
    .await;
    assert_eq!(databases.len(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_suite_passes_with_every_replay_read_from_the_database() {
    if faultline_postgres::testing::server_url().is_none() {
        return;
    }
    let mut databases = Vec::new();
    suite::all(|| {
        let db = TestDatabase::migrated().unwrap();
        let store = Arc::new(store_on(&db).with_replay_cache(0));
        databases.push(db);
        store
    })
    .await;
}

#[tokio::test]
async fn a_replay_seen_once_is_answered_from_memory_until_its_record_ends() {
    let Some(db) = TestDatabase::migrated() else {
        return;
    };
    let proxy = TcpProxy::start(db.server_addr()).await.unwrap();
    let pool = PgPool::connect(&quick(db.options_via(proxy.addr())))
        .await
        .unwrap();
    let cached = PgIdempotencyStore::new(pool.clone());
    let uncached = PgIdempotencyStore::new(pool).with_replay_cache(0);
    let clock = suite::clock();
    let answer = suite::awkward_response();
    let request = suite::request(&clock, "org_1", "seen", b"{}");
    let token = suite::claimed(&cached, &request).await;
    assert!(
        cached
            .complete(&token, &answer, clock.now_millis(), suite::RETENTION)
            .await
            .unwrap()
    );
    for store in [&cached, &uncached] {
        assert_eq!(
            suite::outcome(store, &request).await,
            ClaimOutcome::Replay(answer.clone())
        );
    }

    // With the database cut off, only the store that has seen the record still answers.
    proxy.cut();
    assert_eq!(
        suite::outcome(&cached, &request).await,
        ClaimOutcome::Replay(answer.clone())
    );
    let other = suite::request(&clock, "org_1", "seen", b"another body");
    assert_eq!(
        suite::outcome(&cached, &other).await,
        ClaimOutcome::Mismatch(faultline::idempotency::Difference::Body)
    );
    assert!(uncached.claim(&request).await.unwrap_err().is_unavailable());

    // Once the record has ended, memory no longer answers for it.
    clock.advance(suite::RETENTION + Duration::from_secs(1));
    let later = suite::request(&clock, "org_1", "seen", b"{}");
    assert!(cached.claim(&later).await.unwrap_err().is_unavailable());
    proxy.restore().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pools_on_one_database_elect_one_claim() {
    // Two pools stand for two processes: their claims of one key meet only in PostgreSQL.
    let Some(db) = TestDatabase::migrated() else {
        return;
    };
    let (a, b) = (Arc::new(store_on(&db)), Arc::new(store_on(&db)));
    let clock = suite::clock();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let store = if i % 2 == 0 {
            Arc::clone(&a)
        } else {
            Arc::clone(&b)
        };
        let request = suite::request(&clock, "org_1", "shared-key", b"{}");
        tasks.push(tokio::spawn(
            async move { store.claim(&request).await.unwrap() },
        ));
    }
    let mut won = 0;
    for task in tasks {
        match task.await.unwrap() {
            ClaimOutcome::Claimed(_) => won += 1,
            ClaimOutcome::InProgress { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(won, 1);
}

#[tokio::test]
async fn completion_inside_the_callers_transaction_commits_with_it_or_not_at_all() {
    let Some(db) = TestDatabase::migrated() else {
        return;
    };
    let store = store_on(&db);
    let clock = suite::clock();
    let answer = suite::response(201, r#"{"id":"cb_1"}"#);
    let mut conn = store.pool().get().await.unwrap();
    conn.batch_execute("CREATE TABLE things (id TEXT PRIMARY KEY)")
        .await
        .unwrap();

    // Rolled back: neither the row nor the completion.
    let request = suite::request(&clock, "org_1", "tx-key", b"{}");
    let token = suite::claimed(&store, &request).await;
    {
        let mut tx = conn.transaction().await.unwrap();
        tx.execute("INSERT INTO things (id) VALUES ('cb_1')", &[])
            .await
            .unwrap();
        let done = store
            .complete_in(
                &mut tx,
                &token,
                &answer,
                clock.now_millis(),
                suite::RETENTION,
            )
            .await
            .unwrap();
        assert!(done);
        // Dropped without a commit.
    }
    let rows = conn.query("SELECT id FROM things", &[]).await.unwrap();
    assert!(rows.is_empty(), "the handler's row was rolled back");
    assert!(
        matches!(
            suite::outcome(&store, &request).await,
            ClaimOutcome::InProgress { .. }
        ),
        "the record is still the claim, not a completed response"
    );
    assert!(store.release(&token).await.unwrap());

    // Committed: both.
    let request = suite::request(&clock, "org_1", "tx-key", b"{}");
    let token = suite::claimed(&store, &request).await;
    let mut tx = conn.transaction().await.unwrap();
    tx.execute("INSERT INTO things (id) VALUES ('cb_1')", &[])
        .await
        .unwrap();
    assert!(
        store
            .complete_in(
                &mut tx,
                &token,
                &answer,
                clock.now_millis(),
                suite::RETENTION
            )
            .await
            .unwrap()
    );
    tx.commit().await.unwrap();
    assert_eq!(
        conn.query("SELECT id FROM things", &[])
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        suite::outcome(&store, &request).await,
        ClaimOutcome::Replay(answer)
    );
}

#[tokio::test]
async fn pruning_works_in_batches() {
    let Some(db) = TestDatabase::migrated() else {
        return;
    };
    let store = store_on(&db);
    let clock = suite::clock();
    for i in 0..25 {
        let request = suite::request(&clock, "org_1", &format!("k{i}"), b"{}");
        suite::claimed(&store, &request).await;
    }
    let later = clock.now_millis() + 61_000;
    assert_eq!(store.prune(later, 10).await.unwrap(), 10);
    assert_eq!(store.prune(later, 10).await.unwrap(), 10);
    assert_eq!(store.prune(later, 10).await.unwrap(), 5);
    assert_eq!(store.prune(later, 10).await.unwrap(), 0);
}

#[tokio::test]
async fn timestamps_are_stored_in_utc() {
    let Some(db) = TestDatabase::migrated() else {
        return;
    };
    let store = store_on(&db);
    let clock = suite::clock();
    suite::claimed(&store, &suite::request(&clock, "org_1", "k", b"{}")).await;
    let row = store
        .pool()
        .get()
        .await
        .unwrap()
        .query_opt(
            "SELECT to_char(expires_at, 'YYYY-MM-DD\"T\"HH24:MI:SS.MSOF') FROM idempotency_records",
            &[],
        )
        .await
        .unwrap()
        .unwrap();
    // The suite's clock starts at 1_900_000_000 s; the lease is 60 s.
    assert_eq!(row.get::<_, String>(0), "2030-03-17T17:47:40.000+00");
}

/// Deadlines for the outage tests.
fn quick(mut options: PgOptions) -> PgOptions {
    options.connect_timeout = Duration::from_millis(700);
    options.statement_timeout = Duration::from_millis(700);
    options
}

#[tokio::test]
async fn an_outage_is_unavailable_within_the_deadline_and_service_returns_by_itself() {
    let Some(db) = TestDatabase::migrated() else {
        return;
    };
    let proxy = TcpProxy::start(db.server_addr()).await.unwrap();
    let pool = PgPool::connect(&quick(db.options_via(proxy.addr())))
        .await
        .unwrap();
    migrate(&pool).await.unwrap();
    let store = PgIdempotencyStore::new(pool);
    let clock = suite::clock();
    suite::claimed(&store, &suite::request(&clock, "org_1", "before", b"{}")).await;

    // A claim that missed its deadline may still reach the server when the path comes back
    // (the proxy delivers what it held): its key then stays claimed until the lease ends, as
    // after a crash. So recovery is checked with keys no timed-out claim used.
    for (outage, key, after) in [
        ("cut", "during-cut", "after-cut"),
        ("stall", "during-stall", "after-stall"),
    ] {
        if outage == "cut" {
            proxy.cut();
        } else {
            proxy.stall().unwrap();
        }
        for _ in 0..2 {
            let started = Instant::now();
            let err = store
                .claim(&suite::request(&clock, "org_1", key, b"{}"))
                .await
                .unwrap_err();
            assert!(err.is_unavailable(), "{outage}: {err}");
            assert!(err.retry_after().is_some());
            let took = started.elapsed();
            assert!(took < Duration::from_millis(2900), "{outage}: {took:?}");
        }
        proxy.restore().unwrap();
        let mut recovered = false;
        for _ in 0..10 {
            if let Ok(ClaimOutcome::Claimed(_)) = store
                .claim(&suite::request(&clock, "org_1", after, b"{}"))
                .await
            {
                recovered = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            recovered,
            "{outage}: the store works again after the restore"
        );
    }
}
