//! Clocks: the system's, and a manual one for tests of anything that depends on time.
//!
//! Stores and caches take an `Arc<dyn Clock>` so that expiry, time-to-live and rate windows
//! can be tested without sleeping. A clock gives two kinds of time:
//!
//! - **wall time**, since the Unix epoch: [`Clock::now`] in whole seconds (what expiry dates
//!   are compared with) and [`Clock::now_unix_nanos`] / [`Clock::now_millis`] when a second is
//!   too coarse;
//! - **monotonic time**, from a fixed origin: [`Clock::monotonic_nanos`] /
//!   [`Clock::monotonic`], for measuring intervals (rate windows, token buckets) in a way that
//!   a wall-clock correction cannot disturb.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const NANOS_PER_SECOND: i64 = 1_000_000_000;
const NANOS_PER_MILLI: i64 = 1_000_000;

/// A source of wall time and monotonic time.
///
/// # Monotonic readings never go back
///
/// For [`SystemClock`] and [`ManualClock`], each [`Clock::monotonic_nanos`] reading is at least
/// the previous one, even when the wall time is set backwards. A closure is a clock too (it
/// returns whole Unix seconds, and every reading derives from them): its monotonic reading is
/// only as monotonic as the closure.
///
/// ```
/// use faultline::clock::{Clock, SystemClock};
/// let first = SystemClock.monotonic_nanos();
/// let second = SystemClock.monotonic_nanos();
/// assert!(second >= first);
/// ```
pub trait Clock: Send + Sync + 'static {
    /// Nanoseconds since 1970-01-01T00:00:00Z (negative before it), saturating at the ends of
    /// `i64` (years 1677 and 2262).
    fn now_unix_nanos(&self) -> i64;

    /// Nanoseconds since the clock's fixed origin (for [`SystemClock`], the first monotonic
    /// reading in the process). Only differences between readings mean anything.
    fn monotonic_nanos(&self) -> u64;

    /// Whole seconds since 1970-01-01T00:00:00Z, rounded down.
    fn now(&self) -> i64 {
        self.now_unix_nanos().div_euclid(NANOS_PER_SECOND)
    }

    /// Whole milliseconds since 1970-01-01T00:00:00Z, rounded down.
    fn now_millis(&self) -> i64 {
        self.now_unix_nanos().div_euclid(NANOS_PER_MILLI)
    }

    /// [`Clock::monotonic_nanos`] as a [`Duration`] since the clock's origin.
    fn monotonic(&self) -> Duration {
        Duration::from_nanos(self.monotonic_nanos())
    }
}

/// The system's clocks: [`SystemTime`] for wall time, [`Instant`] for monotonic time.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

/// The origin of the system clock's monotonic readings, fixed at the first one.
fn monotonic_origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

impl Clock for SystemClock {
    fn now_unix_nanos(&self) -> i64 {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(after) => i64::try_from(after.as_nanos()).unwrap_or(i64::MAX),
            Err(before) => i64::try_from(before.duration().as_nanos()).map_or(i64::MIN, |n| -n),
        }
    }

    fn monotonic_nanos(&self) -> u64 {
        let origin = monotonic_origin();
        u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// A closure returning whole Unix seconds is a clock; finer readings are those seconds scaled.
impl<F> Clock for F
where
    F: Fn() -> i64 + Send + Sync + 'static,
{
    fn now_unix_nanos(&self) -> i64 {
        self().saturating_mul(NANOS_PER_SECOND)
    }

    fn monotonic_nanos(&self) -> u64 {
        u64::try_from(self().max(0))
            .unwrap_or(0)
            .saturating_mul(NANOS_PER_SECOND.unsigned_abs())
    }

    fn now(&self) -> i64 {
        self()
    }
}

/// A clock that only moves when told to; clones share the same time.
///
/// # Time moves only when told
///
/// No reading changes until [`ManualClock::advance`], [`ManualClock::advance_secs`] or
/// [`ManualClock::set`] is called, and every clone sees the change.
///
/// ```
/// use std::time::Duration;
/// use faultline::clock::{Clock, ManualClock};
/// let clock = ManualClock::at(1_000);
/// let seen_by_store = clock.clone();
/// assert_eq!((clock.now(), clock.now_millis()), (1_000, 1_000_000));
/// clock.advance(Duration::from_millis(1_500));
/// assert_eq!(seen_by_store.now(), 1_001);
/// assert_eq!(seen_by_store.now_millis(), 1_001_500);
/// assert_eq!(seen_by_store.monotonic(), Duration::from_millis(1_500));
/// clock.advance_secs(30);
/// assert_eq!(seen_by_store.now(), 1_031);
/// ```
///
/// # Setting the wall time does not move monotonic time
///
/// [`ManualClock::set`] changes the wall time only, like an administrator correcting the
/// system clock, so monotonic readings never go back.
///
/// ```
/// use faultline::clock::{Clock, ManualClock};
/// let clock = ManualClock::at(1_000);
/// clock.advance_secs(5);
/// let before = clock.monotonic_nanos();
/// clock.set(10);
/// assert_eq!(clock.now(), 10);
/// assert_eq!(clock.monotonic_nanos(), before);
/// ```
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<ManualTime>);

#[derive(Debug, Default)]
struct ManualTime {
    unix_nanos: AtomicI64,
    monotonic_nanos: AtomicU64,
}

impl ManualClock {
    /// A clock showing `unix_seconds`, its monotonic reading at zero.
    pub fn at(unix_seconds: i64) -> Self {
        Self::at_nanos(unix_seconds.saturating_mul(NANOS_PER_SECOND))
    }

    /// A clock showing `unix_nanos`, its monotonic reading at zero.
    pub fn at_nanos(unix_nanos: i64) -> Self {
        ManualClock(Arc::new(ManualTime {
            unix_nanos: AtomicI64::new(unix_nanos),
            monotonic_nanos: AtomicU64::new(0),
        }))
    }

    /// Moves wall time and monotonic time forward by `elapsed` (saturating).
    pub fn advance(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let signed = i64::try_from(nanos).unwrap_or(i64::MAX);
        // fetch_update never fails with a closure that always returns Some.
        let _ = self
            .0
            .unix_nanos
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                Some(n.saturating_add(signed))
            });
        let _ = self
            .0
            .monotonic_nanos
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                Some(n.saturating_add(nanos))
            });
    }

    /// Moves the clock forward by whole `seconds`; a negative count does nothing.
    pub fn advance_secs(&self, seconds: i64) {
        self.advance(Duration::from_secs(u64::try_from(seconds).unwrap_or(0)));
    }

    /// Sets the wall time to `unix_seconds`; monotonic time is unchanged.
    pub fn set(&self, unix_seconds: i64) {
        self.set_nanos(unix_seconds.saturating_mul(NANOS_PER_SECOND));
    }

    /// Sets the wall time to `unix_nanos`; monotonic time is unchanged.
    pub fn set_nanos(&self, unix_nanos: i64) {
        self.0.unix_nanos.store(unix_nanos, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_unix_nanos(&self) -> i64 {
        self.0.unix_nanos.load(Ordering::SeqCst)
    }

    fn monotonic_nanos(&self) -> u64 {
        self.0.monotonic_nanos.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closures_are_clocks_and_the_system_clock_is_past_2020() {
        let fixed = || 42_i64;
        assert_eq!(fixed.now(), 42);
        assert_eq!(fixed.now_millis(), 42_000);
        assert_eq!(fixed.monotonic(), Duration::from_secs(42));
        assert!(SystemClock.now() > 1_577_836_800);
        assert!(SystemClock.now_millis() > 1_577_836_800_000);
    }

    #[test]
    fn manual_time_is_exact_and_rounds_down_before_the_epoch() {
        let clock = ManualClock::at_nanos(-1);
        assert_eq!((clock.now(), clock.now_millis()), (-1, -1));
        clock.advance(Duration::from_nanos(1));
        assert_eq!((clock.now(), clock.now_unix_nanos()), (0, 0));
        clock.advance_secs(-5);
        assert_eq!(clock.now_unix_nanos(), 0, "negative advances are ignored");
        assert_eq!(clock.monotonic_nanos(), 1);
    }

    #[test]
    fn advancing_saturates_instead_of_wrapping() {
        let clock = ManualClock::at_nanos(i64::MAX - 1);
        clock.advance(Duration::MAX);
        assert_eq!(clock.now_unix_nanos(), i64::MAX);
        assert_eq!(clock.monotonic_nanos(), u64::MAX);
    }
}
