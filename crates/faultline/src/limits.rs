//! Rate limits, quotas and concurrency limits without I/O: the decision model every store
//! implements, and the wire formats of the headers that report it.
//!
//! Every store (in memory in `faultline-axum`, Redis in `faultline-redis`) must give exactly
//! the answers of the pure functions here, so the formulas are spelt out below. All times are
//! **integer microseconds since the Unix epoch** (`i64`): they fit in the 2^53 integers a
//! double holds exactly (Lua's numbers in Redis), which nanoseconds do not.
//!
//! # Rate policies: GCRA
//!
//! A rate rule admits `limit` requests per `window_us`. With integer division:
//!
//! - emission interval `T = max(1, window_us / limit)` (rounded down);
//! - burst tolerance `tau = limit * T`;
//! - the state is the theoretical arrival time `tat` (absent means `tat = now`).
//!
//! For a request at `now`: `tat0 = max(tat, now)`, `new_tat = tat0 + T`. It is admitted when
//! `new_tat - now <= tau`; an empty bucket therefore admits exactly `limit` requests at one
//! instant. Then
//!
//! - admitted: `remaining = (tau - (new_tat - now)) / T` (rounded down),
//!   `reset_us = new_tat - now`, `retry_after_us = 0`, and `new_tat` is stored (on commit);
//! - refused: `remaining = 0`, `reset_us = tat0 - now`,
//!   `retry_after_us = new_tat - now - tau` (the exact wait: at `now + retry_after_us` the same
//!   request is admitted), nothing is stored.
//!
//! With `limit = 0`, `T = window_us` and `tau = 0`: every request is refused.
//!
//! # Quota policies: counters over periods
//!
//! A quota rule admits `limit` units per [`Period`]; each request spends `cost` units. The
//! state is `(resets_at_us, used)`; a state whose `resets_at_us <= now` counts as absent. An
//! absent state starts a period: `used = 0`, `resets_at_us = period.end_after(now)`
//! ([`Period::end_after`]: the next UTC midnight, the first instant of the next UTC month, or
//! `now + days * 86_400_000_000` for a rolling period that starts with its first request).
//!
//! - admitted when `used + cost <= limit`: `used += cost`, `remaining = limit - used`;
//! - refused: `remaining = limit - used` (saturating), `retry_after_us = resets_at_us - now`;
//! - both: `reset_us = resets_at_us - now`, `resets_at_us` and `used` are reported.
//!
//! # Concurrency policies: leases
//!
//! A concurrency rule admits `limit` requests in flight. The state is a set of leases
//! `(id, expires_at_us)`; a lease with `expires_at_us <= now` is gone (a crashed process's
//! leases expire after `lease_ttl_us`). With `active` the live leases:
//!
//! - admitted when `active + 1 <= limit`: the lease `(id, now + lease_ttl_us)` is added,
//!   `remaining = limit - active - 1`;
//! - refused: `remaining = 0`, `retry_after_us = min(CONCURRENCY_RETRY_US, earliest - now)`
//!   where `earliest` is the soonest lease expiry ([`CONCURRENCY_RETRY_US`] alone when there is
//!   none): a slot usually frees when a request ends, which no store can foresee;
//! - both: `reset_us = 0`.
//!
//! Releasing removes the lease by id (a lease already gone changes nothing).
//!
//! # Several policies: one decision
//!
//! [`decide`] evaluates every check against the state as it is, admits only if every check
//! admits, and only then returns the new states to store. A refused request changes no state,
//! on any policy, and the checks that would have admitted it report their state as it stays
//! (the numbers before this request): a rate check `remaining + 1` and `reset_us - T`, a quota
//! check `remaining + cost` and `used - cost`, a concurrency check `remaining + 1`. The decision's wait is the **maximum** `retry_after_us` over the refusing
//! checks, and `Retry-After` is that wait rounded **up** to whole seconds ([`ceil_secs`]), so a
//! client that waits it is never early.
//!
//! ```
//! use faultline::limits::{decide, Rule, MICROS_PER_SECOND as S};
//! let minute = Rule::Rate { limit: 2, window_us: 60 * S };
//! let hour = Rule::Rate { limit: 3, window_us: 3600 * S };
//! let mut states = [None, None];
//! let mut admitted = 0;
//! for _ in 0..3 {
//!     let d = decide(0, &[(&minute, states[0].as_ref()), (&hour, states[1].as_ref())], "l");
//!     if let Some(new) = d.commit {
//!         admitted += 1;
//!         states = [Some(new[0].clone()), Some(new[1].clone())];
//!     } else {
//!         // Refused by the minute policy: the hour policy spent nothing.
//!         assert_eq!(d.outcomes[1].remaining, 1);
//!         assert_eq!(d.retry_after_us, 30 * S);
//!     }
//! }
//! assert_eq!(admitted, 2);
//! ```

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

use serde::Deserialize;
use toml::Spanned;

use crate::catalog::{Catalog, ErrorSpec, Problem};
use crate::situation::Situation;

/// Microseconds in a second.
pub const MICROS_PER_SECOND: i64 = 1_000_000;
/// Microseconds in a day.
pub const MICROS_PER_DAY: i64 = 86_400 * MICROS_PER_SECOND;
/// The wait a refused concurrency check suggests at most: one second.
pub const CONCURRENCY_RETRY_US: i64 = MICROS_PER_SECOND;

/// Whole seconds of a wait in microseconds, rounded **up** (0 and negatives give 0).
///
/// # Never early
///
/// `ceil_secs(us) * 1_000_000 >= us` for every `us`, and it is the smallest such count.
///
/// ```
/// use faultline::limits::ceil_secs;
/// assert_eq!(ceil_secs(0), 0);
/// assert_eq!(ceil_secs(1), 1);
/// assert_eq!(ceil_secs(1_000_000), 1);
/// assert_eq!(ceil_secs(1_000_001), 2);
/// ```
pub fn ceil_secs(us: i64) -> u64 {
    if us <= 0 {
        return 0;
    }
    let secs = us / MICROS_PER_SECOND + i64::from(us % MICROS_PER_SECOND != 0);
    secs.unsigned_abs()
}

/// The length of a quota's counting period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Period {
    /// A calendar day in UTC: resets at midnight UTC.
    Day,
    /// A calendar month in UTC: resets at 00:00 UTC on the first of the next month.
    Month,
    /// A rolling period of this many days, starting with the first request counted in it.
    RollingDays(u32),
}

impl Period {
    /// The end of the period that a request at `now_us` starts or falls in, when no period is
    /// running (see the module docs).
    ///
    /// # Calendar periods end on UTC boundaries
    ///
    /// ```
    /// use faultline::limits::{Period, MICROS_PER_SECOND as S};
    /// // 2026-01-31T13:00:00Z
    /// let now = 1_769_864_400 * S;
    /// assert_eq!(Period::Day.end_after(now), 1_769_904_000 * S); // 2026-02-01T00:00:00Z
    /// assert_eq!(Period::Month.end_after(now), 1_769_904_000 * S);
    /// assert_eq!(Period::RollingDays(2).end_after(now), now + 2 * 86_400 * S);
    /// ```
    pub fn end_after(self, now_us: i64) -> i64 {
        match self {
            Period::Day => (now_us.div_euclid(MICROS_PER_DAY) + 1) * MICROS_PER_DAY,
            Period::Month => {
                let (year, month, _) = civil_from_days(now_us.div_euclid(MICROS_PER_DAY));
                let (year, month) = if month == 12 {
                    (year + 1, 1)
                } else {
                    (year, month + 1)
                };
                days_from_civil(year, month, 1) * MICROS_PER_DAY
            }
            Period::RollingDays(days) => {
                now_us.saturating_add(i64::from(days).saturating_mul(MICROS_PER_DAY))
            }
        }
    }

    /// The period's name in the catalog: `day`, `month` or `Nd` (e.g. `30d`).
    pub fn name(self) -> String {
        match self {
            Period::Day => "day".to_owned(),
            Period::Month => "month".to_owned(),
            Period::RollingDays(days) => format!("{days}d"),
        }
    }

    /// Parses [`Period::name`]: `day`, `month`, or `Nd` with `N` from 1 to 3660.
    pub fn parse(text: &str) -> Option<Period> {
        match text {
            "day" => Some(Period::Day),
            "month" => Some(Period::Month),
            _ => {
                let days: u32 = text.strip_suffix('d')?.parse().ok()?;
                (1..=3660)
                    .contains(&days)
                    .then_some(Period::RollingDays(days))
            }
        }
    }

    /// A typical length in seconds (a month counts 30 days), for the `w` of `RateLimit-Policy`.
    pub fn typical_secs(self) -> u64 {
        match self {
            Period::Day => 86_400,
            Period::Month => 30 * 86_400,
            Period::RollingDays(days) => u64::from(days) * 86_400,
        }
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year - era * 400;
    let month = i64::from(month);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian date `(year, month, day)` of a count of days since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // Both are in range by construction (1..=31 and 1..=12).
    (year, month as u32, day as u32)
}

/// A point in time as ISO-8601 in UTC with an explicit offset, to the second (rounded down):
/// `2026-02-01T00:00:00+00:00`, the form quota details carry.
///
/// ```
/// use faultline::limits::{iso8601, MICROS_PER_SECOND as S};
/// assert_eq!(iso8601(1_769_904_000 * S), "2026-02-01T00:00:00+00:00");
/// ```
pub fn iso8601(unix_us: i64) -> String {
    let secs = unix_us.div_euclid(MICROS_PER_SECOND);
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    let of_day = secs.rem_euclid(86_400);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}+00:00",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

/// What a check limits, with its numbers: the input of [`evaluate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Rule {
    /// At most `limit` requests per `window_us`, by GCRA.
    Rate {
        /// Requests per window.
        limit: u64,
        /// The window in microseconds.
        window_us: i64,
    },
    /// At most `limit` requests in flight; a lease not released lapses after `lease_ttl_us`.
    Concurrency {
        /// Requests in flight at once.
        limit: u64,
        /// How long a lease lives unless released.
        lease_ttl_us: i64,
    },
    /// At most `limit` units per period, each request spending `cost`.
    Quota {
        /// Units per period.
        limit: u64,
        /// The counting period.
        period: Period,
        /// Units this request spends.
        cost: u64,
    },
}

impl Rule {
    /// The rule's limit (requests per window, in flight, or units per period).
    pub fn limit(&self) -> u64 {
        match *self {
            Rule::Rate { limit, .. }
            | Rule::Concurrency { limit, .. }
            | Rule::Quota { limit, .. } => limit,
        }
    }

    /// GCRA's `(T, tau)` of a rate rule (see the module docs); `None` for other rules.
    #[inline]
    pub fn gcra(&self) -> Option<(i64, i64)> {
        let Rule::Rate { limit, window_us } = *self else {
            return None;
        };
        let window_us = window_us.max(1);
        if limit == 0 {
            return Some((window_us, 0));
        }
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let t = (window_us / limit).max(1);
        Some((t, t.saturating_mul(limit)))
    }
}

/// What a store keeps for one bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BucketState {
    /// A rate bucket: the theoretical arrival time.
    Rate {
        /// Unix microseconds.
        tat_us: i64,
    },
    /// A quota counter for the running period.
    Quota {
        /// When the period ends, unix microseconds.
        resets_at_us: i64,
        /// Units spent in it.
        used: u64,
    },
    /// The leases of a concurrency bucket.
    Concurrency {
        /// `(lease id, expires at in unix microseconds)`.
        leases: Vec<(String, i64)>,
    },
}

impl BucketState {
    /// From when the state means the same as no state at all (a store may forget it then):
    /// the `tat` of a rate bucket, the end of a quota period, the latest lease expiry.
    pub fn idle_at_us(&self) -> i64 {
        match self {
            BucketState::Rate { tat_us } => *tat_us,
            BucketState::Quota { resets_at_us, .. } => *resets_at_us,
            BucketState::Concurrency { leases } => {
                leases.iter().map(|(_, at)| *at).max().unwrap_or(i64::MIN)
            }
        }
    }

    /// The state without the lease `lease_id` (other states are returned as they are).
    #[must_use]
    pub fn release(mut self, lease_id: &str) -> BucketState {
        if let BucketState::Concurrency { leases } = &mut self {
            leases.retain(|(id, _)| id != lease_id);
        }
        self
    }
}

/// The answer of one check: its verdict and the numbers the headers and details report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Outcome {
    /// Whether this check alone admits the request.
    pub admitted: bool,
    /// The rule's limit.
    pub limit: u64,
    /// What is left once the decision is stored (after this request when the whole decision
    /// admits it, before it otherwise).
    pub remaining: u64,
    /// Microseconds until the bucket is full again (rate) or the period ends (quota); 0 for
    /// concurrency.
    pub reset_us: i64,
    /// Microseconds until this check would admit the request; 0 when it admits.
    pub retry_after_us: i64,
    /// Quotas: when the period ends, unix microseconds.
    pub resets_at_us: Option<i64>,
    /// Quotas: units used once the decision is stored.
    pub used: Option<u64>,
}

impl Outcome {
    /// An outcome from its parts (for stores that compute it elsewhere, e.g. in a script).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        admitted: bool,
        limit: u64,
        remaining: u64,
        reset_us: i64,
        retry_after_us: i64,
        resets_at_us: Option<i64>,
        used: Option<u64>,
    ) -> Self {
        Outcome {
            admitted,
            limit,
            remaining,
            reset_us,
            retry_after_us,
            resets_at_us,
            used,
        }
    }
}

/// Evaluates one check at `now_us` against its stored state (`None`: nothing stored, or a
/// state of another kind). Returns the outcome and the state to store if the whole decision
/// admits the request; the formulas are in the module docs. `lease_id` names the lease a
/// concurrency check takes.
#[inline(always)]
pub fn evaluate(
    rule: &Rule,
    state: Option<&BucketState>,
    now_us: i64,
    lease_id: &str,
) -> (Outcome, BucketState) {
    match *rule {
        Rule::Rate { limit, .. } => {
            let (t, tau) = rule.gcra().unwrap_or((1, 0));
            let tat = match state {
                Some(BucketState::Rate { tat_us }) => (*tat_us).max(now_us),
                _ => now_us,
            };
            let new_tat = tat.saturating_add(t);
            let ahead = new_tat - now_us;
            if ahead <= tau {
                let remaining = ((tau - ahead) / t).unsigned_abs();
                let outcome = Outcome::new(true, limit, remaining, ahead, 0, None, None);
                (outcome, BucketState::Rate { tat_us: new_tat })
            } else {
                let outcome = Outcome::new(false, limit, 0, tat - now_us, ahead - tau, None, None);
                (outcome, BucketState::Rate { tat_us: tat })
            }
        }
        Rule::Quota {
            limit,
            period,
            cost,
        } => {
            let (resets_at, used) = match state {
                Some(BucketState::Quota { resets_at_us, used }) if *resets_at_us > now_us => {
                    (*resets_at_us, *used)
                }
                _ => (period.end_after(now_us), 0),
            };
            let reset = resets_at - now_us;
            let after = used.saturating_add(cost);
            if after <= limit {
                let outcome = Outcome::new(
                    true,
                    limit,
                    limit - after,
                    reset,
                    0,
                    Some(resets_at),
                    Some(after),
                );
                let state = BucketState::Quota {
                    resets_at_us: resets_at,
                    used: after,
                };
                (outcome, state)
            } else {
                let outcome = Outcome::new(
                    false,
                    limit,
                    limit.saturating_sub(used),
                    reset,
                    reset,
                    Some(resets_at),
                    Some(used),
                );
                let state = BucketState::Quota {
                    resets_at_us: resets_at,
                    used,
                };
                (outcome, state)
            }
        }
        Rule::Concurrency {
            limit,
            lease_ttl_us,
        } => {
            let mut leases: Vec<(String, i64)> = match state {
                Some(BucketState::Concurrency { leases }) => leases
                    .iter()
                    .filter(|(_, at)| *at > now_us)
                    .cloned()
                    .collect(),
                _ => Vec::new(),
            };
            let active = leases.len() as u64;
            if active < limit {
                leases.push((lease_id.to_owned(), now_us.saturating_add(lease_ttl_us)));
                let outcome = Outcome::new(true, limit, limit - active - 1, 0, 0, None, None);
                (outcome, BucketState::Concurrency { leases })
            } else {
                let earliest = leases.iter().map(|(_, at)| *at).min();
                let wait = earliest.map_or(CONCURRENCY_RETRY_US, |at| {
                    (at - now_us).min(CONCURRENCY_RETRY_US)
                });
                let outcome = Outcome::new(false, limit, 0, 0, wait, None, None);
                (outcome, BucketState::Concurrency { leases })
            }
        }
    }
}

/// The answer to a request checked against several policies at once.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Verdict {
    /// Whether every check admits the request.
    pub admitted: bool,
    /// One outcome per check, in the checks' order.
    pub outcomes: Vec<Outcome>,
    /// The exact wait: the maximum `retry_after_us` over the refusing checks (0 if admitted).
    pub retry_after_us: i64,
    /// The states to store, one per check, when admitted; `None` when refused (nothing
    /// changes).
    pub commit: Option<Vec<BucketState>>,
}

impl Verdict {
    /// `Retry-After` in whole seconds, rounded up (0 when admitted).
    pub fn retry_after_secs(&self) -> u64 {
        ceil_secs(self.retry_after_us)
    }
}

/// The multi-policy rule: evaluates every `(rule, state)` at `now_us`, admits only if all
/// admit, and returns the states to store only then (see the module docs).
///
/// # A refused request spends nothing
///
/// When one check refuses, [`Verdict::commit`] is `None` and every outcome reports the state
/// as it was: the other checks' `remaining` counts did not move.
pub fn decide(now_us: i64, checks: &[(&Rule, Option<&BucketState>)], lease_id: &str) -> Verdict {
    let mut outcomes = Vec::with_capacity(checks.len());
    let mut states = Vec::with_capacity(checks.len());
    for (rule, state) in checks {
        let (outcome, new) = evaluate(rule, *state, now_us, lease_id);
        outcomes.push(outcome);
        states.push(new);
    }
    let admitted = outcomes.iter().all(|o| o.admitted);
    let retry_after_us = outcomes
        .iter()
        .filter(|o| !o.admitted)
        .map(|o| o.retry_after_us)
        .max()
        .unwrap_or(0);
    if !admitted {
        // Report the state as it stays: nothing was spent on the checks that admitted.
        for (outcome, (rule, state)) in outcomes.iter_mut().zip(checks) {
            if outcome.admitted {
                *outcome = unspent(rule, *state, now_us, *outcome);
            }
        }
    }
    Verdict {
        admitted,
        outcomes,
        retry_after_us,
        commit: admitted.then_some(states),
    }
}

/// The outcome of a check that admitted, reported as if nothing was spent (the decision was
/// refused by another check).
fn unspent(rule: &Rule, state: Option<&BucketState>, now_us: i64, spent: Outcome) -> Outcome {
    match *rule {
        Rule::Rate { .. } => {
            let (t, _) = rule.gcra().unwrap_or((1, 0));
            // One emission interval less ahead: one more remaining, reset one T sooner.
            let reset = (spent.reset_us - t).max(0);
            let tat = match state {
                Some(BucketState::Rate { tat_us }) => (*tat_us).max(now_us),
                _ => now_us,
            };
            debug_assert_eq!(reset, tat - now_us);
            Outcome {
                remaining: spent.remaining + 1,
                reset_us: reset,
                ..spent
            }
        }
        Rule::Quota { cost, .. } => Outcome {
            remaining: spent.remaining + cost,
            used: spent.used.map(|u| u - cost),
            ..spent
        },
        Rule::Concurrency { .. } => Outcome {
            remaining: spent.remaining + 1,
            ..spent
        },
    }
}

// ---- the catalog's policies ------------------------------------------------------------------

/// What a policy counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Counts {
    /// Requests (per window for a rate policy, per period for a quota).
    Requests,
    /// Requests in flight at once.
    Concurrent,
    /// A unit of a quota other than requests (`messages`, `tokens`, …).
    Units(String),
}

impl Counts {
    /// The name in the catalog.
    pub fn as_str(&self) -> &str {
        match self {
            Counts::Requests => "requests",
            Counts::Concurrent => "concurrent",
            Counts::Units(unit) => unit,
        }
    }
}

/// Whose requests share a policy's bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Per {
    /// One bucket per API key.
    Key,
    /// One bucket per organisation, shared by all its keys.
    Org,
    /// One bucket per organisation and route group.
    RouteGroup,
    /// A bucket per value of a key function the application registers under the policy's
    /// name.
    Custom,
}

impl Per {
    /// The name in the catalog.
    pub fn as_str(self) -> &'static str {
        match self {
            Per::Key => "key",
            Per::Org => "org",
            Per::RouteGroup => "route_group",
            Per::Custom => "custom",
        }
    }
}

/// What kind of limit a policy is, with its time scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Kind {
    /// A rate: `limit` requests per window (GCRA).
    Rate {
        /// The window in microseconds.
        window_us: i64,
    },
    /// A quota: `limit` units per period.
    Quota {
        /// The counting period.
        period: Period,
    },
    /// A concurrency limit: `limit` requests in flight.
    Concurrency {
        /// How long a lease lasts when its request never ends (a crashed process).
        lease_ttl_us: i64,
    },
}

/// A policy's limit: one number for every caller, or one per tier.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Amount {
    /// The same limit whatever the tier.
    Every(u64),
    /// One limit per tier, in the order of `[limits] tiers`.
    PerTier(Vec<(String, u64)>),
}

impl Amount {
    /// The limit for `tier` (`None` for a tier the table does not name).
    pub fn for_tier(&self, tier: &str) -> Option<u64> {
        match self {
            Amount::Every(n) => Some(*n),
            Amount::PerTier(table) => table.iter().find(|(t, _)| t == tier).map(|(_, n)| *n),
        }
    }
}

/// The default lease time to live of a concurrency policy: 5 minutes.
pub const DEFAULT_LEASE_TTL_US: i64 = 300 * MICROS_PER_SECOND;

/// One `[[limits.policies]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Policy {
    /// Its name: in headers, error details and docs.
    pub name: String,
    /// What it counts.
    pub counts: Counts,
    /// Whose requests share a bucket.
    pub per: Per,
    /// Rate, quota or concurrency, with the window, period or lease time.
    pub kind: Kind,
    /// The limit, for everyone or per tier.
    pub limit: Amount,
    /// The code raised when it refuses; `None`: the one bound to its situation.
    pub code: Option<String>,
    /// The route groups it applies to; empty: every route.
    pub routes: Vec<String>,
    /// A sentence for the docs.
    pub description: Option<String>,
    /// The line of its entry in the catalog (0 for a policy built in code).
    pub line: usize,
}

impl Policy {
    /// A rate policy: `limit` requests per `window_us` microseconds.
    pub fn rate(name: &str, per: Per, limit: Amount, window_us: i64) -> Self {
        Self::with_kind(name, Counts::Requests, per, limit, Kind::Rate { window_us })
    }

    /// A concurrency policy with the default lease time to live.
    pub fn concurrency(name: &str, per: Per, limit: Amount) -> Self {
        let kind = Kind::Concurrency {
            lease_ttl_us: DEFAULT_LEASE_TTL_US,
        };
        Self::with_kind(name, Counts::Concurrent, per, limit, kind)
    }

    /// A quota of `limit` `counts` per `period`.
    pub fn quota(name: &str, counts: Counts, per: Per, limit: Amount, period: Period) -> Self {
        Self::with_kind(name, counts, per, limit, Kind::Quota { period })
    }

    fn with_kind(name: &str, counts: Counts, per: Per, limit: Amount, kind: Kind) -> Self {
        Policy {
            name: name.to_owned(),
            counts,
            per,
            kind,
            limit,
            code: None,
            routes: Vec::new(),
            description: None,
            line: 0,
        }
    }

    /// The situation its refusals raise (unless [`Policy::code`] names a code).
    pub fn situation(&self) -> Situation {
        match self.kind {
            Kind::Rate { .. } => Situation::RateLimited,
            Kind::Quota { .. } => Situation::QuotaExceeded,
            Kind::Concurrency { .. } => Situation::ConcurrencyLimited,
        }
    }

    /// The code its refusals raise in `catalog`: [`Policy::code`], else the bound one.
    pub fn code_in<'c>(&'c self, catalog: &'c Catalog) -> Option<&'c str> {
        match &self.code {
            Some(code) => Some(code),
            None => catalog
                .bindings()
                .get(&self.situation())
                .map(String::as_str),
        }
    }

    /// Whether it applies to a route of `group` (`None`: a route in no group).
    pub fn applies_to(&self, group: Option<&str>) -> bool {
        self.routes.is_empty() || group.is_some_and(|g| self.routes.iter().any(|r| r == g))
    }

    /// Its rule for a caller of `tier`, a quota spending `cost`; `None` when the tier has no
    /// value.
    pub fn rule(&self, tier: &str, cost: u64) -> Option<Rule> {
        let limit = self.limit.for_tier(tier)?;
        Some(match self.kind {
            Kind::Rate { window_us } => Rule::Rate { limit, window_us },
            Kind::Quota { period } => Rule::Quota {
                limit,
                period,
                cost,
            },
            Kind::Concurrency { lease_ttl_us } => Rule::Concurrency {
                limit,
                lease_ttl_us,
            },
        })
    }

    /// Its `RateLimit-Policy` member for a caller with limit `quota`.
    pub fn header_item(&self, quota: u64) -> PolicyItem {
        match self.kind {
            Kind::Rate { window_us } => {
                PolicyItem::new(&self.name, quota, Some(ceil_secs(window_us)))
            }
            Kind::Quota { period } => {
                let item = PolicyItem::new(&self.name, quota, Some(period.typical_secs()));
                match &self.counts {
                    Counts::Units(_) => item.with_unit(self.counts.as_str()),
                    _ => item,
                }
            }
            Kind::Concurrency { .. } => {
                PolicyItem::new(&self.name, quota, None).with_unit("concurrent-requests")
            }
        }
    }

    /// The window or period as people read it: `1 minute`, `month`, `in flight`.
    pub fn scale(&self) -> String {
        match self.kind {
            Kind::Rate { window_us } => format!("per {}", human_duration(window_us)),
            Kind::Quota {
                period: Period::Day,
            } => "per UTC calendar day".to_owned(),
            Kind::Quota {
                period: Period::Month,
            } => "per UTC calendar month".to_owned(),
            Kind::Quota {
                period: Period::RollingDays(days),
            } => format!("per rolling {days} days"),
            Kind::Concurrency { .. } => "at once".to_owned(),
        }
    }
}

fn human_duration(us: i64) -> String {
    let secs = ceil_secs(us);
    for (unit, size) in [("day", 86_400), ("hour", 3600), ("minute", 60)] {
        if secs >= size && secs.is_multiple_of(size) {
            let n = secs / size;
            return if n == 1 {
                unit.to_owned()
            } else {
                format!("{n} {unit}s")
            };
        }
    }
    if secs == 1 {
        "second".to_owned()
    } else {
        format!("{secs} seconds")
    }
}

/// The `[limits]` section of a catalog.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LimitSettings {
    /// The plan tiers, in order (e.g. `free`, `pro`, `enterprise`).
    pub tiers: Vec<String>,
    /// The tier of a caller whose organisation has none.
    pub default_tier: Option<String>,
    /// Whether responses also carry `X-RateLimit-Limit/Remaining/Reset`.
    pub legacy_headers: bool,
    /// The policies, in file order.
    pub policies: Vec<Policy>,
}

impl LimitSettings {
    /// Whether the catalog declares no policy.
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// The policy named `name`.
    pub fn policy(&self, name: &str) -> Option<&Policy> {
        self.policies.iter().find(|p| p.name == name)
    }

    /// The tier a caller gets when its own is unknown: `default_tier`, else the first tier,
    /// else `default`.
    pub fn fallback_tier(&self) -> &str {
        self.default_tier
            .as_deref()
            .or(self.tiers.first().map(String::as_str))
            .unwrap_or("default")
    }
}

type RawTable = BTreeMap<Spanned<String>, Spanned<toml::Value>>;

/// The `[limits]` table as read from TOML, before validation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimits {
    tiers: Option<Spanned<toml::Value>>,
    default_tier: Option<Spanned<toml::Value>>,
    legacy_headers: Option<Spanned<toml::Value>>,
    policies: Option<Vec<Spanned<RawTable>>>,
}

const POLICY_KEYS: [&str; 11] = [
    "name",
    "counts",
    "per",
    "window",
    "period",
    "limit",
    "code",
    "routes",
    "lease_ttl",
    "description",
    "tiers",
];

/// Parses a duration: `30s`, `1m`, `2h`, `1d` (or whole seconds as an integer), in
/// microseconds.
///
/// ```
/// use faultline::limits::{parse_duration, MICROS_PER_SECOND as S};
/// assert_eq!(parse_duration("1m"), Some(60 * S));
/// assert_eq!(parse_duration("36h"), Some(36 * 3600 * S));
/// assert_eq!(parse_duration("0s"), None);
/// ```
pub fn parse_duration(text: &str) -> Option<i64> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (digits, unit) = text.split_at(split);
    let n: i64 = digits.parse().ok()?;
    let size = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    let secs = n.checked_mul(size)?;
    (secs > 0 && secs <= 366 * 86_400).then_some(secs * MICROS_PER_SECOND)
}

/// A policy or tier name: 1 to 64 of `[a-z0-9_-]`, starting with a letter.
fn is_limit_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.as_bytes()[0].is_ascii_lowercase()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

struct LimitParser<'s, 'p> {
    source: &'s str,
    problems: &'p mut Vec<Problem>,
}

impl LimitParser<'_, '_> {
    fn line(&self, offset: usize) -> usize {
        let end = offset.min(self.source.len());
        self.source.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    fn problem(&mut self, line: usize, rule: &'static str, message: impl Into<String>) {
        self.problems.push(Problem {
            line,
            code: None,
            rule,
            message: message.into(),
        });
    }

    fn string(&mut self, value: &Spanned<toml::Value>, key: &str) -> Option<String> {
        match value.get_ref() {
            toml::Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
            _ => {
                let line = self.line(value.span().start);
                self.problem(
                    line,
                    "wrong-type",
                    format!("`{key}` must be a non-empty string"),
                );
                None
            }
        }
    }

    fn names(&mut self, value: &Spanned<toml::Value>, key: &str) -> Option<Vec<String>> {
        let line = self.line(value.span().start);
        let Some(items) = value.get_ref().as_array() else {
            self.problem(
                line,
                "wrong-type",
                format!("`{key}` must be an array of names"),
            );
            return None;
        };
        let mut out = Vec::new();
        for item in items {
            match item.as_str() {
                Some(name) if is_limit_name(name) => {
                    if out.iter().any(|n| n == name) {
                        self.problem(
                            line,
                            "limits-duplicate",
                            format!("`{name}` is listed twice in `{key}`"),
                        );
                    } else {
                        out.push(name.to_owned());
                    }
                }
                _ => {
                    self.problem(
                        line,
                        "limits-name",
                        format!(
                            "`{item}` in `{key}` is not a name of [a-z0-9_-] starting with a letter"
                        ),
                    );
                    return None;
                }
            }
        }
        Some(out)
    }

    fn parse(&mut self, raw: &Spanned<RawLimits>, codes: &Codes<'_>) -> Option<LimitSettings> {
        let section_line = self.line(raw.span().start);
        let raw = raw.get_ref();
        let mut ok = true;
        let tiers = match &raw.tiers {
            Some(v) => self.names(v, "tiers").unwrap_or_else(|| {
                ok = false;
                Vec::new()
            }),
            None => Vec::new(),
        };
        let default_tier = raw.default_tier.as_ref().and_then(|v| {
            let tier = self.string(v, "default_tier");
            if let Some(t) = tier.as_ref().filter(|t| !tiers.contains(t)) {
                let line = self.line(v.span().start);
                self.problem(
                    line,
                    "limits-unknown-tier",
                    format!(
                        "default_tier `{t}` is not one of tiers = [{}]",
                        tiers.join(", ")
                    ),
                );
            }
            ok &= tier.is_some();
            tier
        });
        let legacy_headers = match &raw.legacy_headers {
            None => false,
            Some(v) => match v.get_ref() {
                toml::Value::Boolean(b) => *b,
                _ => {
                    let line = self.line(v.span().start);
                    self.problem(line, "wrong-type", "`legacy_headers` must be true or false");
                    ok = false;
                    false
                }
            },
        };
        let mut policies: Vec<Policy> = Vec::new();
        for table in raw.policies.as_deref().unwrap_or(&[]) {
            let line = self.line(table.span().start);
            match self.policy(table.get_ref(), line, &tiers, codes) {
                Some(policy) => {
                    if let Some(first) = policies.iter().find(|p| p.name == policy.name) {
                        let message = format!(
                            "policy `{}` is defined twice; first on line {}",
                            policy.name, first.line
                        );
                        self.problem(policy.line, "limits-duplicate", message);
                        ok = false;
                    } else {
                        policies.push(policy);
                    }
                }
                None => ok = false,
            }
        }
        if policies.is_empty() && ok {
            self.problem(
                section_line,
                "limits-empty",
                "[limits] declares no [[limits.policies]]",
            );
            ok = false;
        }
        ok.then_some(LimitSettings {
            tiers,
            default_tier,
            legacy_headers,
            policies,
        })
    }

    fn policy(
        &mut self,
        table: &RawTable,
        line: usize,
        tiers: &[String],
        codes: &Codes<'_>,
    ) -> Option<Policy> {
        let get = |key: &str| {
            table
                .iter()
                .find(|(k, _)| k.get_ref() == key)
                .map(|(_, v)| v)
        };
        let mut ok = true;
        for key in table.keys() {
            if !POLICY_KEYS.contains(&key.get_ref().as_str()) {
                let at = self.line(key.span().start);
                self.problem(
                    at,
                    "unknown-key",
                    format!(
                        "unknown key `{}` in a [[limits.policies]] entry; expected one of {}",
                        key.get_ref(),
                        POLICY_KEYS.join(", ")
                    ),
                );
                ok = false;
            }
        }
        let required = |this: &mut Self, key: &str| -> Option<String> {
            match get(key) {
                Some(v) => this.string(v, key),
                None => {
                    this.problem(
                        line,
                        "missing-field",
                        format!("a [[limits.policies]] entry needs `{key}`"),
                    );
                    None
                }
            }
        };
        let name = required(self, "name");
        let counts = required(self, "counts");
        let per = required(self, "per");
        if let Some(n) = name.as_ref().filter(|n| !is_limit_name(n)) {
            self.problem(
                line,
                "limits-name",
                format!("policy name `{n}` must be 1 to 64 of [a-z0-9_-], starting with a letter"),
            );
            ok = false;
        }
        let per = per.and_then(|p| match p.as_str() {
            "key" => Some(Per::Key),
            "org" => Some(Per::Org),
            "route_group" => Some(Per::RouteGroup),
            "custom" => Some(Per::Custom),
            _ => {
                self.problem(
                    line,
                    "limits-per",
                    format!("per = `{p}`: expected one of key, org, route_group, custom"),
                );
                None
            }
        });
        let window = get("window").and_then(|v| self.duration(v, "window"));
        let period = get("period").and_then(|v| {
            let text = self.string(v, "period")?;
            let period = Period::parse(&text);
            if period.is_none() {
                let at = self.line(v.span().start);
                self.problem(
                    at,
                    "limits-period",
                    format!(
                        "period = `{text}`: expected day, month or a rolling `Nd` such as `30d`"
                    ),
                );
            }
            period
        });
        let lease_ttl = get("lease_ttl").and_then(|v| self.duration(v, "lease_ttl"));
        let bad_time = [
            ("window", window.is_none()),
            ("period", period.is_none()),
            ("lease_ttl", lease_ttl.is_none()),
        ]
        .iter()
        .any(|(key, missing)| *missing && get(key).is_some());
        ok &= !bad_time;
        let counts = counts.map(|c| match c.as_str() {
            "requests" => Counts::Requests,
            "concurrent" => Counts::Concurrent,
            _ => Counts::Units(c),
        });
        let kind = match (&counts, window, period) {
            (None, ..) => None,
            (Some(Counts::Concurrent), None, None) => Some(Kind::Concurrency {
                lease_ttl_us: lease_ttl.unwrap_or(DEFAULT_LEASE_TTL_US),
            }),
            (Some(Counts::Concurrent), ..) => {
                self.problem(
                    line,
                    "limits-shape",
                    "a `concurrent` policy takes neither `window` nor `period`",
                );
                None
            }
            (Some(Counts::Requests), Some(window_us), None) => Some(Kind::Rate { window_us }),
            (Some(_), None, Some(period)) => Some(Kind::Quota { period }),
            (Some(Counts::Units(unit)), Some(_), None) => {
                self.problem(
                    line,
                    "limits-shape",
                    format!("a quota of `{unit}` needs a `period`, not a `window`"),
                );
                None
            }
            (Some(_), Some(_), Some(_)) => {
                self.problem(
                    line,
                    "limits-shape",
                    "give a `window` (a rate) or a `period` (a quota), not both",
                );
                None
            }
            (Some(_), None, None) if bad_time => None,
            (Some(_), None, None) => {
                self.problem(line, "limits-shape", "a policy needs a `window` (a rate) or a `period` (a quota), or counts = \"concurrent\"");
                None
            }
        };
        if lease_ttl.is_some() && !matches!(kind, Some(Kind::Concurrency { .. }) | None) {
            self.problem(
                line,
                "limits-shape",
                "`lease_ttl` is for `concurrent` policies only",
            );
            ok = false;
        }
        if let Some(Kind::Rate { window_us }) = kind {
            let limit_max = match get("limit").map(Spanned::get_ref) {
                Some(toml::Value::Integer(n)) => *n,
                Some(toml::Value::Table(t)) => t
                    .values()
                    .filter_map(toml::Value::as_integer)
                    .max()
                    .unwrap_or(0),
                _ => 0,
            };
            if limit_max > window_us {
                self.problem(
                    line,
                    "limits-shape",
                    "a rate cannot admit more than one request per microsecond of its window",
                );
                ok = false;
            }
        }
        let limit = match get("limit") {
            None => {
                self.problem(
                    line,
                    "missing-field",
                    "a [[limits.policies]] entry needs `limit`",
                );
                None
            }
            Some(v) => self.amount(v, tiers),
        };
        let code = get("code").and_then(|v| self.string(v, "code"));
        let routes = match get("routes") {
            Some(v) => {
                let routes = self.names(v, "routes");
                ok &= routes.is_some();
                routes.unwrap_or_default()
            }
            None => Vec::new(),
        };
        if get("tiers").is_some() {
            self.problem(
                line,
                "unknown-key",
                "per-tier values go in `limit = { tier = n, … }`",
            );
            ok = false;
        }
        let description = get("description").and_then(|v| self.string(v, "description"));
        let policy = Policy {
            name: name?,
            counts: counts?,
            per: per?,
            kind: kind?,
            limit: limit?,
            code,
            routes,
            description,
            line,
        };
        // The code raised must exist, be a 429 (or a 402 for a quota) and carry Retry-After.
        let situation = policy.situation();
        let code = match &policy.code {
            Some(code) => Some(code.clone()),
            None => codes.bindings.get(&situation).cloned(),
        };
        match code {
            None => {
                self.problem(
                    line,
                    "limits-unbound",
                    format!(
                        "policy `{}` needs `code`, or a code bound to `{situation}` in [bindings]",
                        policy.name
                    ),
                );
                ok = false;
            }
            Some(code) => match codes.errors.iter().find(|e| e.code == code) {
                None => {
                    self.problem(
                        line,
                        "unknown-code",
                        format!(
                            "policy `{}` raises `{code}`, which is not in the catalog",
                            policy.name
                        ),
                    );
                    ok = false;
                }
                Some(spec) => {
                    let status_ok = spec.status == 429
                        || (spec.status == 402 && situation == Situation::QuotaExceeded);
                    if !status_ok {
                        self.problem(line, "limits-code-status", format!("policy `{}` raises `{code}` with status {}: a refusal is a 429 (or a 402 for a quota)", policy.name, spec.status));
                        ok = false;
                    }
                    if !spec.carries("Retry-After") {
                        self.problem(
                            line,
                            "missing-retry-after",
                            format!(
                                "policy `{}` raises `{code}`, which must carry Retry-After",
                                policy.name
                            ),
                        );
                        ok = false;
                    }
                }
            },
        }
        ok.then_some(policy)
    }

    fn duration(&mut self, value: &Spanned<toml::Value>, key: &str) -> Option<i64> {
        let parsed = match value.get_ref() {
            toml::Value::String(s) => parse_duration(s),
            toml::Value::Integer(n) if *n > 0 && *n <= 366 * 86_400 => Some(n * MICROS_PER_SECOND),
            _ => None,
        };
        if parsed.is_none() {
            let line = self.line(value.span().start);
            self.problem(line, "limits-duration", format!("`{key}` must be a duration such as \"30s\", \"1m\", \"1h\" or \"1d\" (at most 366 days)"));
        }
        parsed
    }

    fn amount(&mut self, value: &Spanned<toml::Value>, tiers: &[String]) -> Option<Amount> {
        let line = self.line(value.span().start);
        let positive = |n: &toml::Value| n.as_integer().filter(|n| *n >= 1).map(i64::unsigned_abs);
        match value.get_ref() {
            toml::Value::Integer(_) => {
                let n = positive(value.get_ref());
                if n.is_none() {
                    self.problem(
                        line,
                        "limits-limit",
                        "`limit` must be a whole number of at least 1",
                    );
                }
                n.map(Amount::Every)
            }
            toml::Value::Table(table) => {
                if tiers.is_empty() {
                    self.problem(
                        line,
                        "limits-unknown-tier",
                        "a per-tier `limit` needs `tiers` in [limits]",
                    );
                    return None;
                }
                let mut ok = true;
                for tier in table.keys() {
                    if !tiers.contains(tier) {
                        self.problem(
                            line,
                            "limits-unknown-tier",
                            format!("`{tier}` is not one of tiers = [{}]", tiers.join(", ")),
                        );
                        ok = false;
                    }
                }
                let mut out = Vec::new();
                for tier in tiers {
                    match table.get(tier) {
                        None => {
                            self.problem(
                                line,
                                "limits-missing-tier",
                                format!("`limit` has no value for tier `{tier}`"),
                            );
                            ok = false;
                        }
                        Some(v) => match positive(v) {
                            Some(n) => out.push((tier.clone(), n)),
                            None => {
                                self.problem(line, "limits-limit", format!("the limit of tier `{tier}` must be a whole number of at least 1"));
                                ok = false;
                            }
                        },
                    }
                }
                ok.then_some(Amount::PerTier(out))
            }
            _ => {
                self.problem(
                    line,
                    "wrong-type",
                    "`limit` must be a number or a table of numbers by tier",
                );
                None
            }
        }
    }
}

/// Parses and lints the `[limits]` section of a catalog whose codes and bindings are known;
/// problems go to `problems` with their lines. The hook `catalog.rs` calls.
pub(crate) fn parse_section(
    source: &str,
    raw: Option<&Spanned<RawLimits>>,
    errors: &[ErrorSpec],
    bindings: &BTreeMap<Situation, String>,
    problems: &mut Vec<Problem>,
) -> LimitSettings {
    let Some(raw) = raw else {
        return LimitSettings::default();
    };
    LimitParser { source, problems }
        .parse(raw, &Codes { errors, bindings })
        .unwrap_or_default()
}

/// The catalog's codes and bindings, which policies refer to.
struct Codes<'c> {
    errors: &'c [ErrorSpec],
    bindings: &'c BTreeMap<Situation, String>,
}

// ---- docs ----------------------------------------------------------------------------------

/// One cell of text in Markdown (no line breaks, pipes escaped) or HTML (escaped).
fn docs_cell(text: &str, html: bool) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if html {
        flat.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    } else {
        flat.replace('|', "\\|")
    }
}

fn docs_code(text: &str, html: bool) -> String {
    if html {
        format!("<code>{}</code>", docs_cell(text, true))
    } else {
        format!("`{}`", docs_cell(text, false))
    }
}

fn docs_table(out: &mut String, head: &[String], rows: &[Vec<String>], html: bool) {
    if html {
        out.push_str("<table>\n<thead><tr>");
        for h in head {
            let _ = write!(out, "<th>{h}</th>");
        }
        out.push_str("</tr></thead>\n<tbody>\n");
        for row in rows {
            out.push_str("<tr>");
            for c in row {
                let _ = write!(out, "<td>{c}</td>");
            }
            out.push_str("</tr>\n");
        }
        out.push_str("</tbody>\n</table>\n");
    } else {
        let _ = writeln!(out, "| {} |", head.join(" | "));
        let _ = writeln!(out, "|{}", "---|".repeat(head.len()));
        for row in rows {
            let _ = writeln!(out, "| {} |", row.join(" | "));
        }
        out.push('\n');
    }
}

/// The docs page's "Rate limits" section (Markdown, or HTML when `html`); empty when the
/// catalog declares no policy. A tiers table in the shape of seed 002 (one row per tier, one
/// column per policy), then each policy: what it counts, per whom, over what, and the code it
/// raises.
pub fn docs_section(catalog: &Catalog, html: bool) -> String {
    let limits = catalog.limits();
    let mut out = String::new();
    if limits.is_empty() {
        return out;
    }
    let para = |out: &mut String, text: &str| {
        if html {
            let _ = writeln!(out, "<p>{text}</p>");
        } else {
            let _ = writeln!(out, "{text}\n");
        }
    };
    let c = |text: &str| docs_code(text, html);
    if html {
        let _ = writeln!(out, "<h2 id=\"rate-limits\">Rate limits</h2>");
    } else {
        let _ = writeln!(out, "## Rate limits\n");
    }
    let legacy = if limits.legacy_headers {
        format!(
            ", and {}, {} and {} for the policy closest to refusing",
            c("X-RateLimit-Limit"),
            c("X-RateLimit-Remaining"),
            c("X-RateLimit-Reset")
        )
    } else {
        String::new()
    };
    para(
        &mut out,
        &format!(
            "Every response to an identified caller, successful or not, reports the limits that applied to it: {} lists each policy with its quota ({}) and window in seconds ({}), {} what is left of each ({}) and the seconds until it is whole again ({}){legacy}. \
             A request over any limit is refused with a 429 and spends nothing on the other policies; its {} header gives the whole seconds to wait, rounded up, so a retry after that wait is not refused for the same reason.",
            c("RateLimit-Policy"),
            c("q"),
            c("w"),
            c("RateLimit"),
            c("r"),
            c("t"),
            c("Retry-After"),
        ),
    );
    let tiers: Vec<String> = if limits.tiers.is_empty() {
        vec![String::new()]
    } else {
        limits.tiers.clone()
    };
    let mut head = vec!["Tier".to_owned()];
    for p in &limits.policies {
        head.push(format!(
            "{} ({} {})",
            c(&p.name),
            docs_cell(p.counts.as_str(), html),
            docs_cell(&p.scale(), html)
        ));
    }
    let rows: Vec<Vec<String>> = tiers
        .iter()
        .map(|tier| {
            let name = if tier.is_empty() {
                "every caller".to_owned()
            } else if limits.default_tier.as_deref() == Some(tier) {
                format!("{} (default)", c(tier))
            } else {
                c(tier)
            };
            let mut row = vec![name];
            for p in &limits.policies {
                row.push(
                    p.limit
                        .for_tier(tier)
                        .map_or_else(|| "—".to_owned(), |n| n.to_string()),
                );
            }
            row
        })
        .collect();
    docs_table(&mut out, &head, &rows, html);
    let head: Vec<String> = ["Policy", "Counts", "Per", "Limit", "Refused with", "About"]
        .iter()
        .map(|h| (*h).to_owned())
        .collect();
    let rows: Vec<Vec<String>> = limits
        .policies
        .iter()
        .map(|p| {
            let per = match p.per {
                Per::Key => "API key",
                Per::Org => "organisation",
                Per::RouteGroup => "organisation and route group",
                Per::Custom => "a key the API defines",
            };
            let mut per = per.to_owned();
            if !p.routes.is_empty() {
                per.push_str(&format!(" (routes: {})", p.routes.join(", ")));
            }
            vec![
                c(&p.name),
                docs_cell(p.counts.as_str(), html),
                docs_cell(&per, html),
                docs_cell(&p.scale(), html),
                p.code_in(catalog).map_or_else(String::new, |code| {
                    if html {
                        format!(
                            "<a href=\"#{0}\"><code>{0}</code></a>",
                            docs_cell(code, true)
                        )
                    } else {
                        c(code)
                    }
                }),
                docs_cell(p.description.as_deref().unwrap_or(""), html),
            ]
        })
        .collect();
    docs_table(&mut out, &head, &rows, html);
    out
}

/// The sentence a code's docs entry gets when policies raise it: "Raised by the policies
/// `a`, `b`." (Markdown) or its HTML; `None` when no policy raises `code`.
pub fn docs_raised_by(catalog: &Catalog, code: &str, html: bool) -> Option<String> {
    let names: Vec<String> = catalog
        .limits()
        .policies
        .iter()
        .filter(|p| p.code_in(catalog) == Some(code))
        .map(|p| docs_code(&p.name, html))
        .collect();
    match names.len() {
        0 => None,
        1 => Some(format!("Raised by the policy {}.", names[0])),
        _ => Some(format!("Raised by the policies {}.", names.join(", "))),
    }
}

// ---- wire formats ----------------------------------------------------------------------------

/// One member of a `RateLimit-Policy` field: `"name";q=100;w=60`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PolicyItem {
    /// The policy's name.
    pub name: String,
    /// `q`: the quota (requests per window, in flight, or units per period).
    pub quota: u64,
    /// `w`: the window in seconds, when the policy has one.
    pub window_secs: Option<u64>,
    /// `qu`: the quota unit (`requests`, `content-bytes`, `concurrent-requests`), when not
    /// the default `requests`.
    pub unit: Option<String>,
}

impl PolicyItem {
    /// A policy item without a unit.
    pub fn new(name: &str, quota: u64, window_secs: Option<u64>) -> Self {
        PolicyItem {
            name: name.to_owned(),
            quota,
            window_secs,
            unit: None,
        }
    }

    /// The same item with a `qu` unit.
    #[must_use]
    pub fn with_unit(mut self, unit: &str) -> Self {
        self.unit = Some(unit.to_owned());
        self
    }
}

/// One member of a `RateLimit` field: `"name";r=42;t=17`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StateItem {
    /// The policy's name.
    pub name: String,
    /// `r`: what remains.
    pub remaining: u64,
    /// `t`: seconds until the quota is whole again, when known.
    pub reset_secs: Option<u64>,
}

impl StateItem {
    /// A state item.
    pub fn new(name: &str, remaining: u64, reset_secs: Option<u64>) -> Self {
        StateItem {
            name: name.to_owned(),
            remaining,
            reset_secs,
        }
    }
}

/// A header value that is not what its parser expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderParseError {
    /// The byte offset where reading stopped.
    pub at: usize,
    /// What was wrong.
    pub reason: &'static str,
}

impl fmt::Display for HeaderParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.reason, self.at)
    }
}

impl std::error::Error for HeaderParseError {}

/// Appends `n` in decimal (without `fmt`'s machinery, two digits at a time: this runs for
/// every limited response).
pub fn push_decimal(out: &mut String, n: u64) {
    out.push_str(itoa::Buffer::new().format(n));
}

fn write_sf_string(out: &mut String, text: &str) {
    if text
        .bytes()
        .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
    {
        out.push('"');
        out.push_str(text);
        out.push('"');
        return;
    }
    out.push('"');
    for c in text.chars() {
        // Structured-field strings hold printable ASCII only; anything else becomes `?`.
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out.push('"');
}

/// Formats a `RateLimit-Policy` field value: one list member per policy.
///
/// ```
/// use faultline::limits::{format_policy_header, PolicyItem};
/// let value = format_policy_header(&[
///     PolicyItem::new("minute", 60, Some(60)),
///     PolicyItem::new("in_flight", 10, None).with_unit("concurrent-requests"),
/// ]);
/// assert_eq!(value, r#""minute";q=60;w=60, "in_flight";q=10;qu="concurrent-requests""#);
/// ```
pub fn format_policy_header(items: &[PolicyItem]) -> String {
    let mut out = String::new();
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        write_sf_string(&mut out, &item.name);
        let _ = write!(out, ";q={}", item.quota);
        if let Some(unit) = &item.unit {
            out.push_str(";qu=");
            write_sf_string(&mut out, unit);
        }
        if let Some(w) = item.window_secs {
            let _ = write!(out, ";w={w}");
        }
    }
    out
}

/// Formats a `RateLimit` field value: one list member per policy.
///
/// ```
/// use faultline::limits::{format_state_header, StateItem};
/// let value = format_state_header(&[StateItem::new("minute", 42, Some(17))]);
/// assert_eq!(value, r#""minute";r=42;t=17"#);
/// ```
pub fn format_state_header(items: &[StateItem]) -> String {
    let mut out = String::with_capacity(items.iter().map(|i| i.name.len() + 24).sum());
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        write_sf_string(&mut out, &item.name);
        out.push_str(";r=");
        push_decimal(&mut out, item.remaining);
        if let Some(t) = item.reset_secs {
            out.push_str(";t=");
            push_decimal(&mut out, t);
        }
    }
    out
}

/// A parameter value of a structured-field list member.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SfValue {
    Integer(i64),
    Text(String),
    Other,
}

/// A list member: its string and its parameters.
type SfMember = (String, Vec<(String, SfValue)>);

/// A structured-field list of string members with parameters (RFC 9651 §3.1), the shape of
/// both rate-limit fields. Inner lists and other bare items are refused.
fn parse_sf_list(value: &str) -> Result<Vec<SfMember>, HeaderParseError> {
    let bytes = value.as_bytes();
    let mut at = 0;
    let err = |at: usize, reason: &'static str| HeaderParseError { at, reason };
    let skip = |at: &mut usize, ows: bool| {
        while *at < bytes.len() && (bytes[*at] == b' ' || (ows && bytes[*at] == b'\t')) {
            *at += 1;
        }
    };
    let mut members = Vec::new();
    skip(&mut at, false);
    if at == bytes.len() {
        return Ok(members);
    }
    loop {
        // The member: a string.
        if bytes.get(at) != Some(&b'"') {
            return Err(err(at, "expected a string naming a policy"));
        }
        let (name, next) = parse_sf_string(bytes, at)?;
        at = next;
        // Its parameters.
        let mut params = Vec::new();
        while bytes.get(at) == Some(&b';') {
            at += 1;
            skip(&mut at, false);
            let start = at;
            while at < bytes.len()
                && (bytes[at].is_ascii_lowercase()
                    || bytes[at].is_ascii_digit()
                    || matches!(bytes[at], b'_' | b'-' | b'.' | b'*'))
            {
                at += 1;
            }
            if start == at || !(bytes[start].is_ascii_lowercase() || bytes[start] == b'*') {
                return Err(err(start, "expected a parameter key"));
            }
            let key = value[start..at].to_owned();
            let param = if bytes.get(at) == Some(&b'=') {
                at += 1;
                match bytes.get(at) {
                    Some(b'"') => {
                        let (text, next) = parse_sf_string(bytes, at)?;
                        at = next;
                        SfValue::Text(text)
                    }
                    Some(b) if b.is_ascii_digit() || *b == b'-' => {
                        let start = at;
                        at += 1;
                        while at < bytes.len() && (bytes[at].is_ascii_digit() || bytes[at] == b'.')
                        {
                            at += 1;
                        }
                        let text = &value[start..at];
                        if text.contains('.') {
                            SfValue::Other
                        } else if text.len() > 16 {
                            return Err(err(start, "integer too long"));
                        } else {
                            text.parse()
                                .map(SfValue::Integer)
                                .map_err(|_| err(start, "malformed integer"))?
                        }
                    }
                    Some(b'?') | Some(b':') | Some(b'@') | Some(b'%') => {
                        // Booleans, byte sequences, dates, display strings: read over.
                        at += 1;
                        let end = bytes[at..]
                            .iter()
                            .position(|b| matches!(b, b';' | b',' | b' ' | b'\t'))
                            .map_or(bytes.len(), |p| at + p);
                        at = end;
                        SfValue::Other
                    }
                    Some(b) if b.is_ascii_alphabetic() || *b == b'*' => {
                        let end = bytes[at..]
                            .iter()
                            .position(|b| matches!(b, b';' | b',' | b' ' | b'\t'))
                            .map_or(bytes.len(), |p| at + p);
                        let token = value[at..end].to_owned();
                        at = end;
                        SfValue::Text(token)
                    }
                    _ => return Err(err(at, "expected a parameter value")),
                }
            } else {
                SfValue::Other
            };
            params.push((key, param));
        }
        members.push((name, params));
        skip(&mut at, true);
        if at == bytes.len() {
            return Ok(members);
        }
        if bytes[at] != b',' {
            return Err(err(at, "expected `,` between list members"));
        }
        at += 1;
        skip(&mut at, true);
        if at == bytes.len() {
            return Err(err(at, "a list must not end with `,`"));
        }
    }
}

fn parse_sf_string(bytes: &[u8], start: usize) -> Result<(String, usize), HeaderParseError> {
    let mut at = start + 1;
    let mut out = String::new();
    loop {
        match bytes.get(at) {
            None => {
                return Err(HeaderParseError {
                    at,
                    reason: "unterminated string",
                });
            }
            Some(b'"') => return Ok((out, at + 1)),
            Some(b'\\') => match bytes.get(at + 1) {
                Some(&c @ (b'"' | b'\\')) => {
                    out.push(char::from(c));
                    at += 2;
                }
                _ => {
                    return Err(HeaderParseError {
                        at,
                        reason: "bad escape in string",
                    });
                }
            },
            Some(&c @ b' '..=b'~') => {
                out.push(char::from(c));
                at += 1;
            }
            Some(_) => {
                return Err(HeaderParseError {
                    at,
                    reason: "non-printable byte in string",
                });
            }
        }
    }
}

fn non_negative(params: &[(String, SfValue)], key: &str) -> Result<Option<u64>, HeaderParseError> {
    match params.iter().rev().find(|(k, _)| k == key) {
        None => Ok(None),
        Some((_, SfValue::Integer(n))) if *n >= 0 => Ok(Some(n.unsigned_abs())),
        Some(_) => Err(HeaderParseError {
            at: 0,
            reason: "a rate-limit parameter must be a non-negative integer",
        }),
    }
}

/// Parses a `RateLimit-Policy` field value; unknown parameters are ignored, `q` is required.
///
/// # Round trip
///
/// `parse_policy_header(&format_policy_header(items)) == items` for names of printable ASCII
/// (proved by a property test).
pub fn parse_policy_header(value: &str) -> Result<Vec<PolicyItem>, HeaderParseError> {
    parse_sf_list(value)?
        .into_iter()
        .map(|(name, params)| {
            let quota = non_negative(&params, "q")?.ok_or(HeaderParseError {
                at: 0,
                reason: "a policy needs `q`",
            })?;
            let window_secs = non_negative(&params, "w")?;
            let unit = params
                .iter()
                .rev()
                .find(|(k, _)| k == "qu")
                .and_then(|(_, v)| match v {
                    SfValue::Text(t) => Some(t.clone()),
                    _ => None,
                });
            Ok(PolicyItem {
                name,
                quota,
                window_secs,
                unit,
            })
        })
        .collect()
}

/// Parses a `RateLimit` field value; unknown parameters are ignored, `r` is required.
///
/// # Round trip
///
/// `parse_state_header(&format_state_header(items)) == items` for names of printable ASCII
/// (proved by a property test).
pub fn parse_state_header(value: &str) -> Result<Vec<StateItem>, HeaderParseError> {
    parse_sf_list(value)?
        .into_iter()
        .map(|(name, params)| {
            let remaining = non_negative(&params, "r")?.ok_or(HeaderParseError {
                at: 0,
                reason: "a policy state needs `r`",
            })?;
            Ok(StateItem {
                name,
                remaining,
                reset_secs: non_negative(&params, "t")?,
            })
        })
        .collect()
}

/// The legacy `X-RateLimit-*` trio, for the policy closest to refusing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LegacyHeaders {
    /// `X-RateLimit-Limit`.
    pub limit: u64,
    /// `X-RateLimit-Remaining`.
    pub remaining: u64,
    /// `X-RateLimit-Reset`: seconds until the quota is whole again.
    pub reset_secs: u64,
}

impl LegacyHeaders {
    /// The header names, in the order of [`LegacyHeaders::values`].
    pub const NAMES: [&'static str; 3] = [
        "X-RateLimit-Limit",
        "X-RateLimit-Remaining",
        "X-RateLimit-Reset",
    ];

    /// The trio for several policies: the one with the least remaining (then the latest
    /// reset) stands for all; `None` without policies.
    ///
    /// ```
    /// use faultline::limits::LegacyHeaders;
    /// let trio = LegacyHeaders::most_restrictive(&[(60, 59, 1), (1000, 3, 3000)]).unwrap();
    /// assert_eq!(trio.values(), ["1000", "3", "3000"]);
    /// ```
    pub fn most_restrictive(policies: &[(u64, u64, u64)]) -> Option<LegacyHeaders> {
        policies
            .iter()
            .min_by(|a, b| a.1.cmp(&b.1).then(b.2.cmp(&a.2)))
            .map(|&(limit, remaining, reset_secs)| LegacyHeaders {
                limit,
                remaining,
                reset_secs,
            })
    }

    /// The three values, formatted.
    pub fn values(&self) -> [String; 3] {
        [
            self.limit.to_string(),
            self.remaining.to_string(),
            self.reset_secs.to_string(),
        ]
    }

    /// Parses the three values (each a non-negative decimal integer).
    pub fn parse(limit: &str, remaining: &str, reset: &str) -> Option<LegacyHeaders> {
        Some(LegacyHeaders {
            limit: parse_delta_seconds(limit)?,
            remaining: parse_delta_seconds(remaining)?,
            reset_secs: parse_delta_seconds(reset)?,
        })
    }
}

/// Formats `Retry-After` for a wait in microseconds: whole seconds, rounded up, at least 1.
///
/// ```
/// use faultline::limits::format_retry_after;
/// assert_eq!(format_retry_after(1), "1");
/// assert_eq!(format_retry_after(2_000_001), "3");
/// ```
pub fn format_retry_after(wait_us: i64) -> String {
    ceil_secs(wait_us).max(1).to_string()
}

/// Parses `Retry-After` as delta-seconds (digits only; an HTTP date gives `None`).
pub fn parse_retry_after(value: &str) -> Option<u64> {
    parse_delta_seconds(value.trim())
}

fn parse_delta_seconds(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > 19 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: i64 = MICROS_PER_SECOND;

    fn rate(limit: u64, window_s: i64) -> Rule {
        Rule::Rate {
            limit,
            window_us: window_s * S,
        }
    }

    #[test]
    fn an_empty_bucket_admits_exactly_the_limit_then_waits_one_interval() {
        let rule = rate(10, 60);
        let mut state = None;
        for i in 0..10 {
            let v = decide(0, &[(&rule, state.as_ref())], "l");
            assert!(v.admitted, "request {i}");
            assert_eq!(v.outcomes[0].remaining, 9 - i);
            state = v.commit.map(|mut s| s.remove(0));
        }
        let v = decide(0, &[(&rule, state.as_ref())], "l");
        assert!(!v.admitted);
        assert_eq!(v.retry_after_us, 6 * S);
        assert_eq!(v.outcomes[0].reset_us, 60 * S);
        let v = decide(6 * S - 1, &[(&rule, state.as_ref())], "l");
        assert!(!v.admitted);
        assert_eq!(v.retry_after_us, 1);
        assert_eq!(v.retry_after_secs(), 1);
        let v = decide(6 * S, &[(&rule, state.as_ref())], "l");
        assert!(v.admitted);
    }

    #[test]
    fn a_quota_resets_on_the_calendar_month() {
        // 2026-12-31T23:59:59Z rolls into January 2027.
        let now = days_from_civil(2026, 12, 31) * MICROS_PER_DAY + 86_399 * S;
        let jan = days_from_civil(2027, 1, 1) * MICROS_PER_DAY;
        assert_eq!(Period::Month.end_after(now), jan);
        assert_eq!(iso8601(jan), "2027-01-01T00:00:00+00:00");
        let rule = Rule::Quota {
            limit: 2,
            period: Period::Month,
            cost: 2,
        };
        let v = decide(now, &[(&rule, None)], "l");
        assert_eq!(v.outcomes[0].used, Some(2));
        let state = v.commit.map(|mut s| s.remove(0));
        let v = decide(now, &[(&rule, state.as_ref())], "l");
        assert!(!v.admitted);
        assert_eq!(v.retry_after_us, S);
        assert_eq!(v.outcomes[0].resets_at_us, Some(jan));
        assert!(decide(jan, &[(&rule, state.as_ref())], "l").admitted);
    }

    #[test]
    fn concurrency_leases_lapse_and_release() {
        let rule = Rule::Concurrency {
            limit: 1,
            lease_ttl_us: 30 * S,
        };
        let v = decide(0, &[(&rule, None)], "a");
        let state = v.commit.map(|mut s| s.remove(0));
        let v = decide(S, &[(&rule, state.as_ref())], "b");
        assert!(!v.admitted);
        assert_eq!(v.retry_after_us, CONCURRENCY_RETRY_US);
        let v = decide(29 * S + S / 2, &[(&rule, state.as_ref())], "b");
        assert_eq!(v.retry_after_us, S / 2);
        assert!(decide(30 * S, &[(&rule, state.as_ref())], "b").admitted);
        let released = state.map(|s| s.release("a"));
        assert!(decide(S, &[(&rule, released.as_ref())], "b").admitted);
    }

    #[test]
    fn civil_dates_round_trip() {
        for days in (-800_000..800_000).step_by(997) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    const BASE: &str = r#"[api]
name = "T"
profile = "flat"
code_style = "snake_case"

[bindings]
rate_limited = "slow_down"

[[errors]]
code = "slow_down"
status = 429
category = "Limits"
title = "Slow down"
message = "Too many requests."
when = "A rate limit was hit."
recovery = "Wait."
retry = "after_retry_after"
headers = ["Retry-After"]

[[errors]]
code = "bad"
status = 400
category = "Limits"
title = "Bad"
message = "Bad."
when = "Bad."
recovery = "Fix."
retry = "never"
"#;

    fn problems(section: &str) -> Vec<(usize, &'static str)> {
        let source = format!("{BASE}{section}");
        match Catalog::from_toml_str(&source) {
            Ok(_) => Vec::new(),
            Err(e) => e.problems.into_iter().map(|p| (p.line, p.rule)).collect(),
        }
    }

    #[test]
    fn the_chatbots_catalog_declares_the_seed_tiers() {
        let source = include_str!("../../../examples/catalogs/chatbots.toml");
        let catalog = Catalog::from_toml_str(source).unwrap();
        let limits = catalog.limits();
        assert_eq!(limits.tiers, ["free", "pro", "enterprise"]);
        assert_eq!(limits.fallback_tier(), "free");
        assert!(limits.legacy_headers);
        let minute = limits.policy("org_per_minute").unwrap();
        assert_eq!(minute.per, Per::Org);
        assert_eq!(minute.kind, Kind::Rate { window_us: 60 * S });
        let per_tier: Vec<_> = ["free", "pro", "enterprise"]
            .iter()
            .map(|t| minute.limit.for_tier(t).unwrap())
            .collect();
        assert_eq!(per_tier, [10, 60, 600]);
        let in_flight = limits.policy("org_in_flight").unwrap();
        assert_eq!(in_flight.situation(), Situation::ConcurrencyLimited);
        assert_eq!(
            in_flight.code_in(&catalog),
            Some("too_many_concurrent_requests")
        );
        assert_eq!(in_flight.limit.for_tier("enterprise"), Some(50));
        let monthly = limits.policy("monthly_requests").unwrap();
        assert_eq!(
            monthly.kind,
            Kind::Quota {
                period: Period::Month
            }
        );
        assert_eq!(
            monthly.rule("pro", 1),
            Some(Rule::Quota {
                limit: 250_000,
                period: Period::Month,
                cost: 1
            })
        );
    }

    #[test]
    fn a_valid_section_parses() {
        let section = r#"
[limits]
tiers = ["free", "pro"]
[[limits.policies]]
name = "minute"
counts = "requests"
per = "key"
window = "1m"
limit = { free = 1, pro = 2 }
routes = ["chat"]
"#;
        assert_eq!(problems(section), []);
        let catalog = Catalog::from_toml_str(&format!("{BASE}{section}")).unwrap();
        let p = &catalog.limits().policies[0];
        assert_eq!(p.line, BASE.lines().count() + 4);
        assert!(p.applies_to(Some("chat")) && !p.applies_to(Some("admin")) && !p.applies_to(None));
        assert_eq!(catalog.limits().fallback_tier(), "free");
    }

    #[test]
    fn every_problem_of_a_section_is_reported_with_its_line() {
        let base = BASE.lines().count();
        let section = r#"
[limits]
tiers = ["free", "pro"]
default_tier = "gold"
[[limits.policies]]
name = "minute"
counts = "requests"
per = "key"
window = "1m"
limit = { free = 1, gold = 2 }
[[limits.policies]]
name = "minute"
counts = "requests"
per = "planet"
window = "soon"
limit = 0
[[limits.policies]]
name = "monthly"
counts = "tokens"
per = "org"
period = "fortnight"
limit = 5
colour = "red"
[[limits.policies]]
name = "at_once"
counts = "concurrent"
per = "org"
window = "1m"
limit = 2
[[limits.policies]]
name = "refuses_badly"
counts = "requests"
per = "org"
window = "1s"
limit = 2
code = "bad"
[[limits.policies]]
name = "no_code"
counts = "requests"
per = "org"
period = "day"
limit = 2
"#;
        let found = problems(section);
        let expected = vec![
            (base + 4, "limits-unknown-tier"),
            (base + 10, "limits-unknown-tier"),
            (base + 10, "limits-missing-tier"),
            (base + 11, "limits-per"),
            (base + 15, "limits-duration"),
            (base + 16, "limits-limit"),
            (base + 21, "limits-period"),
            (base + 23, "unknown-key"),
            (base + 24, "limits-shape"),
            (base + 30, "limits-code-status"),
            (base + 30, "missing-retry-after"),
            (base + 37, "limits-unbound"),
        ];
        assert_eq!(found, expected);
    }

    #[test]
    fn the_docs_section_has_a_row_per_tier_in_both_formats() {
        let source = include_str!("../../../examples/catalogs/chatbots.toml");
        let catalog = Catalog::from_toml_str(source).unwrap();
        let html = docs_section(&catalog, true);
        assert!(html.contains("<tr><td><code>free</code> (default)</td><td>10</td><td>2</td>"));
        assert!(
            html.contains("<td><a href=\"#quota_exceeded\"><code>quota_exceeded</code></a></td>")
        );
        let markdown = docs_section(&catalog, false);
        assert!(markdown.contains("| `enterprise` | 600 | 50 | 300 | 15000 | 10000000 |"));
        assert_eq!(
            docs_raised_by(&catalog, "too_many_concurrent_requests", false).as_deref(),
            Some("Raised by the policy `org_in_flight`.")
        );
        assert_eq!(docs_raised_by(&catalog, "not_found", false), None);
        let bare = Catalog::from_toml_str(BASE).unwrap();
        assert_eq!(docs_section(&bare, false), "", "no policies, no section");
    }

    #[test]
    fn durations_and_periods_parse_and_refuse() {
        assert_eq!(parse_duration("90s"), Some(90 * S));
        assert_eq!(parse_duration("1d"), Some(86_400 * S));
        for bad in ["", "m", "1", "1w", "-1m", "367d", "1.5h"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
        assert_eq!(Period::parse("30d"), Some(Period::RollingDays(30)));
        assert_eq!(Period::parse("0d"), None);
        assert_eq!(Period::parse(&Period::Month.name()), Some(Period::Month));
    }

    fn name() -> impl Strategy<Value = String> {
        "[ -~]{0,12}"
    }

    proptest! {
        #[test]
        fn policy_headers_round_trip(items in prop::collection::vec(
            (name(), any::<u32>(), prop::option::of(any::<u32>()), prop::option::of("[a-z-]{1,20}")),
            0..5,
        )) {
            let items: Vec<PolicyItem> = items
                .into_iter()
                .map(|(n, q, w, u)| PolicyItem {
                    name: n,
                    quota: u64::from(q),
                    window_secs: w.map(u64::from),
                    unit: u,
                })
                .collect();
            prop_assert_eq!(parse_policy_header(&format_policy_header(&items)).unwrap(), items);
        }

        #[test]
        fn decimals_match_display(n in any::<u64>()) {
            let mut out = String::new();
            push_decimal(&mut out, n);
            prop_assert_eq!(out, n.to_string());
        }

        #[test]
        fn state_headers_round_trip(items in prop::collection::vec(
            (name(), any::<u32>(), prop::option::of(any::<u32>())),
            0..5,
        )) {
            let items: Vec<StateItem> = items
                .into_iter()
                .map(|(n, r, t)| StateItem::new(&n, u64::from(r), t.map(u64::from)))
                .collect();
            prop_assert_eq!(parse_state_header(&format_state_header(&items)).unwrap(), items);
        }

        #[test]
        fn header_parsers_never_panic(text in "[ -~]{0,60}") {
            let _ = parse_policy_header(&text);
            let _ = parse_state_header(&text);
            let _ = parse_retry_after(&text);
        }

        #[test]
        fn retry_after_round_trips_and_is_never_early(us in 1..i64::MAX / 2) {
            let secs = parse_retry_after(&format_retry_after(us)).unwrap();
            prop_assert!(i64::try_from(secs).unwrap() * S >= us);
            prop_assert!((i64::try_from(secs).unwrap() - 1) * S < us);
        }

        #[test]
        fn waiting_the_retry_after_admits(limit in 1u64..50, window_s in 1i64..4000, n in 1usize..120, gaps in prop::collection::vec(0i64..3 * S, 1..120)) {
            let rule = rate(limit, window_s);
            let mut state = None;
            let mut now = 0;
            for gap in gaps.iter().take(n) {
                now += gap;
                let v = decide(now, &[(&rule, state.as_ref())], "l");
                if let Some(mut s) = v.commit {
                    state = Some(s.remove(0));
                } else {
                    let wait = v.retry_after_us;
                    prop_assert!(!decide(now + wait - 1, &[(&rule, state.as_ref())], "l").admitted);
                    let secs = i64::try_from(v.retry_after_secs()).unwrap() * S;
                    prop_assert!(decide(now + wait, &[(&rule, state.as_ref())], "l").admitted);
                    prop_assert!(decide(now + secs, &[(&rule, state.as_ref())], "l").admitted);
                }
            }
        }
    }
}
