//! Two processes on one Redis admit exactly the limit between them.
//!
//! The test binary runs itself twice as a child (`FAULTLINE_REDIS_CHILD` set): each child
//! builds its own store and pool and hammers the same group with 16 concurrent callers, on
//! Redis's clock. The parent adds up what the children admitted.
#![allow(clippy::print_stdout)]

mod common;

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use faultline::limits::{MICROS_PER_SECOND as S, Period, Rule};
use faultline_axum::limit::{Check, LimitStore};
use faultline_redis::{PoolOptions, RedisLimitStore, RedisPool};

const CHILD: &str = "FAULTLINE_REDIS_CHILD";
/// The rate limit shared by the two processes: 40 per day (no refill during the test).
const LIMIT: u64 = 40;
/// Attempts per process: each alone could spend the whole limit three times over.
const ATTEMPTS: u64 = 120;

fn checks() -> Vec<Check> {
    vec![
        Check::new(
            "day",
            Rule::Rate {
                limit: LIMIT,
                window_us: 86_400 * S,
            },
        ),
        Check::new(
            "units",
            Rule::Quota {
                limit: 1_000_000,
                period: Period::Day,
                cost: 1,
            },
        ),
        Check::new(
            "flight",
            Rule::Concurrency {
                limit: 1_000,
                lease_ttl_us: 60 * S,
            },
        ),
    ]
}

/// In a child: decide `ATTEMPTS` times on the prefix the parent gave, print the admitted count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_process() {
    let Ok(prefix) = std::env::var(CHILD) else {
        return; // not a child: nothing to do
    };
    let pool = RedisPool::new(
        &common::redis_url(),
        PoolOptions::default().with_deadline(std::time::Duration::from_secs(5)),
    )
    .expect("pool");
    let store = Arc::new(RedisLimitStore::new(Arc::new(pool)).with_prefix(&prefix));
    let admitted = Arc::new(AtomicU64::new(0));
    let mut callers = tokio::task::JoinSet::new();
    for caller in 0..16 {
        let (store, admitted) = (store.clone(), admitted.clone());
        callers.spawn(async move {
            let checks = checks();
            for _ in (caller..ATTEMPTS).step_by(16) {
                let decision = store.decide("shared", &checks, None).await.expect("decide");
                if decision.admitted {
                    admitted.fetch_add(1, Ordering::Relaxed);
                    store
                        .release(decision.lease.expect("a lease"))
                        .await
                        .expect("release");
                }
            }
        });
    }
    while let Some(done) = callers.join_next().await {
        done.expect("a caller");
    }
    println!("\nadmitted={}", admitted.load(Ordering::Relaxed));
}

#[tokio::test]
async fn two_processes_admit_exactly_the_limit_between_them() {
    if std::env::var_os(CHILD).is_some() {
        return;
    }
    let Some(direct) = common::redis_or_skip("two_processes_admit_exactly_the_limit").await else {
        return;
    };
    let prefix = common::unique_prefix("twoproc");
    let exe = std::env::current_exe().expect("the test binary");
    let children: Vec<_> = (0..2)
        .map(|_| {
            std::process::Command::new(&exe)
                .args([
                    "--exact",
                    "child_process",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD, &prefix)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("a child process")
        })
        .collect();
    let mut per_child = Vec::new();
    for child in children {
        let output = child.wait_with_output().expect("the child ends");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "child failed: {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let admitted: u64 = stdout
            .split("admitted=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no count in the child's output: {stdout}"));
        per_child.push(admitted);
    }
    assert_eq!(
        per_child.iter().sum::<u64>(),
        LIMIT,
        "per process: {per_child:?}"
    );
    // The quota counted exactly the admitted requests, no refused one.
    let store = RedisLimitStore::connect(&common::redis_url())
        .expect("store")
        .with_prefix(&prefix);
    let units: String = direct
        .query(redis::cmd("GET").arg(store.bucket_key("shared", "units")))
        .await
        .expect("GET");
    assert!(units.ends_with(&format!(":{LIMIT}")), "{units}");
    // Every lease was given back.
    let leases: i64 = direct
        .query(redis::cmd("ZCARD").arg(store.bucket_key("shared", "flight")))
        .await
        .expect("ZCARD");
    assert_eq!(leases, 0);
    common::clean(&direct, &prefix).await;
}
