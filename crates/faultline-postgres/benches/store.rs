//! The PostgreSQL idempotency store beside plain statements on the same pool: a claim and a
//! completion with a fresh key against a plain insert, and a replay against a plain read by
//! primary key. Needs `FAULTLINE_TEST_POSTGRES_URL`; does nothing without it.
#![allow(missing_docs)] // criterion_group! generates an undocumented public function
#![allow(clippy::expect_used)] // a broken fixture should stop the benchmark

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use faultline::clock::Clock;
use faultline_axum::idempotency::suite;
use faultline_axum::idempotency::{ClaimOutcome, IdempotencyStore};
use faultline_postgres::testing::TestDatabase;
use faultline_postgres::{PgIdempotencyStore, PgPool};

fn store(c: &mut Criterion) {
    let Some(db) = TestDatabase::migrated() else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let pool = PgPool::new(&db.options()).expect("a pool");
    let store = PgIdempotencyStore::new(pool.clone());
    let clock = suite::clock();
    let answer = suite::response(
        201,
        r#"{"id":"cb_0123456789","name":"bench","status":"live"}"#,
    );
    runtime.block_on(async {
        let mut conn = pool.get().await.expect("a connection");
        conn.batch_execute(
            "CREATE TABLE things (id TEXT PRIMARY KEY, org_id TEXT NOT NULL, body TEXT NOT NULL);
             INSERT INTO things VALUES ('fixed', 'org_1', 'hello')",
        )
        .await
        .expect("the table");
        let request = suite::request(&clock, "org_1", "replayed", b"{}");
        let ClaimOutcome::Claimed(token) = store.claim(&request).await.expect("claim") else {
            panic!("a fresh key is claimed");
        };
        store
            .complete(&token, &answer, clock.now_millis(), suite::RETENTION)
            .await
            .expect("complete");
    });

    let counter = AtomicU64::new(0);
    let mut group = c.benchmark_group("pg");
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("claim_complete_fresh_key", |b| {
        b.iter(|| {
            let n = counter.fetch_add(1, Ordering::Relaxed);
            let request = suite::request(&clock, "org_1", &format!("fresh-{n}"), b"{}");
            runtime.block_on(async {
                let ClaimOutcome::Claimed(token) = store.claim(&request).await.expect("claim")
                else {
                    panic!("a fresh key is claimed");
                };
                store
                    .complete(&token, &answer, clock.now_millis(), suite::RETENTION)
                    .await
                    .expect("complete")
            })
        });
    });
    group.bench_function("plain_insert", |b| {
        b.iter(|| {
            let id = format!("row-{}", counter.fetch_add(1, Ordering::Relaxed));
            runtime.block_on(async {
                let mut conn = pool.get().await.expect("a connection");
                conn.execute(
                    "INSERT INTO things (id, org_id, body) VALUES ($1, 'org_1', 'hello')",
                    &[&id],
                )
                .await
                .expect("insert")
            })
        });
    });
    let replay = suite::request(&clock, "org_1", "replayed", b"{}");
    group.bench_function("replay", |b| {
        b.iter(|| {
            runtime.block_on(async {
                match store.claim(&replay).await.expect("claim") {
                    ClaimOutcome::Replay(stored) => stored,
                    other => panic!("expected a replay, got {other:?}"),
                }
            })
        });
    });
    group.bench_function("plain_select_by_id", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let mut conn = pool.get().await.expect("a connection");
                conn.query_opt(
                    "SELECT id, org_id, body FROM things WHERE id = 'fixed' AND org_id = 'org_1'",
                    &[],
                )
                .await
                .expect("select")
                .expect("the row")
            })
        });
    });
    group.finish();
    drop(runtime);
    drop(db);
}

criterion_group!(benches, store);
criterion_main!(benches);
