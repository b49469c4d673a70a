//! Redis cut or stalled mid-run, through a local proxy: every call fails as "unavailable"
//! within the deadline, and the pool recovers by itself once the path is back.

mod common;

use std::time::{Duration, Instant};

use faultline_redis::{PoolOptions, RedisPool};
use faultline_testkit::TcpProxy;

const DEADLINE: Duration = Duration::from_millis(300);
/// Scheduling slack on a shared 2-core machine: a call must end before deadline + slack.
const SLACK: Duration = Duration::from_millis(700);
const CONNECTIONS: usize = 3;

fn options() -> PoolOptions {
    PoolOptions::default()
        .with_connections(CONNECTIONS)
        .with_deadline(DEADLINE)
        .with_connect_timeout(DEADLINE)
}

async fn incr(pool: &RedisPool, key: &str) -> Result<i64, faultline_axum::StoreError> {
    pool.query(redis::cmd("INCR").arg(key)).await
}

/// Calls that must all fail as unavailable, each within the deadline.
async fn all_unavailable(pool: &RedisPool, key: &str, calls: usize) {
    for _ in 0..calls {
        let started = Instant::now();
        let error = incr(pool, key)
            .await
            .expect_err("no answer during the outage");
        let took = started.elapsed();
        assert!(error.is_unavailable(), "{error}");
        assert!(took < DEADLINE + SLACK, "took {took:?}");
    }
}

#[tokio::test]
async fn a_cut_fails_fast_and_the_pool_recovers_after_restore() {
    let Some(direct) = common::redis_or_skip("a_cut_fails_fast").await else {
        return;
    };
    let prefix = common::unique_prefix("cut");
    let key = format!("{{{prefix}:g}}:n");
    let proxy = TcpProxy::start(common::redis_addr()).await.expect("proxy");
    let pool = RedisPool::new(&format!("redis://{}", proxy.addr()), options()).expect("pool");
    for expected in 1..=4 {
        assert_eq!(
            incr(&pool, &key).await.expect("through the proxy"),
            expected
        );
    }

    proxy.cut();
    all_unavailable(&pool, &key, 2 * CONNECTIONS).await;

    proxy.restore().expect("restore");
    // Every slot was emptied by a failed call: the next calls reconnect at once.
    for _ in 0..2 * CONNECTIONS {
        incr(&pool, &key).await.expect("recovered after restore");
    }
    let total: i64 = direct
        .query(redis::cmd("GET").arg(&key))
        .await
        .expect("GET");
    assert_eq!(total, 4 + 2 * CONNECTIONS as i64);
    common::clean(&direct, &prefix).await;
}

#[tokio::test]
async fn a_stall_times_out_within_the_deadline_and_the_pool_recovers() {
    let Some(direct) = common::redis_or_skip("a_stall_times_out").await else {
        return;
    };
    let prefix = common::unique_prefix("stall");
    let key = format!("{{{prefix}:g}}:n");
    let proxy = TcpProxy::start(common::redis_addr()).await.expect("proxy");
    let pool = RedisPool::new(&format!("redis://{}", proxy.addr()), options()).expect("pool");
    for _ in 0..CONNECTIONS {
        incr(&pool, &key).await.expect("through the proxy");
    }

    proxy.stall().expect("stall");
    all_unavailable(&pool, &key, 2 * CONNECTIONS).await;
    // Calls at once, too: none waits for another.
    let started = Instant::now();
    let pool = std::sync::Arc::new(pool);
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (pool, key) = (pool.clone(), key.clone());
        calls.spawn(async move { incr(&pool, &key).await });
    }
    while let Some(outcome) = calls.join_next().await {
        assert!(
            outcome
                .expect("joined")
                .expect_err("stalled")
                .is_unavailable()
        );
    }
    assert!(started.elapsed() < DEADLINE + SLACK);

    proxy.restore().expect("restore");
    for _ in 0..2 * CONNECTIONS {
        incr(&pool, &key).await.expect("recovered after restore");
    }
    common::clean(&direct, &prefix).await;
}

#[tokio::test]
async fn nothing_listening_is_unavailable_within_the_deadline() {
    // A port that was just free: nobody listens there.
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = free.local_addr().expect("addr");
    drop(free);
    let pool = RedisPool::new(&format!("redis://{addr}"), options()).expect("pool");
    all_unavailable(&pool, "any", 3).await;
}

/// Decisions through the proxy: the store's answer during an outage and after it.
mod store {
    use std::sync::Arc;
    use std::time::Instant;

    use faultline::limits::{MICROS_PER_SECOND as S, Rule};
    use faultline_axum::limit::{Check, Decision, LimitStore};
    use faultline_redis::{RedisLimitStore, RedisPool};
    use faultline_testkit::TcpProxy;

    use super::{CONNECTIONS, DEADLINE, SLACK, common, options};

    fn checks() -> [Check; 2] {
        [
            Check::new(
                "day",
                Rule::Rate {
                    limit: 6,
                    window_us: 86_400 * S,
                },
            ),
            Check::new(
                "flight",
                Rule::Concurrency {
                    limit: 100,
                    lease_ttl_us: 60 * S,
                },
            ),
        ]
    }

    async fn decide(store: &RedisLimitStore) -> Result<Decision, faultline_axum::StoreError> {
        store.decide("org", &checks(), None).await
    }

    async fn refused_within_the_deadline(store: &RedisLimitStore) {
        for _ in 0..2 * CONNECTIONS {
            let started = Instant::now();
            let error = decide(store)
                .await
                .expect_err("no decision during the outage");
            assert!(error.is_unavailable(), "{error}");
            assert!(
                started.elapsed() < DEADLINE + SLACK,
                "{:?}",
                started.elapsed()
            );
            // A lease cannot be given back either, and says so in time.
            let lease = faultline_axum::limit::Lease::new("org", "x", vec!["flight".into()]);
            let started = Instant::now();
            assert!(
                store
                    .release(lease)
                    .await
                    .expect_err("down")
                    .is_unavailable()
            );
            assert!(started.elapsed() < DEADLINE + SLACK);
        }
    }

    async fn outage_then_recovery(cut: bool) {
        let Some(direct) = common::redis_or_skip("store outage").await else {
            return;
        };
        let prefix = common::unique_prefix(if cut { "storecut" } else { "storestall" });
        let proxy = TcpProxy::start(common::redis_addr()).await.expect("proxy");
        let pool = RedisPool::new(&format!("redis://{}", proxy.addr()), options()).expect("pool");
        let store = RedisLimitStore::new(Arc::new(pool)).with_prefix(&prefix);
        for _ in 0..3 {
            assert!(decide(&store).await.expect("decided").admitted);
        }

        if cut {
            proxy.cut();
        } else {
            proxy.stall().expect("stall");
        }
        refused_within_the_deadline(&store).await;

        proxy.restore().expect("restore");
        // Nothing restarted: the same store decides again, on the state Redis kept (6 a day,
        // 3 spent before the outage).
        let mut admitted = 0;
        let mut last = None;
        for _ in 0..5 {
            let decision = decide(&store).await.expect("decided after restore");
            if decision.admitted {
                admitted += 1;
            }
            last = Some(decision);
        }
        if cut {
            // A cut loses what was on the wire: exactly the 3 left are admitted.
            assert_eq!(admitted, 3);
        } else {
            // A stalled command reaches Redis when the path comes back, although its caller
            // was told "unavailable" long before: it spends, in the safe direction.
            assert!((1..=3).contains(&admitted), "{admitted}");
        }
        assert!(!last.expect("decided").admitted, "the day's 6 are spent");
        common::clean(&direct, &prefix).await;
    }

    #[tokio::test]
    async fn redis_cut_mid_run_is_unavailable_within_the_deadline_then_recovers() {
        outage_then_recovery(true).await;
    }

    #[tokio::test]
    async fn redis_stalled_mid_run_is_unavailable_within_the_deadline_then_recovers() {
        outage_then_recovery(false).await;
    }
}

#[tokio::test]
async fn many_first_callers_open_one_connection_per_slot() {
    let Some(direct) = common::redis_or_skip("many_first_callers").await else {
        return;
    };
    let prefix = common::unique_prefix("slots");
    let key = format!("{{{prefix}:g}}:n");
    let proxy = TcpProxy::start(common::redis_addr()).await.expect("proxy");
    let pool = std::sync::Arc::new(
        RedisPool::new(&format!("redis://{}", proxy.addr()), options()).expect("pool"),
    );
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let (pool, key) = (pool.clone(), key.clone());
        calls.spawn(async move { incr(&pool, &key).await });
    }
    while let Some(outcome) = calls.join_next().await {
        outcome.expect("joined").expect("counted");
    }
    assert_eq!(proxy.accepted(), CONNECTIONS as u64);
    common::clean(&direct, &prefix).await;
}

#[tokio::test]
async fn a_release_lost_to_a_cut_is_carried_by_the_next_decision_of_its_group() {
    use std::sync::Arc;

    use faultline_axum::limit::{Check, LeaseGuard, LimitStore, suite};
    use faultline_redis::RedisLimitStore;

    let Some(direct) = common::redis_or_skip("a_release_lost_to_a_cut").await else {
        return;
    };
    let prefix = common::unique_prefix("lost-release");
    let proxy = TcpProxy::start(common::redis_addr()).await.expect("proxy");
    let pool = RedisPool::new(&format!("redis://{}", proxy.addr()), options()).expect("pool");
    let store: Arc<dyn LimitStore> =
        Arc::new(RedisLimitStore::new(Arc::new(pool)).with_prefix(&prefix));
    // One at a time, and a lease lives a minute: only a release frees the slot within the test.
    let checks = [Check::new("in_flight", suite::concurrency(1, 60))];
    let held = store.decide("g", &checks, None).await.expect("decided");
    assert!(held.admitted);
    assert!(
        !store
            .decide("g", &checks, None)
            .await
            .expect("decided")
            .admitted,
        "the slot is taken"
    );

    proxy.cut();
    // The response ends during the outage: its release cannot reach Redis, and gives up.
    drop(LeaseGuard::new(
        Arc::clone(&store),
        held.lease.expect("a lease"),
        DEADLINE,
    ));
    tokio::time::sleep(DEADLINE + DEADLINE / 2).await;
    let members: i64 = direct
        .query(redis::cmd("ZCARD").arg(format!("{{{prefix}:g}}:in_flight")))
        .await
        .expect("ZCARD");
    assert_eq!(members, 1, "the release did not get through");

    proxy.restore().expect("restore");
    // The first decision that gets through after the outage (a pooled connection the cut
    // broke may fail one first) frees it in its own script.
    let mut next = None;
    for _ in 0..2 * CONNECTIONS + 1 {
        if let Ok(decision) = store.decide("g", &checks, None).await {
            next = Some(decision);
            break;
        }
    }
    let next = next.expect("decisions get through after the restore");
    assert!(
        next.admitted,
        "the lease given back during the outage still counted"
    );
    common::clean(&direct, &prefix).await;
}
