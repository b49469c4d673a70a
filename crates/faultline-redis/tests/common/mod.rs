//! What the Redis tests share: where Redis is, skipping when it is not there, and a key prefix
//! of each test's own that is deleted after.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use faultline_redis::{PoolOptions, RedisPool};

/// The Redis the tests use: `FAULTLINE_REDIS_URL`, or the machine's at 127.0.0.1:6379.
pub fn redis_url() -> String {
    std::env::var("FAULTLINE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// The `host:port` of [`redis_url`] (for a proxy in front of it).
pub fn redis_addr() -> std::net::SocketAddr {
    let url = redis_url();
    let rest = url.trim_start_matches("redis://");
    let host_port = rest.split('/').next().unwrap_or(rest);
    let host_port = host_port.rsplit('@').next().unwrap_or(host_port);
    use std::net::ToSocketAddrs;
    host_port
        .to_socket_addrs()
        .expect("a resolvable Redis address")
        .next()
        .expect("an address")
}

/// A pool on the test Redis, or `None` (after printing why) when Redis is not reachable and
/// `FAULTLINE_REQUIRE_REDIS` is unset. With `FAULTLINE_REQUIRE_REDIS` set, an unreachable
/// Redis fails the test.
pub async fn redis_or_skip(test: &str) -> Option<RedisPool> {
    let url = redis_url();
    let pool = RedisPool::new(
        &url,
        PoolOptions::default().with_deadline(Duration::from_secs(2)),
    )
    .expect("a valid Redis URL");
    match pool.query::<String>(&redis::cmd("PING")).await {
        Ok(_) => Some(pool),
        Err(error) => {
            if std::env::var_os("FAULTLINE_REQUIRE_REDIS").is_some() {
                panic!("Redis not reachable at {url} and FAULTLINE_REQUIRE_REDIS is set: {error}");
            }
            // Straight to stderr, past the test harness's capture, so the skip is seen.
            use std::io::Write as _;
            // One write, so that lines of tests running in parallel do not interleave.
            let line = format!(
                "{test}: skipped: Redis not reachable at {url} ({error}); set \
                 FAULTLINE_REQUIRE_REDIS=1 to make this a failure\n"
            );
            let _ = std::io::stderr().write_all(line.as_bytes());
            None
        }
    }
}

/// A key prefix no other test (or process) uses.
pub fn unique_prefix(test: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "fltest-{test}-{}-{}-{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Every key whose name contains `prefix` (keys are `{prefix:group}:…`).
pub async fn keys_of(pool: &RedisPool, prefix: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = pool
            .query(
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(format!("*{prefix}*"))
                    .arg("COUNT")
                    .arg(1000),
            )
            .await
            .expect("SCAN");
        found.extend(batch);
        if next == 0 {
            return found;
        }
        cursor = next;
    }
}

/// Deletes every key of `prefix`.
pub async fn clean(pool: &RedisPool, prefix: &str) {
    let keys = keys_of(pool, prefix).await;
    if !keys.is_empty() {
        let _: i64 = pool.query(redis::cmd("DEL").arg(&keys)).await.expect("DEL");
    }
}

/// Calls per command name, from `INFO commandstats` (the server's counts: they include other
/// clients' commands, and the commands scripts run inside).
pub async fn command_calls(pool: &RedisPool) -> HashMap<String, u64> {
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
pub fn delta(before: &HashMap<String, u64>, after: &HashMap<String, u64>) -> HashMap<String, u64> {
    after
        .iter()
        .filter_map(|(name, calls)| {
            let was = before.get(name).copied().unwrap_or(0);
            (*calls > was).then(|| (name.clone(), calls - was))
        })
        .collect()
}

/// The commands `decide.lua` runs inside Redis (they are counted by `commandstats` too, but
/// are not round trips).
pub const SCRIPT_COMMANDS: &[&str] = &[
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

/// A decision in progress, as [`in_order`] takes it.
pub type Pending<'a> = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = Result<faultline_axum::limit::Decision, faultline_axum::StoreError>,
            > + 'a,
    >,
>;

/// Runs `futures` concurrently in one task, each polled in the order given: the decisions
/// reach the store in that order (the first takes a free slot; the others queue behind it).
pub async fn in_order(
    mut futures: Vec<Pending<'_>>,
) -> Vec<Result<faultline_axum::limit::Decision, faultline_axum::StoreError>> {
    let mut done: Vec<Option<_>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        for (future, slot) in futures.iter_mut().zip(done.iter_mut()) {
            if slot.is_none()
                && let std::task::Poll::Ready(outcome) = future.as_mut().poll(cx)
            {
                *slot = Some(outcome);
            }
        }
        if done.iter().all(Option::is_some) {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    done.into_iter().flatten().collect()
}

/// The five rules the model tests draw from (two rates, two quotas, a concurrency limit),
/// with the limits drawn for the case: index 4 and above is the concurrency rule.
pub fn model_rule(index: usize, limits: &[u64; 5]) -> faultline::limits::Rule {
    use faultline::limits::{MICROS_PER_SECOND as S, Period, Rule};
    match index {
        0 => Rule::Rate {
            limit: limits[0],
            window_us: 10 * S,
        },
        1 => Rule::Rate {
            limit: limits[1],
            window_us: 3 * S + 7,
        },
        2 => Rule::Quota {
            limit: limits[2],
            period: Period::Day,
            cost: 2,
        },
        3 => Rule::Quota {
            limit: limits[3],
            period: Period::Month,
            cost: 1,
        },
        _ => Rule::Concurrency {
            limit: limits[4],
            lease_ttl_us: 5 * S,
        },
    }
}

/// Redis's decisions held against the model's (the in-memory store, which applies
/// `faultline::limits::decide`) one after the other, with the leases both took.
pub struct ModelReplay {
    model: faultline_axum::limit::MemoryLimitStore,
    leases: Vec<(faultline_axum::limit::Lease, faultline_axum::limit::Lease)>,
}

impl ModelReplay {
    /// A fresh model, holding no lease.
    pub fn new() -> Self {
        ModelReplay {
            model: faultline_axum::limit::MemoryLimitStore::new(),
            leases: Vec::new(),
        }
    }

    /// Asks the model what Redis was asked, and fails the case unless the parts that must
    /// agree do (lease ids differ by store); keeps both leases.
    pub async fn same_as_redis(
        &mut self,
        group: &str,
        checks: &[faultline_axum::limit::Check],
        now_us: i64,
        redis: faultline_axum::limit::Decision,
    ) -> Result<(), proptest::test_runner::TestCaseError> {
        use faultline_axum::limit::LimitStore;
        use proptest::prop_assert_eq;
        let model = self
            .model
            .decide(group, checks, Some(now_us))
            .await
            .expect("the model decides");
        prop_assert_eq!(redis.admitted, model.admitted);
        prop_assert_eq!(&redis.outcomes, &model.outcomes);
        prop_assert_eq!(redis.retry_after_us, model.retry_after_us);
        prop_assert_eq!(redis.lease.is_some(), model.lease.is_some());
        if let (Some(r), Some(m)) = (redis.lease, model.lease) {
            prop_assert_eq!(&r.keys, &m.keys);
            self.leases.push((r, m));
        }
        Ok(())
    }

    /// Gives back the `n`-th held lease (modulo how many are held) on both sides, if any.
    pub async fn release(&mut self, redis: &faultline_redis::RedisLimitStore, n: usize) {
        use faultline_axum::limit::LimitStore;
        if self.leases.is_empty() {
            return;
        }
        let (r, m) = self.leases.remove(n % self.leases.len());
        redis.release(r).await.expect("Redis releases");
        self.model.release(m).await.expect("the model releases");
    }
}
