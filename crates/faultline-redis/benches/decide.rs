//! Decisions per second with 32 concurrent callers against `INCR` on the same Redis, through
//! the same pool, with the same concurrency.
//!
//! Needs Redis (`FAULTLINE_REDIS_URL`, default `redis://127.0.0.1:6379`); prints a line and
//! does nothing when it is not reachable. Run with `cargo bench -p faultline-redis`.
#![allow(clippy::print_stderr, clippy::unwrap_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use faultline_redis::{PoolOptions, RedisPool};

const CALLERS: u64 = 32;

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
    let pool = Arc::new(RedisPool::new(&url(), PoolOptions::default()).unwrap());
    if runtime
        .block_on(pool.query::<String>(&redis::cmd("PING")))
        .is_err()
    {
        eprintln!("skipped: Redis not reachable at {}", url());
        return;
    }
    let prefix = format!("flbench-{}", std::process::id());
    let counter = format!("{{{prefix}:incr}}:n");

    let incr = {
        let (pool, counter) = (pool.clone(), counter.clone());
        Arc::new(move |_: u64| {
            let (pool, counter) = (pool.clone(), counter.clone());
            async move {
                let _: i64 = pool.query(redis::cmd("INCR").arg(&counter)).await.unwrap();
            }
        })
    };

    let mut group = c.benchmark_group("redis_32_callers");
    group.throughput(Throughput::Elements(1));
    group.bench_function("incr", |b| {
        b.to_async(&runtime)
            .iter_custom(|iters| spread(iters, incr.clone()));
    });
    group.finish();

    runtime.block_on(async {
        let _: i64 = pool.query(redis::cmd("DEL").arg(&counter)).await.unwrap();
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
