//! Decisions per second with 32 concurrent callers against `INCR` on the same Redis, through
//! the same pool, with the same concurrency.
//!
//! Needs Redis (`FAULTLINE_REDIS_URL`, default `redis://127.0.0.1:6379`); prints a line and
//! does nothing when it is not reachable. Run with `cargo bench -p faultline-redis`.
#![allow(clippy::print_stderr, clippy::unwrap_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use faultline::limits::{Period, Rule};
use faultline_axum::limit::{Check, LimitStore};
use faultline_redis::{PoolOptions, RedisLimitStore, RedisPool};

const CALLERS: u64 = 32;

// The allocator `faultline serve` runs on (faultline-cli's default `mimalloc` feature): this
// process stands in for the server's side of the decisions.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn url() -> String {
    std::env::var("FAULTLINE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// Runs `total` operations spread over [`CALLERS`] tasks and returns the time they took.
async fn spread<F, Fut>(total: u64, op: Arc<F>) -> Duration
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for caller in 0..CALLERS {
        let op = op.clone();
        let share = total / CALLERS + u64::from(caller < total % CALLERS);
        tasks.spawn(async move {
            for i in 0..share {
                op(caller * 1_000_000 + i).await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    started.elapsed()
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // `FAULTLINE_BENCH_CONNECTIONS` sets the pool's size (default: the pool's default, 4).
    let mut options = PoolOptions::default();
    if let Some(n) = std::env::var("FAULTLINE_BENCH_CONNECTIONS")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        options = options.with_connections(n);
    }
    let pool = Arc::new(RedisPool::new(&url(), options).unwrap());
    if runtime
        .block_on(pool.query::<String>(&redis::cmd("PING")))
        .is_err()
    {
        eprintln!("skipped: Redis not reachable at {}", url());
        return;
    }
    let prefix = format!("flbench-{}", std::process::id());
    let counter = format!("{{{prefix}:incr}}:n");

    // Each caller counts on its own key, and decides on its own group (its own buckets).
    let incr = {
        let (pool, counter) = (pool.clone(), counter.clone());
        Arc::new(move |op: u64| {
            let pool = pool.clone();
            let key = format!("{counter}:{}", op / 1_000_000);
            async move {
                let _: i64 = pool.query(redis::cmd("INCR").arg(&key)).await.unwrap();
            }
        })
    };
    // `FAULTLINE_BENCH_BATCHES` sets the batches in flight (default: the store's default).
    let mut store = RedisLimitStore::new(pool.clone()).with_prefix(&prefix);
    if let Some(n) = std::env::var("FAULTLINE_BENCH_BATCHES")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        store = store.with_batches_in_flight(n);
    }
    let store = Arc::new(store);
    // A limit no caller reaches: every decision is admitted and writes its bucket.
    let one = Arc::new(vec![Check::new(
        "second",
        Rule::Rate {
            limit: 1_000_000_000,
            window_us: 1_000_000,
        },
    )]);
    let two = Arc::new(vec![
        one[0].clone(),
        Check::new(
            "day",
            Rule::Quota {
                limit: 1_000_000_000,
                period: Period::Day,
                cost: 1,
            },
        ),
    ]);
    let decide = |checks: Arc<Vec<Check>>| {
        let store = store.clone();
        Arc::new(move |op: u64| {
            let (store, checks) = (store.clone(), checks.clone());
            async move {
                let group = format!("caller-{}", op / 1_000_000);
                let decision = store.decide(&group, &checks, None).await.unwrap();
                assert!(decision.admitted);
            }
        })
    };
    let decide_one = decide(one);
    let decide_two = decide(two);

    let mut group = c.benchmark_group("redis_32_callers");
    group.throughput(Throughput::Elements(1));
    group.bench_function("incr", |b| {
        b.to_async(&runtime)
            .iter_custom(|iters| spread(iters, incr.clone()));
    });
    group.bench_function("decide_one_policy", |b| {
        b.to_async(&runtime)
            .iter_custom(|iters| spread(iters, decide_one.clone()));
    });
    group.bench_function("decide_two_policies", |b| {
        b.to_async(&runtime)
            .iter_custom(|iters| spread(iters, decide_two.clone()));
    });
    group.finish();

    // The ratio in one run: rounds of INCR and decisions in turn, same pool, same callers;
    // each decision rate is compared with the mean of the INCR rates measured just before and
    // just after it, and the median over the rounds is reported (the machine is shared: single
    // rounds swing). A round is 50,000 operations (`FAULTLINE_BENCH_OPS`): a round of 10,000
    // lasted about 70 ms, short enough for one scheduling hiccup on a shared 2-core machine to
    // move it.
    let ops: u64 = std::env::var("FAULTLINE_BENCH_OPS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(50_000);
    let rounds = 9;
    let rate = |op: &dyn Fn() -> Duration| ops as f64 / op().as_secs_f64();
    let incr_rate = || rate(&|| runtime.block_on(spread(ops, incr.clone())));
    let mut one_ratios = Vec::new();
    let mut two_ratios = Vec::new();
    for round in 0..rounds {
        let incr_before = incr_rate();
        let one = rate(&|| runtime.block_on(spread(ops, decide_one.clone())));
        let two = rate(&|| runtime.block_on(spread(ops, decide_two.clone())));
        let incr_after = incr_rate();
        let incr = (incr_before + incr_after) / 2.0;
        eprintln!(
            "round {round}: INCR {incr:.0}/s, decide (1 policy) {one:.0}/s = {:.2}x, \
             decide (2 policies) {two:.0}/s = {:.2}x",
            one / incr,
            two / incr
        );
        one_ratios.push(one / incr);
        two_ratios.push(two / incr);
    }
    one_ratios.sort_by(f64::total_cmp);
    two_ratios.sort_by(f64::total_cmp);
    eprintln!(
        "redis_32_callers ({} connections, {ops} ops per run): median decide/INCR ratio \
         {:.2} with one policy (range {:.2}..{:.2}; target >= 0.60), {:.2} with two",
        pool.options().connections(),
        one_ratios[rounds / 2],
        one_ratios[0],
        one_ratios[rounds - 1],
        two_ratios[rounds / 2],
    );

    runtime.block_on(async {
        for caller in 0..CALLERS {
            let keys = [
                format!("{counter}:{caller}"),
                store.bucket_key(&format!("caller-{caller}"), "second"),
                store.bucket_key(&format!("caller-{caller}"), "day"),
            ];
            let _: i64 = pool.query(redis::cmd("DEL").arg(&keys)).await.unwrap();
        }
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    targets = bench
}
criterion_main!(benches);
