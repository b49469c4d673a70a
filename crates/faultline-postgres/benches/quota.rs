//! The cost of quota counters in PostgreSQL: one decision of the reference API's shape (two
//! rate checks and a monthly quota) on `PgQuotaStore` around the in-memory store, against the
//! in-memory store alone; and 16 decisions at once for one organisation (serialised on its
//! counter) against 16 organisations. Needs `FAULTLINE_TEST_POSTGRES_URL`; does nothing
//! without it.
#![allow(missing_docs)] // criterion_group! generates an undocumented public function
#![allow(clippy::expect_used)] // a broken fixture should stop the benchmark

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use faultline::limits::{MICROS_PER_SECOND as S, Period, Rule};
use faultline_axum::limit::{Check, LimitStore, MemoryLimitStore};
use faultline_postgres::testing::TestDatabase;
use faultline_postgres::{PgPool, PgQuotaStore};

fn checks() -> Vec<Check> {
    let rate = Rule::Rate {
        limit: u64::MAX / 4,
        window_us: 60 * S,
    };
    vec![
        Check::new("org_per_minute", rate),
        Check::new("key_per_minute", rate),
        Check::new(
            "monthly_requests",
            Rule::Quota {
                limit: u64::MAX / 4,
                period: Period::Month,
                cost: 1,
            },
        ),
    ]
}

fn quota(c: &mut Criterion) {
    let Some(db) = TestDatabase::migrated() else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let memory = Arc::new(MemoryLimitStore::new());
    let pool = runtime.block_on(async { PgPool::new(&db.options()).expect("a pool") });
    let store = Arc::new(PgQuotaStore::new(pool, memory.clone()));
    let checks = Arc::new(checks());
    let rates_only: Vec<Check> = checks[..2].to_vec();

    let mut group = c.benchmark_group("quota");
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("memory_rates_only", |b| {
        b.iter(|| {
            let d = memory.decide_now("org_1", &rates_only, None);
            assert!(d.admitted);
        });
    });
    group.bench_function("pg_quota_around_memory", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let d = store.decide("org_1", &checks, None).await.expect("decided");
                assert!(d.admitted);
            });
        });
    });
    // 16 decisions at once: per iteration, the time for all 16.
    for (name, orgs) in [("16_at_once_one_org", 1), ("16_at_once_16_orgs", 16)] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                runtime.block_on(async {
                    let started = Instant::now();
                    for _ in 0..iters {
                        let mut tasks = Vec::with_capacity(16);
                        for i in 0..16 {
                            let (store, checks) = (store.clone(), checks.clone());
                            let org = format!("org_{}", i % orgs);
                            tasks.push(tokio::spawn(async move {
                                store.decide(&org, &checks, None).await.expect("decided")
                            }));
                        }
                        for task in tasks {
                            assert!(task.await.expect("joined").admitted);
                        }
                    }
                    started.elapsed()
                })
            });
        });
    }
    group.finish();
}

criterion_group!(benches, quota);
criterion_main!(benches);
