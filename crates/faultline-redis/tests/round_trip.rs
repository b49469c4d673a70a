//! `INFO commandstats` shows exactly one command from the client, one `EVALSHA`, per decision:
//! every check of the request is read, decided and spent by one script. (Redis counts the
//! commands the script runs inside it too; the test checks they are only the script's.)
//!
//! The counts are the server's, so this test assumes nothing else sends commands to the same
//! Redis while it runs (true on CI, where it is the only Redis client at that moment).

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use faultline::limits::{MICROS_PER_SECOND as S, Period, Rule};
use faultline_axum::limit::{Check, LimitStore};
use faultline_redis::{PoolOptions, RedisLimitStore, RedisPool};

/// The commands `decide.lua` runs inside Redis (they are counted by `commandstats` too, but
/// are not round trips).
const SCRIPT_COMMANDS: &[&str] = &[
    "time",
    "get",
    "mget",
    "pttl",
    "set",
    "type",
    "zcount",
    "zrangebyscore",
    "zremrangebyscore",
    "zadd",
    "zrange",
    "pexpire",
    "pexpireat",
    "del",
];

/// Calls per command name, from `INFO commandstats`.
async fn command_calls(pool: &RedisPool) -> HashMap<String, u64> {
    let info: String = pool
        .query(redis::cmd("INFO").arg("commandstats"))
        .await
        .expect("INFO");
    info.lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest.split(',').find_map(|f| f.strip_prefix("calls="))?;
            Some((name.to_owned(), calls.parse().ok()?))
        })
        .collect()
}

/// The calls made between two snapshots, by command (only those that changed).
fn delta(before: &HashMap<String, u64>, after: &HashMap<String, u64>) -> HashMap<String, u64> {
    after
        .iter()
        .filter_map(|(name, calls)| {
            let was = before.get(name).copied().unwrap_or(0);
            (*calls > was).then(|| (name.clone(), calls - was))
        })
        .collect()
}

#[tokio::test]
async fn every_decision_is_exactly_one_evalsha() {
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
    // On Redis's clock the keys get absolute expiries: each still expires, and no later than
    // its state becomes idle (minute: one interval of 20 s per request; month: its end).
    for (name, most_ms) in [
        ("minute", 60_000),
        ("hour", 3_600_000),
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
