//! The shared limit-store suite (`faultline_axum::limit::suite`) against real Redis, and what
//! only the Redis store promises: a TTL on every key it writes.

mod common;

use std::sync::Arc;

use faultline::limits::{MICROS_PER_SECOND as S, Period, Rule};
use faultline_axum::limit::{Check, LimitStore, suite};
use faultline_redis::{PoolOptions, RedisLimitStore, RedisPool};

fn store(prefix: &str) -> RedisLimitStore {
    let pool = RedisPool::new(&common::redis_url(), PoolOptions::default()).expect("pool");
    RedisLimitStore::new(Arc::new(pool)).with_prefix(prefix)
}

#[tokio::test]
async fn the_whole_limit_suite_passes_on_redis() {
    let Some(direct) = common::redis_or_skip("the_whole_limit_suite_passes_on_redis").await else {
        return;
    };
    let prefix = common::unique_prefix("suite");
    let store = store(&prefix);
    suite::all(&store).await;
    // The suite wrote under the store's prefix only, and every key it left expires.
    let keys = common::keys_of(&direct, &prefix).await;
    assert!(!keys.is_empty(), "the suite wrote buckets");
    for key in &keys {
        assert!(key.starts_with(&format!("{{{prefix}:")), "{key}");
        let ttl: i64 = direct
            .query(redis::cmd("PTTL").arg(key))
            .await
            .expect("PTTL");
        assert!(ttl > 0, "{key} has no expiry ({ttl})");
    }
    common::clean(&direct, &prefix).await;
}

#[tokio::test]
async fn a_lease_given_back_never_counts_against_the_next_decision_on_redis() {
    // Each guard's release goes out on a task, over another connection than the decision that
    // follows it; the decision carries the release in its own script.
    let Some(direct) = common::redis_or_skip("a_lease_given_back").await else {
        return;
    };
    let prefix = common::unique_prefix("given-back");
    suite::a_lease_given_back_never_counts_against_the_next_decision(Arc::new(store(&prefix)))
        .await;
    common::clean(&direct, &prefix).await;
}

#[tokio::test]
async fn the_suite_passes_again_after_the_script_cache_is_lost() {
    // A second store on the same prefix, after `SCRIPT FLUSH`-like loss: EVALSHA answers
    // NOSCRIPT and the store falls back to EVAL. Flushing the shared server's cache would
    // touch other users, so the store is made to ask for a script the server cannot know.
    let Some(direct) = common::redis_or_skip("the_suite_passes_again").await else {
        return;
    };
    let prefix = common::unique_prefix("noscript");
    let store = store(&prefix).with_unknown_script_for_tests();
    suite::burst_admits_exactly_the_limit(&store).await;
    common::clean(&direct, &prefix).await;
}

#[tokio::test]
async fn idle_buckets_expire_when_the_model_says_they_are_idle() {
    let Some(direct) = common::redis_or_skip("idle_buckets_expire").await else {
        return;
    };
    let prefix = common::unique_prefix("ttl");
    let store = store(&prefix);
    let now = suite::NOW_US;
    let checks = [
        Check::new(
            "rate",
            Rule::Rate {
                limit: 10,
                window_us: 60 * S,
            },
        ),
        Check::new(
            "quota",
            Rule::Quota {
                limit: 5,
                period: Period::RollingDays(2),
                cost: 1,
            },
        ),
        Check::new(
            "flight",
            Rule::Concurrency {
                limit: 3,
                lease_ttl_us: 30 * S,
            },
        ),
    ];
    let decision = store.decide("g", &checks, Some(now)).await.expect("decide");
    assert!(decision.admitted);
    let pttl = |name: &str| {
        let key = store.bucket_key("g", name);
        let direct = &direct;
        async move {
            let ttl: i64 = direct
                .query(redis::cmd("PTTL").arg(key))
                .await
                .expect("PTTL");
            ttl
        }
    };
    // Rate: one request of 10 per minute is idle after one interval (6 s).
    let rate = pttl("rate").await;
    assert!((5_000..=6_000).contains(&rate), "{rate}");
    // Quota: the rolling period ends in two days.
    let quota = pttl("quota").await;
    assert!(
        (2 * 86_400_000 - 5_000..=2 * 86_400_000).contains(&quota),
        "{quota}"
    );
    // Leases: the last one lapses in 30 s.
    let flight = pttl("flight").await;
    assert!((25_000..=30_000).contains(&flight), "{flight}");
    // Released, the lease is gone from the sorted set.
    store
        .release(decision.lease.expect("a lease"))
        .await
        .expect("release");
    let left: i64 = direct
        .query(redis::cmd("ZCARD").arg(store.bucket_key("g", "flight")))
        .await
        .expect("ZCARD");
    assert_eq!(left, 0);
    common::clean(&direct, &prefix).await;
}

#[tokio::test]
async fn a_bucket_of_another_kind_counts_as_no_state() {
    // The model: a stored state of another kind is the same as none. A policy that changes
    // kind under the same key must neither fail nor read the other kind's numbers.
    let Some(direct) = common::redis_or_skip("a_bucket_of_another_kind").await else {
        return;
    };
    let prefix = common::unique_prefix("kinds");
    let store = store(&prefix);
    let now = suite::NOW_US;
    let rate = [Check::new(
        "k",
        Rule::Rate {
            limit: 2,
            window_us: 60 * S,
        },
    )];
    let flight = [Check::new(
        "k",
        Rule::Concurrency {
            limit: 1,
            lease_ttl_us: 60 * S,
        },
    )];
    let quota = [Check::new(
        "k",
        Rule::Quota {
            limit: 3,
            period: Period::Day,
            cost: 1,
        },
    )];
    // A rate bucket, then a concurrency check on the same key: a fresh set of leases.
    assert!(
        store
            .decide("g", &rate, Some(now))
            .await
            .expect("rate")
            .admitted
    );
    let d = store.decide("g", &flight, Some(now)).await.expect("flight");
    assert_eq!((d.admitted, d.outcomes[0].remaining), (true, 0));
    // Leases, then a rate check: a full rate bucket (one of 2 left after this one).
    let d = store.decide("g", &rate, Some(now)).await.expect("rate");
    assert_eq!((d.admitted, d.outcomes[0].remaining), (true, 1));
    // A rate bucket, then a quota: nothing used yet.
    let d = store.decide("g", &quota, Some(now)).await.expect("quota");
    assert_eq!((d.admitted, d.outcomes[0].used), (true, Some(1)));
    common::clean(&direct, &prefix).await;
}

/// The expiry of a rate key on Redis's clock: `(arrival time as written, expiry in ms)`.
async fn state_and_expiry(direct: &RedisPool, key: &str) -> (String, i64) {
    let value: String = direct.query(redis::cmd("GET").arg(key)).await.expect("GET");
    let expires: i64 = direct
        .query(redis::cmd("PEXPIRETIME").arg(key))
        .await
        .expect("PEXPIRETIME");
    (value, expires)
}

/// Checks that a marked rate state's key expires at the first whole second at or after it.
fn expires_in_its_second(value: &str, expires_ms: i64) {
    let tat_us: i64 = value
        .strip_suffix(".5")
        .and_then(|us| us.parse().ok())
        .unwrap_or_else(|| panic!("not a marked state: {value}"));
    assert_eq!(expires_ms % 1000, 0, "{expires_ms}");
    assert!(
        expires_ms * 1000 >= tat_us && expires_ms * 1000 < tat_us + 1_000_000,
        "expires at {expires_ms} ms, idle at {tat_us} us"
    );
}

#[tokio::test]
async fn a_rate_key_on_redis_clock_expires_in_the_second_its_state_becomes_idle() {
    // Writes within one second keep the key's expiry (KEEPTTL); one that moves the state into
    // a later second sets a new one; the key never expires before its state is idle.
    let Some(direct) = common::redis_or_skip("a_rate_key_expires_in_its_second").await else {
        return;
    };
    let prefix = common::unique_prefix("second");
    let store = store(&prefix);
    let key = store.bucket_key("g", "fast");
    // 1000 a second: each request moves the arrival time 1 ms.
    let fast = [Check::new(
        "fast",
        Rule::Rate {
            limit: 1000,
            window_us: S,
        },
    )];
    for _ in 0..50 {
        assert!(
            store
                .decide("g", &fast, None)
                .await
                .expect("decide")
                .admitted
        );
        let (value, expires) = state_and_expiry(&direct, &key).await;
        expires_in_its_second(&value, expires);
    }
    common::clean(&direct, &prefix).await;
}

#[tokio::test]
async fn an_unmarked_rate_state_always_gets_a_new_expiry() {
    // A state without the mark (written on a given clock, or by an older version, with an
    // exact expiry) says nothing about its key's expiry: the next write on Redis's clock sets
    // one, even when the new arrival time falls in the same second.
    let Some(direct) = common::redis_or_skip("an_unmarked_rate_state").await else {
        return;
    };
    let prefix = common::unique_prefix("unmarked");
    let store = store(&prefix);
    let key = store.bucket_key("g", "fast");
    let time: Vec<i64> = direct.query(&redis::cmd("TIME")).await.expect("TIME");
    // Idle 3.1 s from now, at 100 ms into its second, with an exact expiry then.
    let tat_us = (time[0] + 3) * S + 100_000;
    let _: () = direct
        .query(
            redis::cmd("SET")
                .arg(&key)
                .arg(tat_us)
                .arg("PXAT")
                .arg(tat_us / 1000),
        )
        .await
        .expect("SET");
    // 1000 in 5 s: the request is admitted and moves the state 5 ms later, in the same
    // second; keeping the old expiry would let the key go 5 ms too soon.
    let fast = [Check::new(
        "fast",
        Rule::Rate {
            limit: 1000,
            window_us: 5 * S,
        },
    )];
    let decision = store.decide("g", &fast, None).await.expect("decide");
    assert!(decision.admitted);
    let (value, expires) = state_and_expiry(&direct, &key).await;
    assert!(value.starts_with(&(tat_us + 5_000).to_string()), "{value}");
    expires_in_its_second(&value, expires);
    common::clean(&direct, &prefix).await;
}
