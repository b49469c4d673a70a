//! [`PgQuotaStore`]: quota counters in PostgreSQL, around another limit store for rates and
//! concurrency.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use faultline::limits::{self, BucketState, Outcome, Period, Rule};
use faultline_axum::limit::{Check, Decision, Lease, LimitStore, StoreError, StoreFuture};
use tokio::task::JoinHandle;

use crate::pool::PgPool;

/// How long a quota period's counter is kept after the period ended, unless told otherwise
/// ([`PgQuotaStore::with_history`]): 35 days, so last month's usage can still be read.
pub const DEFAULT_QUOTA_HISTORY: Duration = Duration::from_secs(35 * 86_400);

/// How long decisions with a quota fail at once after PostgreSQL failed as unavailable,
/// unless told otherwise ([`PgQuotaStore::with_fail_fast`]).
pub const DEFAULT_FAIL_FAST: Duration = Duration::from_millis(500);

/// How often [`PgQuotaStore::spawn_pruning`] deletes old periods, unless told otherwise.
pub const DEFAULT_QUOTA_PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// The check added to the inner store's call when a quota refused: its limit of 0 refuses every
/// request, so the inner store spends nothing and reports its other checks as they stay.
const LOOK_ONLY: &str = "faultline:pg-quota:look-only";

const SPEND: &str = "SELECT o_now, o_resets_at, o_used_before, o_spent \
     FROM faultline_quota_spend($1, $2, $3, $4, $5, $6, $7)";

/// A [`LimitStore`] that keeps quota counters in PostgreSQL and asks an inner store (memory,
/// Redis) for every other check.
///
/// Rate and concurrency buckets change many times a second and may be lost with the process
/// or a Redis restart; a month's usage must not be. Here each quota check is one row per group,
/// bucket and period end in the table `limit_quotas` (migration 3 of [`crate::MIGRATIONS`]),
/// so a counter survives restarts of every `serve` process and of Redis, and is shared by all
/// processes on the database.
///
/// # One decision across both stores
///
/// A request's quota checks are spent first, inside one transaction, by the function
/// `faultline_quota_spend` (a transaction-level advisory lock per bucket serialises the
/// spenders of one counter, then a conditional insert-or-update writes `used + cost` only when
/// it stays within the limit). Then the inner store decides the other checks, and:
///
/// - every check admits: the transaction commits, the request goes on;
/// - a quota refuses: the transaction rolls back and the inner store is asked in a look-only
///   way (with an added check whose limit is 0, which refuses, so by the inner store's own
///   promise nothing is spent there);
/// - the inner store refuses: the transaction rolls back, so no quota unit is spent either.
///
/// So a refused request spends nothing on any policy, and the outcomes are the ones
/// [`faultline::limits::decide`] gives: the quota outcomes are computed by
/// [`faultline::limits::evaluate`] from the counter read under the lock.
///
/// # Exact across processes
///
/// Concurrent decisions on one counter wait for each other's transaction (advisory lock), so
/// however many processes share the database, a quota of N admits exactly N units per period.
/// A request's quota buckets are locked in key order, so two requests never wait for each
/// other in a cycle.
///
/// The price: one organisation's decisions run one at a time for the span of the quota
/// statement, the inner store's call and the COMMIT (the bench `quota` of this crate measures
/// it), and each decision with a quota costs three PostgreSQL round trips (BEGIN, the spend,
/// COMMIT). The COMMIT does not wait for the disk (`synchronous_commit = off` for this
/// transaction only): a crash of the PostgreSQL server may forget the last fraction of a
/// second of spending (a count a few requests low), never half of a decision.
///
/// # A failed commit stops the request
///
/// If the COMMIT fails (or misses its deadline) after the inner store admitted, the decision
/// is a [`StoreError`] (unavailable), so the layer answers as its failure mode says; the lease
/// the inner store took is given back at once (also when the caller stops waiting, e.g. the
/// limit layer's deadline passing while the COMMIT is in flight: then on a task of its own).
/// What cannot be given back are the rate tokens the inner store spent for that request: each
/// such failure over-spends one token of each rate check (the request was not served, but
/// counts against the rate window), never a quota unit. With a failed commit whose outcome is
/// unknown (the connection died after sending it) the quota may have been spent for a request
/// that is not served: the error tells the client to retry, and the period's count is at most
/// one request high.
///
/// # Time
///
/// With `now_us` given (tests: the shared suite drives stores through time this way) the
/// quota is decided at that instant; otherwise at PostgreSQL's clock, so every process agrees
/// on when a period ends whatever their own clocks say. Periods follow
/// [`faultline::limits::Period`]: the next UTC midnight, the next UTC month, or N days from a
/// rolling period's first request.
///
/// # Deadlines and outages
///
/// Every statement has the pool's deadline ([`crate::PgOptions::statement_timeout`]); an
/// unreachable, stalled or restarting server is [`StoreError::is_unavailable`], never a hang, and
/// the limit layer's [`faultline_axum::limit::FailureMode`] applies.
///
/// # An outage fails fast
///
/// After a decision failed as unavailable, the next ones with a quota fail at once (also
/// unavailable) for a short window ([`DEFAULT_FAIL_FAST`]), so that during a stall only one
/// decision per window waits for the deadline; the first decision after the window tries
/// PostgreSQL again, so service comes back by itself.
///
/// # Old periods are pruned
///
/// [`PgQuotaStore::prune`] deletes counters whose period ended longer ago than the history
/// ([`DEFAULT_QUOTA_HISTORY`]); [`PgQuotaStore::spawn_pruning`] does it on a task of its own.
#[derive(Clone)]
pub struct PgQuotaStore {
    pool: PgPool,
    inner: Arc<dyn LimitStore>,
    history: Duration,
    fail_fast: Duration,
    /// Until when decisions with a quota fail at once (PostgreSQL just failed as unavailable).
    down_until: Arc<Mutex<Option<Instant>>>,
}

/// Why a decision failed at once.
#[derive(Debug)]
struct RecentlyDown;

impl std::fmt::Display for RecentlyDown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PostgreSQL was unavailable moments ago; quota decisions fail at once for now")
    }
}

impl std::error::Error for RecentlyDown {}

impl std::fmt::Debug for PgQuotaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgQuotaStore")
            .field("pool", &self.pool)
            .field("history", &self.history)
            .finish_non_exhaustive()
    }
}

/// One quota check's place in the request and its rule's numbers.
struct QuotaCheck<'a> {
    index: usize,
    key: &'a str,
    rule: Rule,
    limit: u64,
    period: Period,
    cost: u64,
}

impl PgQuotaStore {
    /// Quotas on `pool` (migrated with [`crate::migrate()`]), every other check on `inner`.
    pub fn new(pool: PgPool, inner: Arc<dyn LimitStore>) -> Self {
        PgQuotaStore {
            pool,
            inner,
            history: DEFAULT_QUOTA_HISTORY,
            fail_fast: DEFAULT_FAIL_FAST,
            down_until: Arc::new(Mutex::new(None)),
        }
    }

    /// After PostgreSQL failed as unavailable, decisions with a quota fail at once for
    /// `window` ([`DEFAULT_FAIL_FAST`]); zero turns this off.
    #[must_use]
    pub fn with_fail_fast(mut self, window: Duration) -> Self {
        self.fail_fast = window;
        self
    }

    fn down(&self) -> bool {
        let mut until = self
            .down_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match *until {
            Some(at) if Instant::now() < at => true,
            Some(_) => {
                // The window passed: this decision tries PostgreSQL again.
                *until = None;
                false
            }
            None => false,
        }
    }

    fn note(&self, result: &Result<Decision, StoreError>) {
        if let Err(e) = result
            && e.is_unavailable()
            && !self.fail_fast.is_zero()
        {
            *self
                .down_until
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now() + self.fail_fast);
        }
    }

    /// Keeps ended periods for `history` before [`PgQuotaStore::prune`] deletes them.
    #[must_use]
    pub fn with_history(mut self, history: Duration) -> Self {
        self.history = history;
        self
    }

    /// The pool the counters are in.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The counter of `group`'s bucket `key` for the period running at `now_us` (PostgreSQL's
    /// clock when `None`): `(resets_at_us, used)`, or `None` when no period is running.
    pub async fn usage(
        &self,
        group: &str,
        key: &str,
        now_us: Option<i64>,
    ) -> Result<Option<(i64, u64)>, StoreError> {
        let mut conn = self.pool.get().await?;
        let row = conn
            .query_opt(
                "SELECT resets_at_us, used FROM limit_quotas \
                 WHERE grp = $1 AND bucket = $2 AND resets_at_us > COALESCE($3, \
                 floor(extract(epoch FROM clock_timestamp()) * 1000000)::BIGINT) \
                 ORDER BY resets_at_us DESC LIMIT 1",
                &[&group, &key, &now_us],
            )
            .await?;
        Ok(row.map(|row| {
            let used: i64 = row.get(1);
            (row.get(0), used.unsigned_abs())
        }))
    }

    /// Deletes the counters of periods that ended more than the history before `now_us`
    /// (PostgreSQL's clock when `None`); returns how many.
    pub async fn prune(&self, now_us: Option<i64>) -> Result<u64, StoreError> {
        let history_us = i64::try_from(self.history.as_micros()).unwrap_or(i64::MAX);
        let mut conn = self.pool.get().await?;
        conn.execute(
            "DELETE FROM limit_quotas WHERE resets_at_us < COALESCE($1, \
             floor(extract(epoch FROM clock_timestamp()) * 1000000)::BIGINT) - $2",
            &[&now_us, &history_us],
        )
        .await
    }

    /// Prunes every `every` on a task of its own (a failure is logged and tried again next
    /// time); abort the handle, or drop the runtime, to stop it.
    pub fn spawn_pruning(&self, every: Duration) -> JoinHandle<()> {
        let store = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every.max(Duration::from_millis(1)));
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                match store.prune(None).await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(deleted = n, "old quota periods pruned"),
                    Err(e) => tracing::warn!(error = %e, "pruning old quota periods failed"),
                }
            }
        })
    }

    async fn decide_with_quotas(
        &self,
        group: &str,
        checks: &[Check],
        quotas: Vec<QuotaCheck<'_>>,
        now_us: Option<i64>,
    ) -> Result<Decision, StoreError> {
        let others: Vec<(usize, &Check)> = checks
            .iter()
            .enumerate()
            .filter(|(_, c)| !matches!(c.rule, Rule::Quota { .. }))
            .collect();
        let mut outcomes: Vec<Option<Outcome>> = vec![None; checks.len()];
        let mut conn = self.pool.get().await?;
        let mut tx = conn.transaction().await?;
        let mut quota_admits = true;
        // Spent states, to report as unspent when the decision is refused after all.
        let mut spent = Vec::with_capacity(quotas.len());
        for quota in &quotas {
            let (kind, days): (i16, i32) = match quota.period {
                Period::Day => (0, 0),
                Period::Month => (1, 0),
                Period::RollingDays(days) => (2, i32::try_from(days).unwrap_or(i32::MAX)),
                // A period this store does not know is a defect, not an outage.
                other => {
                    return Err(StoreError::new(format!(
                        "PgQuotaStore cannot count the period {}",
                        other.name()
                    )));
                }
            };
            let limit = i64::try_from(quota.limit).unwrap_or(i64::MAX);
            let cost = i64::try_from(quota.cost).unwrap_or(i64::MAX);
            let row = tx
                .query_opt(
                    SPEND,
                    &[&group, &quota.key, &now_us, &kind, &days, &limit, &cost],
                )
                .await?
                .ok_or_else(|| StoreError::new("faultline_quota_spend returned no row"))?;
            let (now, resets_at, used_before, was_spent): (i64, i64, i64, bool) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            let state = BucketState::Quota {
                resets_at_us: resets_at,
                used: used_before.unsigned_abs(),
            };
            let (outcome, _) = limits::evaluate(&quota.rule, Some(&state), now, "");
            debug_assert_eq!(outcome.admitted, was_spent, "the model and SQL agree");
            quota_admits &= outcome.admitted;
            if outcome.admitted {
                spent.push(quota.index);
            }
            outcomes[quota.index] = Some(outcome);
        }
        // The quota checks that admitted report the state as it stays when the decision is
        // refused: nothing of them is committed.
        let unspend = |outcomes: &mut Vec<Option<Outcome>>| {
            for &i in &spent {
                if let (Some(outcome), Rule::Quota { cost, .. }) =
                    (&mut outcomes[i], &checks[i].rule)
                {
                    outcome.remaining = outcome.remaining.saturating_add(*cost);
                    outcome.used = outcome.used.map(|u| u.saturating_sub(*cost));
                }
            }
        };
        if !quota_admits {
            drop(tx);
            drop(conn);
            unspend(&mut outcomes);
            if !others.is_empty() {
                // Look only: a check that refuses makes the inner store spend nothing.
                let mut look: Vec<Check> = others.iter().map(|(_, c)| (*c).clone()).collect();
                look.push(Check::new(
                    LOOK_ONLY,
                    Rule::Rate {
                        limit: 0,
                        window_us: 1,
                    },
                ));
                let seen = self.inner.decide(group, &look, now_us).await?;
                if let Some(lease) = seen.lease {
                    // A store that admitted despite the refusing check: give the lease back.
                    let _ = self.inner.release(lease).await;
                }
                for ((i, _), outcome) in others.iter().zip(seen.outcomes) {
                    outcomes[*i] = Some(outcome);
                }
            }
            return Ok(Decision::new(false, collect(outcomes)?, None));
        }
        // The lease goes back if this decision ends without returning it: a failed COMMIT, or
        // the caller giving up (its deadline) while the COMMIT is in flight.
        let mut lease = PendingLease(None);
        if !others.is_empty() {
            let rest: Vec<Check> = others.iter().map(|(_, c)| (*c).clone()).collect();
            let decided = self.inner.decide(group, &rest, now_us).await?;
            for ((i, _), outcome) in others.iter().zip(decided.outcomes) {
                outcomes[*i] = Some(outcome);
            }
            if !decided.admitted {
                drop(tx);
                unspend(&mut outcomes);
                return Ok(Decision::new(false, collect(outcomes)?, None));
            }
            lease.0 = decided.lease.map(|l| (Arc::clone(&self.inner), l));
        }
        if let Err(e) = tx.commit().await {
            if let Some((inner, lease)) = lease.0.take() {
                let _ = inner.release(lease).await;
            }
            return Err(if e.is_unavailable() {
                e
            } else {
                StoreError::unavailable(e)
            });
        }
        let lease = lease.0.take().map(|(_, l)| l);
        Ok(Decision::new(true, collect(outcomes)?, lease))
    }
}

/// A lease taken by the inner store for a decision not yet returned; given back when dropped.
struct PendingLease(Option<(Arc<dyn LimitStore>, Lease)>);

impl Drop for PendingLease {
    fn drop(&mut self) {
        let Some((inner, lease)) = self.0.take() else {
            return;
        };
        if inner.release_ready(&lease) {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = inner.release(lease).await;
            });
        }
    }
}

fn collect(outcomes: Vec<Option<Outcome>>) -> Result<Vec<Outcome>, StoreError> {
    outcomes
        .into_iter()
        .map(|o| o.ok_or_else(|| StoreError::new("a check was left undecided")))
        .collect()
}

impl LimitStore for PgQuotaStore {
    fn decide<'a>(
        &'a self,
        group: &'a str,
        checks: &'a [Check],
        now_us: Option<i64>,
    ) -> StoreFuture<'a, Decision> {
        let mut quotas: Vec<QuotaCheck<'a>> = checks
            .iter()
            .enumerate()
            .filter_map(|(index, check)| match check.rule {
                Rule::Quota {
                    limit,
                    period,
                    cost,
                } => Some(QuotaCheck {
                    index,
                    key: &check.key,
                    rule: check.rule,
                    limit,
                    period,
                    cost,
                }),
                _ => None,
            })
            .collect();
        if quotas.is_empty() {
            return self.inner.decide(group, checks, now_us);
        }
        if self.down() {
            return Box::pin(std::future::ready(Err(StoreError::unavailable(
                RecentlyDown,
            )
            .with_retry_after(self.fail_fast))));
        }
        // Locks are taken in key order: two requests never wait for each other in a cycle.
        quotas.sort_by(|a, b| a.key.cmp(b.key));
        Box::pin(async move {
            let result = self.decide_with_quotas(group, checks, quotas, now_us).await;
            self.note(&result);
            result
        })
    }

    fn release(&self, lease: Lease) -> StoreFuture<'_, ()> {
        self.inner.release(lease)
    }

    fn release_ready(&self, lease: &Lease) -> bool {
        self.inner.release_ready(lease)
    }
}
