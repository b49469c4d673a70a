//! One test suite for every limit store (feature `store-suite`): each function drives a store
//! through [`LimitStore::decide`] with the time given explicitly (`now_us`), so the same
//! assertions hold for the in-memory store, Redis and any later backend.
//!
//! Every function uses a fresh random group, so a suite may run against a store that already
//! holds buckets (a shared Redis, a second run).
//!
//! ```
//! # async fn run() {
//! // In a store crate's test: `#[tokio::test] async fn limit_suite() { … }` with its own store.
//! let store = faultline_axum::limit::MemoryLimitStore::new();
//! faultline_axum::limit::suite::all(&store).await;
//! # }
//! ```
#![allow(clippy::missing_panics_doc)] // panicking is how a suite reports a failure

use faultline::limits::{MICROS_PER_DAY, MICROS_PER_SECOND as S, Period, Rule};

use super::{Check, Decision, LimitStore};

/// The instant the suite starts at: 2030-03-17T17:46:40Z, in unix microseconds.
pub const NOW_US: i64 = 1_900_000_000 * S;

/// A group no other run uses.
pub fn fresh_group(name: &str) -> String {
    format!("suite-{name}-{:016x}", rand::random::<u64>())
}

/// A rate rule: `limit` per `window_s` seconds.
pub fn rate(limit: u64, window_s: i64) -> Rule {
    Rule::Rate {
        limit,
        window_us: window_s * S,
    }
}

/// A concurrency rule: `limit` requests at once, each lease lapsing after `lease_ttl_s`
/// seconds.
pub fn concurrency(limit: u64, lease_ttl_s: i64) -> Rule {
    Rule::Concurrency {
        limit,
        lease_ttl_us: lease_ttl_s * S,
    }
}

async fn decide<S: LimitStore + ?Sized>(
    store: &S,
    group: &str,
    checks: &[Check],
    at: i64,
) -> Decision {
    let decision = store
        .decide(group, checks, Some(at))
        .await
        .expect("the store decides");
    assert_eq!(
        decision.outcomes.len(),
        checks.len(),
        "one outcome per check"
    );
    decision
}

/// A lease given back through its [`LeaseGuard`](super::LeaseGuard) never counts against the
/// next decision, however soon it comes: with one request allowed at a time, twenty requests
/// one after the other (each guard dropped before the next decision) are all admitted. This is
/// what a client that waits for each answer sees; a store whose release travels to its backend
/// must not let a later decision overtake it. (Not part of [`all`]: the guard needs the store
/// shared.)
pub async fn a_lease_given_back_never_counts_against_the_next_decision(
    store: std::sync::Arc<dyn LimitStore>,
) {
    let group = fresh_group("given-back");
    let checks = [Check::new("in_flight", concurrency(1, 60))];
    let give_back = |lease| {
        drop(super::LeaseGuard::new(
            std::sync::Arc::clone(&store),
            lease,
            std::time::Duration::from_secs(5),
        ));
    };
    for i in 0..20 {
        let d = decide(&*store, &group, &checks, NOW_US).await;
        assert!(d.admitted, "request {i} after the one before it ended");
        give_back(d.lease.expect("an admitted request holds a lease"));
    }
    // And a lease still held does count.
    let held = decide(&*store, &group, &checks, NOW_US).await;
    assert!(held.admitted);
    let refused = decide(&*store, &group, &checks, NOW_US).await;
    assert!(!refused.admitted, "one at a time");
    give_back(held.lease.expect("a lease"));
    assert!(decide(&*store, &group, &checks, NOW_US).await.admitted);
}

/// Runs every function of the suite.
pub async fn all<S: LimitStore + ?Sized>(store: &S) {
    burst_admits_exactly_the_limit(store).await;
    steady_rate_admits_one_per_interval(store).await;
    boundary_instants_are_exact(store).await;
    refused_spends_nothing_on_any_policy(store).await;
    retry_after_is_exact_and_rounded_up(store).await;
    several_policies_report_the_longest_wait(store).await;
    quotas_count_cost_and_reset_with_the_period(store).await;
    concurrency_leases_are_taken_released_and_lapse(store).await;
    a_refused_request_takes_no_lease(store).await;
    groups_and_keys_are_separate(store).await;
}

/// 5 per 10 s: five requests at one instant are admitted with 4..0 remaining, the sixth is
/// refused with the exact wait of one emission interval (2 s).
pub async fn burst_admits_exactly_the_limit<S: LimitStore + ?Sized>(store: &S) {
    let group = fresh_group("burst");
    let checks = [Check::new("r", rate(5, 10))];
    for left in (0..5).rev() {
        let d = decide(store, &group, &checks, NOW_US).await;
        assert!(d.admitted, "request with {left} left");
        assert_eq!(d.outcomes[0].remaining, left);
        assert_eq!(d.outcomes[0].limit, 5);
        assert_eq!(d.retry_after_us, 0);
        assert_eq!(d.lease, None, "no concurrency check, no lease");
    }
    let d = decide(store, &group, &checks, NOW_US).await;
    assert!(!d.admitted);
    assert_eq!(d.outcomes[0].remaining, 0);
    assert_eq!(d.retry_after_us, 2 * S);
    assert_eq!(d.retry_after_secs(), 2);
    assert_eq!(
        d.outcomes[0].reset_us,
        10 * S,
        "full again after the window"
    );
}

/// 4 per 2 s (one every 0.5 s): once the burst is spent, one request per interval passes and
/// one arriving a microsecond early does not.
pub async fn steady_rate_admits_one_per_interval<S: LimitStore + ?Sized>(store: &S) {
    let group = fresh_group("steady");
    let checks = [Check::new("r", rate(4, 2))];
    for _ in 0..4 {
        assert!(decide(store, &group, &checks, NOW_US).await.admitted);
    }
    let t = S / 2;
    for i in 1..=6 {
        let early = decide(store, &group, &checks, NOW_US + i * t - 1).await;
        assert!(!early.admitted, "interval {i}, 1 µs early");
        assert_eq!(early.retry_after_us, 1);
        let on_time = decide(store, &group, &checks, NOW_US + i * t).await;
        assert!(on_time.admitted, "interval {i}, on time");
        assert_eq!(on_time.outcomes[0].remaining, 0);
    }
    // After a long pause the bucket is full again, not fuller.
    let later = NOW_US + 3600 * S;
    for left in (0..4).rev() {
        let d = decide(store, &group, &checks, later).await;
        assert_eq!((d.admitted, d.outcomes[0].remaining), (true, left));
    }
    assert!(!decide(store, &group, &checks, later).await.admitted);
}

/// 3 per second does not divide evenly: T = 333_333 µs, so after a burst the next request is
/// admitted at exactly +333_333 µs and not one microsecond before.
pub async fn boundary_instants_are_exact<S: LimitStore + ?Sized>(store: &S) {
    let group = fresh_group("boundary");
    let checks = [Check::new("r", rate(3, 1))];
    for _ in 0..3 {
        assert!(decide(store, &group, &checks, NOW_US).await.admitted);
    }
    let d = decide(store, &group, &checks, NOW_US + 333_332).await;
    assert!(!d.admitted);
    assert_eq!(d.retry_after_us, 1);
    assert_eq!(
        d.retry_after_secs(),
        1,
        "a microsecond rounds up to a second"
    );
    let d = decide(store, &group, &checks, NOW_US + 333_333).await;
    assert!(d.admitted);
    assert_eq!(d.outcomes[0].reset_us, 999_999 - 333_333 + 333_333);
}

/// A request refused by one policy spends nothing on the others: the admitting rate policy's
/// remaining count and the quota's used count stay where they were, however many refusals.
pub async fn refused_spends_nothing_on_any_policy<S: LimitStore + ?Sized>(store: &S) {
    let group = fresh_group("unspent");
    let checks = [
        Check::new("tight", rate(2, 60)),
        Check::new("loose", rate(10, 60)),
        Check::new(
            "units",
            Rule::Quota {
                limit: 100,
                period: Period::Day,
                cost: 1,
            },
        ),
    ];
    for _ in 0..2 {
        assert!(decide(store, &group, &checks, NOW_US).await.admitted);
    }
    for i in 0..5 {
        let d = decide(store, &group, &checks, NOW_US + i).await;
        assert!(!d.admitted);
        assert_eq!(d.refusing().collect::<Vec<_>>(), [0]);
        assert!(d.outcomes[1].admitted && d.outcomes[2].admitted);
        assert_eq!(d.outcomes[1].remaining, 8, "the loose policy spent nothing");
        assert_eq!(d.outcomes[2].used, Some(2), "the quota spent nothing");
        assert_eq!(d.outcomes[2].remaining, 98);
        assert_eq!(d.lease, None);
    }
    // Admitted again when the tight policy allows: the others count one more, not six.
    let d = decide(store, &group, &checks, NOW_US + 30 * S).await;
    assert!(d.admitted);
    assert_eq!(d.outcomes[2].used, Some(3));
    // loose: T = 6 s; tat was NOW + 12 s, so at NOW + 30 s it is full again less this one.
    assert_eq!(d.outcomes[1].remaining, 9);
}

/// 3 per 10 s: T = 3_333_333 µs. The wait after a burst is exactly T, told as 4 seconds; a
/// client that waits the rounded-up seconds is admitted, one that waits T - 1 µs is not.
pub async fn retry_after_is_exact_and_rounded_up<S: LimitStore + ?Sized>(store: &S) {
    let group = fresh_group("retry");
    let checks = [Check::new("r", rate(3, 10))];
    for _ in 0..3 {
        assert!(decide(store, &group, &checks, NOW_US).await.admitted);
    }
    let d = decide(store, &group, &checks, NOW_US).await;
    assert_eq!(d.retry_after_us, 3_333_333);
    assert_eq!(d.retry_after_secs(), 4);
    assert!(
        !decide(store, &group, &checks, NOW_US + 3_333_332)
            .await
            .admitted
    );
    let secs = i64::try_from(d.retry_after_secs()).expect("small");
    assert!(
        decide(store, &group, &checks, NOW_US + secs * S)
            .await
            .admitted
    );
}

/// 2 per minute and 3 per hour: the wait is the longest among the refusing policies.
pub async fn several_policies_report_the_longest_wait<S: LimitStore + ?Sized>(store: &S) {
    let group = fresh_group("several");
    let checks = [
        Check::new("minute", rate(2, 60)),
        Check::new("hour", rate(3, 3600)),
    ];
    assert!(decide(store, &group, &checks, NOW_US).await.admitted);
    assert!(decide(store, &group, &checks, NOW_US).await.admitted);
    let d = decide(store, &group, &checks, NOW_US).await;
    assert!(!d.admitted);
    assert_eq!(d.refusing().collect::<Vec<_>>(), [0], "only the minute");
    assert_eq!(d.retry_after_us, 30 * S);
    assert_eq!(d.outcomes[1].remaining, 1);
    let d = decide(store, &group, &checks, NOW_US + 30 * S).await;
    assert!(d.admitted);
    assert_eq!(d.outcomes[1].remaining, 0);
    // Both refuse now: minute waits 30 s, hour (T = 1200 s, tat = +3600 s) waits 1170 s.
    let d = decide(store, &group, &checks, NOW_US + 30 * S).await;
    assert_eq!(d.refusing().collect::<Vec<_>>(), [0, 1]);
    assert_eq!(d.outcomes[0].retry_after_us, 30 * S);
    assert_eq!(d.outcomes[1].retry_after_us, 1170 * S);
    assert_eq!(d.retry_after_us, 1170 * S);
    assert_eq!(d.retry_after_secs(), 1170);
}

/// A daily quota of 10 with requests costing 4: two pass (8 used), the third is refused until
/// the next UTC midnight, which `resets_at` names; a rolling 7-day period ends 7 days after its
/// first request, however many follow.
pub async fn quotas_count_cost_and_reset_with_the_period<S: LimitStore + ?Sized>(store: &S) {
    let group = fresh_group("quota");
    let daily = [Check::new(
        "day",
        Rule::Quota {
            limit: 10,
            period: Period::Day,
            cost: 4,
        },
    )];
    let midnight = 1_900_022_400 * S; // 2030-03-18T00:00:00Z
    for used in [4, 8] {
        let d = decide(store, &group, &daily, NOW_US).await;
        assert!(d.admitted);
        assert_eq!(d.outcomes[0].used, Some(used));
        assert_eq!(d.outcomes[0].remaining, 10 - used);
        assert_eq!(d.outcomes[0].resets_at_us, Some(midnight));
    }
    let d = decide(store, &group, &daily, NOW_US + S).await;
    assert!(!d.admitted);
    assert_eq!(d.outcomes[0].used, Some(8));
    assert_eq!(d.outcomes[0].remaining, 2);
    assert_eq!(d.retry_after_us, midnight - NOW_US - S);
    assert_eq!(d.outcomes[0].reset_us, midnight - NOW_US - S);
    assert!(!decide(store, &group, &daily, midnight - 1).await.admitted);
    let d = decide(store, &group, &daily, midnight).await;
    assert!(d.admitted);
    assert_eq!(d.outcomes[0].used, Some(4));
    assert_eq!(d.outcomes[0].resets_at_us, Some(midnight + MICROS_PER_DAY));

    let monthly = [Check::new(
        "month",
        Rule::Quota {
            limit: 1,
            period: Period::Month,
            cost: 1,
        },
    )];
    let april = 1_901_232_000 * S; // 2030-04-01T00:00:00Z
    let d = decide(store, &group, &monthly, NOW_US).await;
    assert_eq!(d.outcomes[0].resets_at_us, Some(april));
    let d = decide(store, &group, &monthly, april - 1).await;
    assert_eq!((d.admitted, d.retry_after_us), (false, 1));
    assert!(decide(store, &group, &monthly, april).await.admitted);

    let rolling = [Check::new(
        "week",
        Rule::Quota {
            limit: 3,
            period: Period::RollingDays(7),
            cost: 1,
        },
    )];
    let start = NOW_US + 5 * S;
    let end = start + 7 * MICROS_PER_DAY;
    for i in 0..3 {
        let d = decide(store, &group, &rolling, start + i * MICROS_PER_DAY).await;
        assert!(d.admitted);
        assert_eq!(d.outcomes[0].resets_at_us, Some(end));
    }
    assert!(!decide(store, &group, &rolling, end - 1).await.admitted);
    let d = decide(store, &group, &rolling, end).await;
    assert!(d.admitted);
    assert_eq!(d.outcomes[0].resets_at_us, Some(end + 7 * MICROS_PER_DAY));
}

/// Two at once with 30 s leases: a third waits; releasing one frees a slot; leases never
/// released lapse after their time to live; releasing twice or late is harmless.
pub async fn concurrency_leases_are_taken_released_and_lapse<S: LimitStore + ?Sized>(store: &S) {
    let group = fresh_group("concurrency");
    let checks = [Check::new("in_flight", concurrency(2, 30))];
    let first = decide(store, &group, &checks, NOW_US).await;
    assert!(first.admitted);
    assert_eq!(first.outcomes[0].remaining, 1);
    let first = first.lease.expect("a lease");
    assert_eq!(first.keys, ["in_flight"]);
    assert_eq!(first.group, group);
    let second = decide(store, &group, &checks, NOW_US + S).await;
    assert_eq!(second.outcomes[0].remaining, 0);
    let second = second.lease.expect("a lease");
    assert_ne!(first.id, second.id, "each decision has its own lease");
    let third = decide(store, &group, &checks, NOW_US + 2 * S).await;
    assert!(!third.admitted);
    assert_eq!(third.lease, None);
    assert_eq!(
        third.retry_after_us, S,
        "a slot usually frees within a second"
    );
    assert_eq!(third.retry_after_secs(), 1);

    store.release(first.clone()).await.expect("released");
    store.release(first).await.expect("released twice is fine");
    let third = decide(store, &group, &checks, NOW_US + 2 * S).await;
    assert!(third.admitted);
    let third = third.lease.expect("a lease");
    // The second lease lapses at +31 s, the third at +32 s; until then both hold.
    let d = decide(store, &group, &checks, NOW_US + 31 * S - S / 4).await;
    assert!(!d.admitted);
    assert_eq!(
        d.retry_after_us,
        S / 4,
        "the next lapse is sooner than a second"
    );
    let d = decide(store, &group, &checks, NOW_US + 31 * S).await;
    assert!(d.admitted, "the second lease lapsed");
    store
        .release(second)
        .await
        .expect("a lapsed lease releases");
    store.release(third).await.expect("released");
    let d = decide(store, &group, &checks, NOW_US + 31 * S).await;
    assert!(d.admitted);
    assert_eq!(d.outcomes[0].remaining, 0, "one held from +31 s, this one");
}

/// A request refused by its rate policy takes no concurrency slot, and one refused by its
/// concurrency policy spends no rate.
pub async fn a_refused_request_takes_no_lease<S: LimitStore + ?Sized>(store: &S) {
    let group = fresh_group("nolease");
    let checks = [
        Check::new("rate", rate(1, 60)),
        Check::new("in_flight", concurrency(1, 60)),
    ];
    let d = decide(store, &group, &checks, NOW_US).await;
    let lease = d.lease.expect("a lease");
    store.release(lease).await.expect("released");
    let d = decide(store, &group, &checks, NOW_US).await;
    assert!(!d.admitted);
    assert_eq!(d.lease, None);
    assert_eq!(d.outcomes[1].remaining, 1, "the slot is free");

    let other = [
        Check::new("rate", rate(10, 60)),
        Check::new("in_flight", concurrency(1, 60)),
    ];
    let group = fresh_group("nolease2");
    let held = decide(store, &group, &other, NOW_US).await;
    assert!(held.admitted);
    for _ in 0..3 {
        let d = decide(store, &group, &other, NOW_US).await;
        assert_eq!(d.refusing().collect::<Vec<_>>(), [1]);
        assert_eq!(d.outcomes[0].remaining, 9, "no rate spent");
    }
}

/// Buckets are per group and per key: spending one does not touch another.
pub async fn groups_and_keys_are_separate<S: LimitStore + ?Sized>(store: &S) {
    let a = fresh_group("a");
    let b = fresh_group("b");
    let one = [Check::new("k1", rate(1, 60))];
    let two = [Check::new("k2", rate(1, 60))];
    assert!(decide(store, &a, &one, NOW_US).await.admitted);
    assert!(!decide(store, &a, &one, NOW_US).await.admitted);
    assert!(decide(store, &a, &two, NOW_US).await.admitted);
    assert!(decide(store, &b, &one, NOW_US).await.admitted);
}

/// A store that is down: every decision fails as unavailable at once, or, when it hangs,
/// never answers. For tests of what a layer or a wrapping store does when its store fails.
#[derive(Debug, Clone, Copy)]
pub struct FailingStore {
    hangs: bool,
}

impl FailingStore {
    /// Fails every decision at once (`StoreError::is_unavailable`).
    pub fn down() -> Self {
        FailingStore { hangs: false }
    }

    /// Never answers a decision.
    pub fn hanging() -> Self {
        FailingStore { hangs: true }
    }
}

impl LimitStore for FailingStore {
    fn decide<'a>(
        &'a self,
        _group: &'a str,
        _checks: &'a [Check],
        _now_us: Option<i64>,
    ) -> super::StoreFuture<'a, Decision> {
        if self.hangs {
            Box::pin(std::future::pending())
        } else {
            Box::pin(std::future::ready(Err(super::StoreError::unavailable(
                std::io::Error::other("the limit store is down"),
            ))))
        }
    }

    fn release(&self, _lease: super::Lease) -> super::StoreFuture<'_, ()> {
        Box::pin(std::future::ready(Ok(())))
    }
}
