//! Concurrent decisions share batches (group commit): one `EVALSHA` and one `TIME` per batch,
//! decisions inside a batch decided exactly as one after the other, nothing spent by a refused
//! decision or by a caller that gave up before its batch was sent, and every caller answered
//! within the pool's deadline when Redis stalls. (The commands a batch costs are counted in the
//! `round_trip` test, which runs alone.)

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use faultline::limits::{MICROS_PER_DAY, MICROS_PER_SECOND as S, Rule};
use faultline_axum::StoreError;
use faultline_axum::limit::{Check, Decision, LimitStore, suite};
use faultline_redis::{PoolOptions, RedisLimitStore, RedisPool};
use faultline_testkit::TcpProxy;
use proptest::prelude::*;

type Pending<'a> = Pin<Box<dyn Future<Output = Result<Decision, StoreError>> + 'a>>;

/// Runs `futures` concurrently in one task, each polled in the order given: the decisions
/// reach the store in that order (the first takes a free slot; the others queue behind it).
async fn in_order(mut futures: Vec<Pending<'_>>) -> Vec<Result<Decision, StoreError>> {
    let mut done: Vec<Option<Result<Decision, StoreError>>> =
        futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        for (future, slot) in futures.iter_mut().zip(done.iter_mut()) {
            if slot.is_none()
                && let Poll::Ready(outcome) = future.as_mut().poll(cx)
            {
                *slot = Some(outcome);
            }
        }
        if done.iter().all(Option::is_some) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    done.into_iter().flatten().collect()
}

fn store(prefix: &str) -> RedisLimitStore {
    let pool = RedisPool::new(&common::redis_url(), PoolOptions::default()).expect("pool");
    RedisLimitStore::new(Arc::new(pool)).with_prefix(prefix)
}

fn per_day(limit: u64) -> Rule {
    Rule::Rate {
        limit,
        window_us: 86_400 * S,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_decisions_against_a_limit_of_fifty_admit_exactly_fifty() {
    let Some(direct) = common::redis_or_skip("two_hundred_against_fifty").await else {
        return;
    };
    let prefix = common::unique_prefix("fifty");
    let store = Arc::new(store(&prefix));
    let checks = Arc::new([Check::new("day", per_day(50))]);
    let sent = store.batches_sent();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let (store, checks) = (store.clone(), checks.clone());
        tasks.spawn(async move { store.decide("org", &checks[..], None).await });
    }
    let mut admitted = 0;
    while let Some(outcome) = tasks.join_next().await {
        if outcome.expect("joined").expect("decided").admitted {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 50);
    let batches = store.batches_sent() - sent;
    assert!(batches < 200, "{batches} batches");
    // The bucket holds exactly 50 spent: the next request is refused.
    assert!(
        !store
            .decide("org", &checks[..], None)
            .await
            .expect("decided")
            .admitted
    );
    common::clean(&direct, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_decisions_in_a_batch_spend_nothing_on_any_policy() {
    let Some(direct) = common::redis_or_skip("refused_in_a_batch").await else {
        return;
    };
    let prefix = common::unique_prefix("refused");
    let store = Arc::new(store(&prefix));
    let flight = Check::new(
        "flight",
        Rule::Concurrency {
            limit: 1_000,
            lease_ttl_us: 60 * S,
        },
    );
    // 100 requests spend `a` (60 a day), `b` (30 a day) and a lease; 100 others only `a`.
    let both = Arc::new(vec![
        Check::new("a", per_day(60)),
        Check::new("b", per_day(30)),
        flight.clone(),
    ]);
    let only_a = Arc::new(vec![Check::new("a", per_day(60))]);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let store = store.clone();
        let checks = if i % 2 == 0 {
            both.clone()
        } else {
            only_a.clone()
        };
        tasks.spawn(async move {
            let decision = store.decide("org", &checks, None).await.expect("decided");
            (checks.len() > 1, decision.admitted)
        });
    }
    let (mut admitted_both, mut admitted_a) = (0u64, 0u64);
    while let Some(outcome) = tasks.join_next().await {
        match outcome.expect("joined") {
            (true, true) => admitted_both += 1,
            (false, true) => admitted_a += 1,
            _ => {}
        }
    }
    // `a` is refused only once spent: with 100 requests for it alone, all 60 go.
    assert_eq!(admitted_both + admitted_a, 60);
    assert!(admitted_both <= 30);
    // `b` and the leases were spent by the admitted requests only, not by those `a` refused.
    let b = store
        .decide("org", &[Check::new("b", per_day(30))], None)
        .await
        .expect("decided");
    assert_eq!(b.admitted, admitted_both < 30);
    if b.admitted {
        assert_eq!(b.outcomes[0].remaining, 30 - admitted_both - 1);
    }
    let leases: u64 = direct
        .query(redis::cmd("ZCARD").arg(store.bucket_key("org", "flight")))
        .await
        .expect("ZCARD");
    assert_eq!(leases, admitted_both);
    common::clean(&direct, &prefix).await;
}

#[tokio::test]
async fn a_batch_falls_back_to_eval_when_redis_lost_the_script() {
    // Every EVALSHA answers NOSCRIPT (the store asks for a script Redis cannot know): each
    // batch is sent again whole with EVAL, and decides exactly as before.
    let Some(direct) = common::redis_or_skip("a_batch_falls_back_to_eval").await else {
        return;
    };
    let prefix = common::unique_prefix("noscriptbatch");
    let store = store(&prefix).with_unknown_script_for_tests();
    let checks = [Check::new("day", per_day(10))];
    let decisions = in_order(
        (0..64)
            .map(|_| -> Pending<'_> { store.decide("org", &checks, None) })
            .collect(),
    )
    .await;
    let admitted = decisions
        .into_iter()
        .filter(|d| d.as_ref().expect("decided").admitted)
        .count();
    assert_eq!(admitted, 10);
    assert!(store.batches_sent() < 64, "{}", store.batches_sent());
    common::clean(&direct, &prefix).await;
}

#[tokio::test]
async fn a_caller_that_gave_up_before_its_batch_was_sent_spends_nothing() {
    let Some(direct) = common::redis_or_skip("a_caller_that_gave_up").await else {
        return;
    };
    let deadline = Duration::from_millis(300);
    let prefix = common::unique_prefix("gaveup");
    let proxy = TcpProxy::start(common::redis_addr()).await.expect("proxy");
    let pool = RedisPool::new(
        &format!("redis://{}", proxy.addr()),
        PoolOptions::default()
            .with_connections(1)
            .with_deadline(deadline)
            .with_connect_timeout(deadline),
    )
    .expect("pool");
    // One batch in flight at a time: while it stalls, every other decision queues.
    let store = Arc::new(
        RedisLimitStore::new(Arc::new(pool))
            .with_prefix(&prefix)
            .with_batches_in_flight(1),
    );
    let one = [Check::new("day", per_day(1))];
    let blocker = [Check::new("day", per_day(100))];
    assert!(
        store
            .decide("blocker", &blocker, None)
            .await
            .expect("warm")
            .admitted
    );
    let sent = store.batches_sent();

    proxy.stall().expect("stall");
    let stalled = {
        let store = store.clone();
        tokio::spawn(async move { store.decide("blocker", &blocker, None).await })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    // Queued behind the stalled batch, the caller gives up (drops its future) long before the
    // slot frees.
    let gave_up = tokio::time::timeout(
        Duration::from_millis(50),
        store.decide("victim", &one, None),
    )
    .await;
    assert!(gave_up.is_err(), "still queued: {gave_up:?}");
    let error = stalled
        .await
        .expect("joined")
        .expect_err("stalled")
        .is_unavailable();
    assert!(error);
    // The slot was freed and the queue looked at: the victim's decision was never sent.
    assert_eq!(
        store.batches_sent() - sent,
        1,
        "only the stalled batch was sent"
    );
    proxy.restore().expect("restore");

    let victim_key = store.bucket_key("victim", "day");
    let exists: i64 = direct
        .query(redis::cmd("EXISTS").arg(&victim_key))
        .await
        .expect("EXISTS");
    assert_eq!(exists, 0, "nothing was spent for the caller that gave up");
    // Its one request a day is still there.
    let decision = store.decide("victim", &one, None).await.expect("decided");
    assert!(decision.admitted);
    common::clean(&direct, &prefix).await;
}

#[tokio::test]
async fn queued_callers_are_answered_within_the_deadline_when_redis_stalls() {
    let Some(direct) = common::redis_or_skip("queued_callers_within_the_deadline").await else {
        return;
    };
    let deadline = Duration::from_millis(300);
    // Scheduling slack on a shared 2-core machine, as in the `outage` tests.
    let slack = Duration::from_millis(700);
    let prefix = common::unique_prefix("stallq");
    let proxy = TcpProxy::start(common::redis_addr()).await.expect("proxy");
    let pool = RedisPool::new(
        &format!("redis://{}", proxy.addr()),
        PoolOptions::default()
            .with_connections(2)
            .with_deadline(deadline)
            .with_connect_timeout(deadline),
    )
    .expect("pool");
    let store = RedisLimitStore::new(Arc::new(pool)).with_prefix(&prefix);
    let checks = [Check::new("day", per_day(1_000))];
    for _ in 0..3 {
        assert!(
            store
                .decide("org", &checks, None)
                .await
                .expect("warm")
                .admitted
        );
    }

    proxy.stall().expect("stall");
    // 32 callers at once: 2 send, 30 queue; then the 2 slots send the queued ones on new
    // connections that stall too. Every caller gets "unavailable" within its deadline.
    let store = &store;
    let checks = &checks;
    let timed = || -> Pending<'_> {
        Box::pin(async move {
            let started = Instant::now();
            let outcome = store.decide("org", checks, None).await;
            let took = started.elapsed();
            assert!(took < deadline + slack, "answered after {took:?}");
            outcome
        })
    };
    let started = Instant::now();
    let outcomes = in_order((0..32).map(|_| timed()).collect()).await;
    for outcome in outcomes {
        assert!(outcome.expect_err("stalled").is_unavailable());
    }
    assert!(started.elapsed() < deadline + slack);

    proxy.restore().expect("restore");
    // Back without a restart.
    let decision = store.decide("org", checks, None).await.expect("decided");
    assert!(decision.admitted);
    common::clean(&direct, &prefix).await;
}

/// Batches decided against the model: each step is a batch of decisions sent at once (each on
/// its own clock), which the model decides one after the other in the same order.
mod model {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    /// Decisions sent to Redis by the model test.
    static DECIDED: AtomicU64 = AtomicU64::new(0);

    /// One decision: the checks (indexes into `rule`), which of them (if any) uses the bucket
    /// `shared` (of whatever kind another decision left there), and its clock's step forward.
    type Request = (Vec<usize>, Option<usize>, i64);

    #[derive(Debug, Clone)]
    enum Step {
        Wait(i64),
        Batch(Vec<Request>),
        Release(usize),
    }

    fn request() -> impl Strategy<Value = Request> {
        (
            prop::sample::subsequence(vec![0usize, 1, 2, 3, 4], 1..=5),
            prop::option::weighted(0.3, 0usize..5),
            prop_oneof![Just(0i64), 0i64..S],
        )
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            2 => prop_oneof![0i64..2 * S, 0i64..3 * MICROS_PER_DAY].prop_map(Step::Wait),
            6 => prop::collection::vec(request(), 1..12).prop_map(Step::Batch),
            2 => (0usize..8).prop_map(Step::Release),
        ]
    }

    fn checks(request: &Request, limits: &[u64; 5]) -> Vec<Check> {
        let (indexes, shared, _) = request;
        let shared = shared.map(|s| s % indexes.len());
        indexes
            .iter()
            .enumerate()
            .map(|(position, &i)| {
                let key = if shared == Some(position) {
                    "shared".to_owned()
                } else {
                    format!("c{i}")
                };
                Check::new(key, common::model_rule(i, limits))
            })
            .collect()
    }

    async fn run(
        redis: &RedisLimitStore,
        limits: [u64; 5],
        steps: Vec<Step>,
    ) -> Result<(), TestCaseError> {
        let mut replay = common::ModelReplay::new();
        let group = suite::fresh_group("batch");
        let mut now = suite::NOW_US;
        for step in steps {
            match step {
                Step::Wait(us) => now += us,
                Step::Batch(requests) => {
                    let mut at = Vec::with_capacity(requests.len());
                    for request in &requests {
                        now += request.2;
                        at.push(now);
                    }
                    let all: Vec<Vec<Check>> =
                        requests.iter().map(|r| checks(r, &limits)).collect();
                    DECIDED.fetch_add(all.len() as u64, Ordering::Relaxed);
                    let decided = in_order(
                        all.iter()
                            .zip(&at)
                            .map(|(checks, &now)| -> Pending<'_> {
                                redis.decide(&group, checks, Some(now))
                            })
                            .collect(),
                    )
                    .await;
                    for ((checks, &now), r) in all.iter().zip(&at).zip(decided) {
                        let r = r.expect("Redis decides");
                        replay.same_as_redis(&group, checks, now, r).await?;
                    }
                }
                Step::Release(n) => replay.release(redis, n).await,
            }
        }
        Ok(())
    }

    #[test]
    fn batches_decide_like_the_model_one_after_the_other() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let Some(direct) = runtime.block_on(common::redis_or_skip("batches_like_the_model")) else {
            return;
        };
        let prefix = common::unique_prefix("batchmodel");
        let pool = RedisPool::new(&common::redis_url(), PoolOptions::default()).expect("pool");
        // One batch in flight: the first decision of a step goes alone, the rest as one batch.
        let redis = RedisLimitStore::new(Arc::new(pool))
            .with_prefix(&prefix)
            .with_batches_in_flight(1);
        let config = ProptestConfig {
            cases: 64,
            ..ProptestConfig::default()
        };
        let outcome = proptest::test_runner::TestRunner::new(config).run(
            &(
                [0u64..6, 1u64..4, 0u64..9, 1u64..5, 0u64..3],
                prop::collection::vec(step(), 1..30),
            ),
            |(limits, steps)| runtime.block_on(run(&redis, limits, steps)),
        );
        let batches = redis.batches_sent();
        runtime.block_on(common::clean(&direct, &prefix));
        if let Err(failure) = outcome {
            panic!("{failure}");
        }
        // The steps did go as batches (fewer scripts than decisions).
        let decided = DECIDED.load(Ordering::Relaxed);
        assert!(
            batches < decided,
            "{batches} batches for {decided} decisions"
        );
    }
}
