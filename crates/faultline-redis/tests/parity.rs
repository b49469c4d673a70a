//! Any sequence of requests, releases and clock moves gets the same answers from Redis as from
//! the pure model (`faultline::limits::decide`, through the in-memory store that applies it).

mod common;

use std::sync::Arc;

use faultline::limits::{MICROS_PER_DAY, MICROS_PER_SECOND as S};
use faultline_axum::limit::{Check, LimitStore, suite};
use faultline_redis::{PoolOptions, RedisLimitStore, RedisPool};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Step {
    /// Move the clock forward by this many microseconds.
    Wait(i64),
    /// Decide the checks with these indexes (into `checks()`), in this order.
    Decide(Vec<usize>),
    /// Release the lease of the n-th admitted decision that took one (if any left).
    Release(usize),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => prop_oneof![0i64..2 * S, 0i64..3 * MICROS_PER_DAY].prop_map(Step::Wait),
        6 => prop::sample::subsequence(vec![0usize, 1, 2, 3, 4], 1..=5).prop_map(Step::Decide),
        2 => (0usize..8).prop_map(Step::Release),
    ]
}

async fn run(
    redis: &RedisLimitStore,
    limits: [u64; 5],
    steps: Vec<Step>,
) -> Result<(), TestCaseError> {
    let mut replay = common::ModelReplay::new();
    let group = suite::fresh_group("parity");
    let mut now = suite::NOW_US;
    for step in steps {
        match step {
            Step::Wait(us) => now += us,
            Step::Decide(indexes) => {
                let checks: Vec<Check> = indexes
                    .iter()
                    .map(|&i| Check::new(format!("c{i}"), common::model_rule(i, &limits)))
                    .collect();
                let r = redis
                    .decide(&group, &checks, Some(now))
                    .await
                    .expect("Redis decides");
                replay.same_as_redis(&group, &checks, now, r).await?;
            }
            Step::Release(n) => replay.release(redis, n).await,
        }
    }
    Ok(())
}

#[test]
fn redis_answers_like_the_model() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let Some(direct) = runtime.block_on(common::redis_or_skip("redis_answers_like_the_model"))
    else {
        return;
    };
    let prefix = common::unique_prefix("parity");
    let pool = RedisPool::new(&common::redis_url(), PoolOptions::default()).expect("pool");
    let redis = RedisLimitStore::new(Arc::new(pool)).with_prefix(&prefix);
    let config = ProptestConfig {
        cases: 64,
        ..ProptestConfig::default()
    };
    let outcome = proptest::test_runner::TestRunner::new(config).run(
        &(
            [0u64..6, 1u64..4, 0u64..9, 1u64..5, 0u64..3],
            prop::collection::vec(step(), 1..40),
        ),
        |(limits, steps)| runtime.block_on(run(&redis, limits, steps)),
    );
    runtime.block_on(common::clean(&direct, &prefix));
    if let Err(failure) = outcome {
        panic!("{failure}");
    }
}
