//! What the Redis tests share: where Redis is, skipping when it is not there, and a key prefix
//! of each test's own that is deleted after.
#![allow(dead_code, unreachable_pub)]

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
