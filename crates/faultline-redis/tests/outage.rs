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
