//! `INFO commandstats` shows exactly one command from the client, one `EVALSHA`, per decision:
//! every check of the request is read, decided and spent by one script. (Redis counts the
//! commands the script runs inside it too; the test checks they are only the script's.)
//!
//! Concurrent decisions share a batch: one `EVALSHA`, one `TIME` and one `MGET` per batch.
//!
//! The counts are the server's, so these tests assume nothing else sends commands to the same
//! Redis while they run (true on CI, where this binary is the only Redis client at that
//! moment); they run one at a time.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::{Pending, SCRIPT_COMMANDS, command_calls, delta, in_order};

use faultline::limits::{MICROS_PER_SECOND as S, Period, Rule};
use faultline_axum::limit::{Check, LimitStore};
use faultline_redis::{PoolOptions, RedisLimitStore, RedisPool};

/// One test at a time: each counts the server's commands.
static ALONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn per_day(limit: u64) -> Rule {
    Rule::Rate {
        limit,
        window_us: 86_400 * S,
    }
}

#[tokio::test]
async fn every_decision_is_exactly_one_evalsha() {
    let _alone = ALONE.lock().await;
    let Some(direct) = common::redis_or_skip("every_decision_is_exactly_one_evalsha").await else {
        return;
    };
    let prefix = common::unique_prefix("roundtrip");
    let pool = RedisPool::new(&common::redis_url(), PoolOptions::default()).expect("pool");
    let store = RedisLimitStore::new(Arc::new(pool)).with_prefix(&prefix);
    let checks = [
        Check::new(
            "minute",
            Rule::Rate {
                limit: 3,
                window_us: 60 * S,
            },
        ),
        Check::new(
            "hour",
            Rule::Rate {
                limit: 100,
                window_us: 3600 * S,
            },
        ),
        Check::new(
            "month",
            Rule::Quota {
                limit: 1000,
                period: Period::Month,
                cost: 1,
            },
        ),
        Check::new(
            "flight",
            Rule::Concurrency {
                limit: 10,
                lease_ttl_us: 60 * S,
            },
        ),
    ];
    // Warm up: the first decision may have to load the script (NOSCRIPT, then EVAL).
    let warm = store.decide("org", &checks, None).await.expect("decide");
    assert!(warm.admitted);

    let mut admitted = 0;
    let mut refused = 0;
    for i in 0..8 {
        let before = command_calls(&direct).await;
        let decision = store.decide("org", &checks, None).await.expect("decide");
        let after = command_calls(&direct).await;
        let mut calls = delta(&before, &after);
        // The first INFO is counted in the second one's answer.
        assert_eq!(calls.remove("info"), Some(1), "decision {i}: {calls:?}");
        // One command from the client: EVALSHA, no EVAL, no SCRIPT LOAD.
        assert_eq!(calls.remove("evalsha"), Some(1), "decision {i}: {calls:?}");
        // Redis counts the commands the script runs inside too; those are all that is left.
        for name in calls.keys() {
            assert!(
                SCRIPT_COMMANDS.contains(&name.as_str()),
                "decision {i}: {name}"
            );
        }
        if decision.admitted {
            admitted += 1;
        } else {
            refused += 1;
        }
    }
    // Both kinds of decision were counted: two admitted (3 per minute, one spent warming up),
    // the rest refused.
    assert_eq!((admitted, refused), (2, 6));

    // Releasing a lease is a second, separate call at the end of the request: one ZREM.
    let lease = warm.lease.expect("a lease");
    let before = command_calls(&direct).await;
    store.release(lease).await.expect("release");
    let after = command_calls(&direct).await;
    let expected: HashMap<String, u64> = [("zrem".to_owned(), 1), ("info".to_owned(), 1)].into();
    assert_eq!(delta(&before, &after), expected);
    // On Redis's clock the keys get absolute expiries. A rate state is its arrival time (when
    // it becomes idle) marked with a half microsecond, and its key expires at the first whole
    // second at or after that time: never before, less than a second after.
    for name in ["minute", "hour"] {
        let key = store.bucket_key("org", name);
        let value: String = direct
            .query(redis::cmd("GET").arg(&key))
            .await
            .expect("GET");
        let tat_us: i64 = value
            .strip_suffix(".5")
            .and_then(|us| us.parse().ok())
            .unwrap_or_else(|| panic!("{name}: {value}"));
        let expires_ms: i64 = direct
            .query(redis::cmd("PEXPIRETIME").arg(&key))
            .await
            .expect("PEXPIRETIME");
        assert_eq!(expires_ms % 1000, 0, "{name}: {expires_ms}");
        assert!(
            expires_ms * 1000 >= tat_us && expires_ms * 1000 < tat_us + 1_000_000,
            "{name}: expires at {expires_ms} ms, idle at {tat_us} us"
        );
    }
    // Each key still expires, and no later than its state becomes idle (minute: one interval
    // of 20 s per request, and the second it ends in; month: its end).
    for (name, most_ms) in [
        ("minute", 61_000),
        ("hour", 3_601_000),
        ("month", 31 * 86_400_000),
        ("flight", 60_000),
    ] {
        let ttl: i64 = direct
            .query(redis::cmd("PTTL").arg(store.bucket_key("org", name)))
            .await
            .expect("PTTL");
        assert!(ttl > 0 && ttl <= most_ms, "{name}: {ttl}");
    }
    common::clean(&direct, &prefix).await;
}

#[tokio::test]
async fn sixty_four_concurrent_decisions_take_one_evalsha_and_one_time_per_batch() {
    let _alone = ALONE.lock().await;
    let Some(direct) = common::redis_or_skip("sixty_four_concurrent_decisions").await else {
        return;
    };
    let prefix = common::unique_prefix("batches");
    let pool = RedisPool::new(&common::redis_url(), PoolOptions::default()).expect("pool");
    let store = RedisLimitStore::new(Arc::new(pool)).with_prefix(&prefix);
    let checks = [
        Check::new("minute", per_day(1_000_000)),
        Check::new(
            "month",
            Rule::Quota {
                limit: 1_000_000,
                period: Period::Month,
                cost: 1,
            },
        ),
    ];
    // Warm up: connections opened, the script loaded (NOSCRIPT, then EVAL, at most once).
    assert!(
        store
            .decide("warm", &checks, None)
            .await
            .expect("decide")
            .admitted
    );

    let groups: Vec<String> = (0..64).map(|i| format!("org{i}")).collect();
    let sent = store.batches_sent();
    let before = command_calls(&direct).await;
    let decisions = in_order(
        groups
            .iter()
            .map(|group| -> Pending<'_> { store.decide(group, &checks, None) })
            .collect(),
    )
    .await;
    let after = command_calls(&direct).await;
    let batches = store.batches_sent() - sent;
    for decision in &decisions {
        assert!(decision.as_ref().expect("decided").admitted);
    }
    let mut calls = delta(&before, &after);
    assert_eq!(calls.remove("info"), Some(1), "{calls:?}");
    let evalsha = calls.remove("evalsha").unwrap_or(0);
    // Batched: far fewer scripts than decisions, and each batch exactly one EVALSHA (no EVAL,
    // no SCRIPT LOAD) and one TIME.
    assert!(batches < 64, "{batches} batches for 64 decisions");
    assert_eq!(evalsha, batches, "{calls:?}");
    assert_eq!(calls.remove("time"), Some(batches), "{calls:?}");
    // One MGET per batch, and one SET per bucket (two per decision).
    assert_eq!(calls.remove("mget"), Some(batches), "{calls:?}");
    assert_eq!(calls.remove("set"), Some(128), "{calls:?}");
    for name in calls.keys() {
        assert!(SCRIPT_COMMANDS.contains(&name.as_str()), "{name}");
    }
    eprintln!("64 concurrent decisions: {batches} batches");
    common::clean(&direct, &prefix).await;
}
