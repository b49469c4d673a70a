//! The in-memory limit store's admitting path allocates nothing once the buckets exist (the
//! guarantee "No allocation on the admitting path of rate and quota checks" of
//! `MemoryLimitStore::decide_now`). Alone in its binary: another test running beside it would
//! allocate under the same counting allocator.
#![allow(clippy::expect_used)]

use faultline::limits::{MICROS_PER_SECOND as S, Period, Rule};
use faultline_axum::limit::{Check, MemoryLimitStore};
use peak_alloc::PeakAlloc;

#[global_allocator]
static ALLOCATOR: PeakAlloc = PeakAlloc;

#[test]
fn admitting_decisions_allocate_nothing_once_their_buckets_exist() {
    let store = MemoryLimitStore::new();
    let minute = Check::new(
        "minute",
        Rule::Rate {
            limit: 1_000,
            window_us: 60 * S,
        },
    );
    let day = Check::new(
        "day",
        Rule::Quota {
            limit: 1_000_000,
            period: Period::Day,
            cost: 1,
        },
    );
    let one = [minute.clone()];
    let two = [minute, day];
    let mut now = 1_900_000_000 * S;
    // The first decisions create the buckets (and may grow the tables).
    assert!(store.decide_now("org_1", &one, Some(now)).admitted);
    assert!(store.decide_now("org_1", &two, Some(now)).admitted);

    ALLOCATOR.reset_peak_usage();
    let before = ALLOCATOR.current_usage();
    for _ in 0..2_000 {
        now += S;
        let decision = store.decide_now("org_1", &one, Some(now));
        assert!(decision.admitted);
        drop(decision);
        let decision = store.decide_now("org_1", &two, Some(now));
        assert!(decision.admitted && decision.outcomes.len() == 2);
        drop(decision);
    }
    let peak = ALLOCATOR.peak_usage();
    assert_eq!(
        peak,
        before,
        "{} bytes allocated at the peak",
        peak - before
    );
}
