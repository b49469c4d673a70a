//! [`CounterClock`]: the system's wall time, read through the CPU's counter, for the clocks
//! read on every request (the key cache's, the in-memory limit store's).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use faultline::clock::{Clock, SystemClock};

/// How often (nanoseconds of the counter) a [`CounterClock`] compares itself with the system
/// clock again.
const REANCHOR_NS: u64 = 1_000_000_000;

/// The system clock's wall time, read in a few nanoseconds from the CPU's time-stamp counter
/// (through `quanta`, the clock governor uses) instead of a `clock_gettime` call: the default
/// clock of the in-memory limit store and of the key verifier, which each read the time once
/// per request. (A `clock_gettime` of the wall time measured 40 to 70 ns on a virtual machine
/// where this clock reads in a few.)
///
/// # Never far from the system clock
///
/// The counter gives the time elapsed since the clock was anchored to
/// [`SystemClock::now_unix_nanos`]; once a second of counter time it is anchored again, so
/// the drift of the counter's calibration never builds up past what one second holds (parts
/// per million), and a step of the system clock (NTP) is followed within a second. Where the
/// CPU has no usable counter, `quanta` reads the monotonic clock instead.
///
/// ```
/// use faultline::clock::{Clock, SystemClock};
/// use faultline_axum::clock::CounterClock;
/// let clock = CounterClock::new();
/// let apart = (clock.now_unix_nanos() - SystemClock.now_unix_nanos()).abs();
/// assert!(apart < 50_000_000, "{apart} ns apart");
/// ```
#[derive(Debug)]
pub struct CounterClock {
    counter: quanta::Clock,
    /// The counter's raw reading at the origin.
    origin: u64,
    /// Unix nanoseconds at `origin`, as the last anchoring measured them.
    base_ns: AtomicI64,
    /// Counter nanoseconds since `origin` of the next anchoring.
    next_anchor_ns: AtomicU64,
}

impl Default for CounterClock {
    fn default() -> Self {
        Self::new()
    }
}

impl CounterClock {
    /// A clock anchored to the system clock now (the first one in a process calibrates the
    /// counter, which takes a few milliseconds).
    pub fn new() -> Self {
        let counter = quanta::Clock::new();
        let origin = counter.raw();
        let clock = CounterClock {
            counter,
            origin,
            base_ns: AtomicI64::new(0),
            next_anchor_ns: AtomicU64::new(0),
        };
        clock.anchor(0);
        clock
    }

    /// Counter nanoseconds since the origin.
    fn elapsed_ns(&self) -> u64 {
        self.counter.delta_as_nanos(self.origin, self.counter.raw())
    }

    /// Measures the system clock against the counter, `elapsed` counter nanoseconds after the
    /// origin.
    fn anchor(&self, elapsed: u64) {
        let system = SystemClock.now_unix_nanos();
        let elapsed_i = i64::try_from(elapsed).unwrap_or(i64::MAX);
        self.base_ns
            .store(system.saturating_sub(elapsed_i), Ordering::Relaxed);
        self.next_anchor_ns
            .store(elapsed.saturating_add(REANCHOR_NS), Ordering::Relaxed);
    }
}

impl Clock for CounterClock {
    fn now_unix_nanos(&self) -> i64 {
        let elapsed = self.elapsed_ns();
        if elapsed >= self.next_anchor_ns.load(Ordering::Relaxed) {
            self.anchor(elapsed);
        }
        let elapsed = i64::try_from(elapsed).unwrap_or(i64::MAX);
        self.base_ns.load(Ordering::Relaxed).saturating_add(elapsed)
    }

    fn monotonic_nanos(&self) -> u64 {
        self.elapsed_ns()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_reads_the_system_time_and_moves_forward() {
        let clock = CounterClock::new();
        let before = SystemClock.now_unix_nanos();
        let read = clock.now_unix_nanos();
        let after = SystemClock.now_unix_nanos();
        // Within the calibration error of a fresh anchor (generous: the machine is shared).
        assert!(read >= before - 20_000_000 && read <= after + 20_000_000);
        let first = clock.monotonic_nanos();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(clock.monotonic_nanos() >= first + 1_000_000);
    }

    #[test]
    fn it_anchors_again_once_a_second() {
        let clock = CounterClock::new();
        // Pretend the anchor is stale and wrong by an hour: the next reading re-anchors.
        clock
            .base_ns
            .fetch_sub(3_600_000_000_000, Ordering::Relaxed);
        clock.next_anchor_ns.store(0, Ordering::Relaxed);
        let apart = (clock.now_unix_nanos() - SystemClock.now_unix_nanos()).abs();
        assert!(apart < 20_000_000, "{apart} ns apart after re-anchoring");
    }
}
