//! `PgQuotaStore` against a real PostgreSQL (`FAULTLINE_TEST_POSTGRES_URL`): the shared limit
//! store suite, exact quotas across pools racing, one decision across both stores, periods,
//! durability, pruning and outages through a TCP proxy. Skipped (and passing) without the
//! variable.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use faultline::limits::{MICROS_PER_DAY, MICROS_PER_SECOND as S, Period, Rule};
use faultline_axum::limit::{Check, Decision, LimitStore, MemoryLimitStore, StoreError, suite};
use faultline_postgres::testing::TestDatabase;
use faultline_postgres::{PgOptions, PgPool, PgQuotaStore};
use faultline_testkit::TcpProxy;

/// A margin for the scheduler of a shared 2-core machine on top of a deadline.
const MARGIN: Duration = Duration::from_millis(1500);

fn quota(limit: u64, period: Period, cost: u64) -> Rule {
    Rule::Quota {
        limit,
        period,
        cost,
    }
}

fn store_on(options: &PgOptions) -> (PgQuotaStore, Arc<MemoryLimitStore>) {
    let inner = Arc::new(MemoryLimitStore::new());
    let pool = PgPool::new(options).unwrap();
    (PgQuotaStore::new(pool, inner.clone()), inner)
}

async fn decide(store: &PgQuotaStore, group: &str, checks: &[Check], at: i64) -> Decision {
    store.decide(group, checks, Some(at)).await.unwrap()
}

#[tokio::test]
async fn passes_the_shared_limit_store_suite() {
    let Some(db) = TestDatabase::migrated() else {
        return;
    };
    let (store, _) = store_on(&db.options());
    suite::all(&store).await;
}

/// # Exact across processes
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pools_racing_admit_exactly_the_quota() {
    let Some(db) = TestDatabase::migrated() else {
        return;
    };
    // Two pools and two inner stores stand for two processes.
    let stores = [store_on(&db.options()).0, store_on(&db.options()).0];
    let checks = Arc::new([
        Check::new("month", quota(50, Period::Month, 1)),
        Check::new("minute", suite::rate(1000, 60)),
    ]);
    let admitted = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..200 {
        let (store, checks, admitted) = (stores[i % 2].clone(), checks.clone(), admitted.clone());
        tasks.push(tokio::spawn(async move {
            let d = store.decide("org_race", &checks[..], None).await.unwrap();
            if d.admitted {
                admitted.fetch_add(1, Ordering::Relaxed);
            } else {
                assert_eq!(d.refusing().collect::<Vec<_>>(), [0], "only the quota");
                assert_eq!(d.outcomes[0].used, Some(50));
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(admitted.load(Ordering::Relaxed), 50);
    let (_, used) = stores[0]
        .usage("org_race", "month", None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(used, 50);
}

/// # One decision across both stores (a rate refusal spends no quota)
#[tokio::test]
async fn a_rate_refusal_leaves_the_quota_unspent() {
    let Some(db) = TestDatabase::migrated() else {
        return;
    };
    let (store, _) = store_on(&db.options());
    let now = suite::NOW_US;
    let checks = [
        Check::new("day", quota(100, Period::Day, 3)),
        Check::new("minute", suite::rate(1, 60)),
    ];
    assert!(decide(&store, "org_r", &checks, now).await.admitted);
    for _ in 0..5 {
        let d = decide(&store, "org_r", &checks, now).await;
        assert_eq!(d.refusing().collect::<Vec<_>>(), [1]);
        assert_eq!(d.outcomes[0].used, Some(3), "reported unspent");
        assert_eq!(d.outcomes[0].remaining, 97);
    }
    let (_, used) = store
        .usage("org_r", "day", Some(now))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(used, 3, "nothing committed for the refusals");
}

/// # One decision across both stores (a quota refusal spends no rate and takes no lease)
#[tokio::test]
async fn a_quota_refusal_leaves_the_rate_and_the_slots_unspent() {
    let Some(db) = TestDatabase::migrated() else {
        return;
    };
    let (store, inner) = store_on(&db.options());
    let now = suite::NOW_US;
    let in_flight = Rule::Concurrency {
        limit: 1,
        lease_ttl_us: 60 * S,
    };
    let checks = [
        Check::new("minute", suite::rate(10, 60)),
        Check::new("day", quota(1, Period::Day, 1)),
        Check::new("in_flight", in_flight),
    ];
    let first = decide(&store, "org_q", &checks, now).await;
    assert!(first.admitted);
    store.release(first.lease.unwrap()).await.unwrap();
    for _ in 0..5 {
        let d = decide(&store, "org_q", &checks, now).await;
        assert_eq!(d.refusing().collect::<Vec<_>>(), [1], "only the quota");
        assert_eq!(d.lease, None);
        assert_eq!(d.outcomes[0].remaining, 9, "the rate reported unspent");
        assert_eq!(d.outcomes[2].remaining, 1, "the slot is free");
    }
    // The inner store itself: one rate token spent in total, the slot free.
    let seen = inner.decide_now(
        "org_q",
        &[
            Check::new("minute", suite::rate(10, 60)),
            Check::new("in_flight", in_flight),
        ],
        Some(now),
    );
    assert!(seen.admitted);
    assert_eq!(seen.outcomes[0].remaining, 8);
    assert_eq!(seen.outcomes[1].remaining, 0);
}

/// # Time (calendar periods computed in SQL agree with the model)
#[tokio::test]
async fn periods_roll_over_on_utc_boundaries_with_a_manual_now() {
    let Some(db) = TestDatabase::migrated() else {
        return;
    };
    let (store, _) = store_on(&db.options());
    // 2028-02-29T23:59:59.999999Z: a leap day, the last microsecond of the month.
    let leap_end = 1_835_481_600 * S;
    let instants = [
        leap_end - 1,
        leap_end,
        1_893_455_999 * S, // 2029-12-31T23:59:59Z
        1_893_456_000 * S, // 2030-01-01T00:00:00Z
        suite::NOW_US,
    ];
    for (i, now) in instants.into_iter().enumerate() {
        for period in [Period::Day, Period::Month, Period::RollingDays(30)] {
            let group = format!("org_p{i}");
            let key = period.name();
            let checks = [Check::new(key, quota(2, period, 2))];
            let d = decide(&store, &group, &checks, now).await;
            assert!(d.admitted);
            assert_eq!(
                d.outcomes[0].resets_at_us,
                Some(period.end_after(now)),
                "{period:?} at {now}"
            );
            // Full until the period ends, empty again from its end.
            let end = period.end_after(now);
            assert!(!decide(&store, &group, &checks, end - 1).await.admitted);
            let next = decide(&store, &group, &checks, end).await;
            assert!(next.admitted, "{period:?} from {end}");
            assert_eq!(next.outcomes[0].resets_at_us, Some(period.end_after(end)));
        }
    }
}

/// # Durable: a new store instance (a restarted process) sees the spent quota
#[tokio::test]
async fn the_quota_survives_a_new_store_instance() {
    let Some(db) = TestDatabase::migrated() else {
        return;
    };
    let checks = [Check::new("month", quota(3, Period::Month, 1))];
    {
        let (store, _) = store_on(&db.options());
        for _ in 0..2 {
            assert!(store.decide("org_d", &checks, None).await.unwrap().admitted);
        }
    }
    let (store, _) = store_on(&db.options());
    let d = store.decide("org_d", &checks, None).await.unwrap();
    assert!(d.admitted);
    assert_eq!(d.outcomes[0].used, Some(3));
    let d = store.decide("org_d", &checks, None).await.unwrap();
    assert!(!d.admitted);
    assert!(d.retry_after_us > 0);
}

/// # Old periods are pruned
#[tokio::test]
async fn prune_deletes_periods_that_ended_long_ago() {
    let Some(db) = TestDatabase::migrated() else {
        return;
    };
    let (store, _) = store_on(&db.options());
    let store = store.with_history(Duration::from_secs(10 * 86_400));
    let checks = [Check::new("day", quota(5, Period::Day, 1))];
    let now = suite::NOW_US;
    for day in 0..20 {
        assert!(
            decide(&store, "org_old", &checks, now + day * MICROS_PER_DAY)
                .await
                .admitted
        );
    }
    let last = now + 19 * MICROS_PER_DAY;
    // Periods ending 2030-03-18 .. 2030-04-06; kept: those ending after last - 10 days.
    let deleted = store.prune(Some(last)).await.unwrap();
    assert_eq!(deleted, 9);
    assert_eq!(store.prune(Some(last)).await.unwrap(), 0);
    let d = decide(&store, "org_old", &checks, last).await;
    assert_eq!(d.outcomes[0].used, Some(2), "the running period kept");
}

/// # Deadlines and outages
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_unavailable_within_the_deadline_and_recovers() {
    let Some(db) = TestDatabase::migrated() else {
        return;
    };
    let proxy = TcpProxy::start(db.server_addr()).await.unwrap();
    let mut options = db.options_via(proxy.addr());
    options.connect_timeout = Duration::from_millis(500);
    options.statement_timeout = Duration::from_millis(500);
    let (store, _) = store_on(&options);
    let checks = [Check::new("month", quota(100, Period::Month, 1))];
    assert!(store.decide("org_o", &checks, None).await.unwrap().admitted);

    for fault in ["cut", "stall"] {
        match fault {
            "cut" => proxy.cut(),
            _ => proxy.stall().unwrap(),
        }
        let started = Instant::now();
        let err = store.decide("org_o", &checks, None).await.unwrap_err();
        let took = started.elapsed();
        eprintln!("{fault}: unavailable after {took:?}");
        assert!(err.is_unavailable(), "{fault}: {err}");
        assert!(
            took < Duration::from_millis(500) + MARGIN,
            "{fault}: {took:?}"
        );
        proxy.restore().unwrap();
        // Back by itself: the broken connection is not reused.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match store.decide("org_o", &checks, None).await {
                Ok(d) => {
                    assert!(d.admitted);
                    break;
                }
                Err(e) => {
                    assert!(e.is_unavailable(), "{e}");
                    assert!(Instant::now() < deadline, "never recovered: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

#[tokio::test]
async fn an_unknown_error_is_not_an_outage() {
    // A database without the migration: the function is missing, which is a defect.
    let Some(db) = TestDatabase::create() else {
        return;
    };
    let (store, _) = store_on(&db.options());
    let checks = [Check::new("month", quota(1, Period::Month, 1))];
    let err: StoreError = store.decide("org_x", &checks, None).await.unwrap_err();
    assert!(!err.is_unavailable(), "{err}");
}

/// # An outage fails fast
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_outage_decisions_fail_at_once_for_the_window_then_try_again() {
    let Some(db) = TestDatabase::migrated() else {
        return;
    };
    let proxy = TcpProxy::start(db.server_addr()).await.unwrap();
    let mut options = db.options_via(proxy.addr());
    options.connect_timeout = Duration::from_millis(400);
    options.statement_timeout = Duration::from_millis(400);
    let (store, _) = store_on(&options);
    let store = store.with_fail_fast(Duration::from_millis(300));
    let checks = [Check::new("month", quota(100, Period::Month, 1))];
    let rates_only = [Check::new("minute", suite::rate(100, 60))];
    assert!(store.decide("org_f", &checks, None).await.unwrap().admitted);

    proxy.stall().unwrap();
    let first = store.decide("org_f", &checks, None).await.unwrap_err();
    assert!(first.is_unavailable(), "{first}");
    assert!(!format!("{first:#}").contains("moments ago"), "{first:#}");
    // Within the window: unavailable without asking PostgreSQL.
    let second = store.decide("org_f", &checks, None).await.unwrap_err();
    assert!(second.is_unavailable());
    let chain = faultline_postgres::describe(&second);
    assert!(chain.contains("moments ago"), "{chain}");
    // A decision without a quota never needs PostgreSQL.
    assert!(
        store
            .decide("org_f", &rates_only, None)
            .await
            .unwrap()
            .admitted
    );

    proxy.restore().unwrap();
    tokio::time::sleep(Duration::from_millis(350)).await;
    let d = store.decide("org_f", &checks, None).await.unwrap();
    assert!(d.admitted, "tried again after the window");
    assert_eq!(d.outcomes[0].used, Some(2));
}

fn month_and_rate() -> [Check; 2] {
    [
        Check::new("month", quota(100, Period::Month, 1)),
        Check::new(
            "per_minute",
            Rule::Rate {
                limit: 10,
                window_us: 60 * S,
            },
        ),
    ]
}

/// # One decision across both stores (the inner store fails after the spend)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inner_store_failure_gives_the_quota_back() {
    let Some(db) = TestDatabase::migrated() else {
        return;
    };
    let store = PgQuotaStore::new(
        PgPool::new(&db.options()).unwrap(),
        Arc::new(suite::FailingStore::down()),
    );
    let err = store
        .decide("org_f", &month_and_rate(), Some(suite::NOW_US))
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    let usage = store
        .usage("org_f", "month", Some(suite::NOW_US))
        .await
        .unwrap();
    assert_eq!(usage.map_or(0, |(_, used)| used), 0, "the unit went back");
}

/// # A request given up gives its units back
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_giving_up_after_the_spend_gets_the_units_back() {
    let Some(db) = TestDatabase::migrated() else {
        return;
    };
    let store = PgQuotaStore::new(
        PgPool::new(&db.options()).unwrap(),
        Arc::new(suite::FailingStore::hanging()),
    );
    // The limit layer's deadline, shorter than the inner store's silence.
    let gave_up = tokio::time::timeout(
        Duration::from_millis(300),
        store.decide("org_g", &month_and_rate(), Some(suite::NOW_US)),
    )
    .await;
    assert!(gave_up.is_err(), "the inner store never answered");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let usage = store
            .usage("org_g", "month", Some(suite::NOW_US))
            .await
            .unwrap();
        match usage.map_or(0, |(_, used)| used) {
            0 => break,
            used => {
                assert_eq!(used, 1, "spent once");
                assert!(Instant::now() < deadline, "the unit never went back");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}
