//! The in-memory limit store beside governor's keyed limiter, in one run: one rate policy per
//! caller (the same work governor does), then two policies decided as one step (which governor
//! cannot do). Callers cycle through 1024 keys; limits are high enough that every request is
//! admitted, so both sides take their admitting path. Compare figures of one run only: the
//! machine is shared.
#![allow(missing_docs)] // criterion_group! generates an undocumented public function
#![allow(clippy::expect_used)] // a broken fixture should stop the benchmark

use std::hint::black_box;
use std::num::NonZeroU32;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use faultline::limits::{MICROS_PER_SECOND, Rule};
use faultline_axum::limit::{Check, MemoryLimitStore};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

const CALLERS: usize = 1024;
/// Far more than a bench sends in a minute, so nothing is refused.
const PER_MINUTE: u32 = 1_000_000_000;

fn limit(c: &mut Criterion) {
    let callers: Vec<String> = (0..CALLERS).map(|i| format!("key_{i:05}")).collect();
    let minute = Rule::Rate {
        limit: u64::from(PER_MINUTE),
        window_us: 60 * MICROS_PER_SECOND,
    };
    let hour = Rule::Rate {
        limit: u64::from(PER_MINUTE),
        window_us: 3600 * MICROS_PER_SECOND,
    };
    let one = [Check::new("minute", minute)];
    let two = [Check::new("minute", minute), Check::new("hour", hour)];
    let store = MemoryLimitStore::new();
    let governor: DefaultKeyedRateLimiter<String> = RateLimiter::keyed(Quota::per_minute(
        NonZeroU32::new(PER_MINUTE).expect("non-zero"),
    ));

    let mut group = c.benchmark_group("limit");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    let mut i = 0;
    group.bench_function("governor_keyed/one_policy", |b| {
        b.iter(|| {
            i = (i + 1) % CALLERS;
            assert!(governor.check_key(black_box(&callers[i])).is_ok());
        });
    });
    group.bench_function("faultline_memory/one_policy", |b| {
        b.iter(|| {
            i = (i + 1) % CALLERS;
            assert!(
                store
                    .decide_now(black_box(&callers[i]), &one, None)
                    .admitted
            );
        });
    });
    group.bench_function("faultline_memory/two_policies", |b| {
        b.iter(|| {
            i = (i + 1) % CALLERS;
            assert!(
                store
                    .decide_now(black_box(&callers[i]), &two, None)
                    .admitted
            );
        });
    });
    let fixed = Some(1_900_000_000 * MICROS_PER_SECOND);
    group.bench_function("faultline_memory/one_policy_time_given", |b| {
        b.iter(|| {
            i = (i + 1) % CALLERS;
            assert!(
                store
                    .decide_now(black_box(&callers[i]), &one, fixed)
                    .admitted
            );
        });
    });
    group.bench_function("system_clock/now", |b| {
        b.iter(|| {
            black_box(faultline::clock::Clock::now_unix_nanos(
                &faultline::clock::SystemClock,
            ))
        });
    });
    let counter = faultline_axum::clock::CounterClock::new();
    group.bench_function("counter_clock/now", |b| {
        b.iter(|| black_box(faultline::clock::Clock::now_unix_nanos(&counter)));
    });
    group.finish();
}

criterion_group!(benches, limit);
criterion_main!(benches);
