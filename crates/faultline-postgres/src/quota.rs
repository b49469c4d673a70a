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
     FROM faultline_quota_spend($1, $2, $3, $4, $5, $6, $7, $8)";

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
/// A request's quota checks are spent first, each by one statement committed on its own: the
/// function `faultline_quota_spend` takes an advisory lock on the bucket (held for that
/// statement only), then writes `used + cost` only when it stays within the limit. Then the
/// inner store decides the other checks, and:
///
/// - every check admits: the units stay spent, the request goes on;
/// - a quota refuses: the units the other quota checks spent are given back, and the inner
///   store is asked in a look-only way (with an added check whose limit is 0, which refuses,
///   so by the inner store's own promise nothing is spent there);
/// - the inner store refuses (or fails): the quota units are given back.
///
/// So a refused request spends nothing on any policy once its decision returns, and the
/// outcomes are the ones [`faultline::limits::decide`] gives: the quota outcomes are computed
/// by [`faultline::limits::evaluate`] from the counter read under the lock. Between a spend and
/// its refund, a concurrent request of the same organisation may see those units as spent (and
/// be refused at the very end of a quota); a refund that cannot be made (PostgreSQL failed in
/// between, logged at warn) leaves the period one request high.
///
/// # Exact across processes
///
/// Spenders of one counter wait for each other's statement (advisory lock), so however many
/// processes share the database, a quota of N admits exactly N units per period.
///
/// The price: one PostgreSQL round trip per quota check of an admitted request (two for a
/// refused one), and one organisation's spends run one at a time for the span of one
/// statement; the inner store is asked with no lock held. The statement does not wait for the
/// disk (`synchronous_commit = off` for it only): a crash of the PostgreSQL server may forget
/// the last fraction of a second of spending (a count a few requests low).
///
/// # A request given up gives its units back
///
/// If the caller stops waiting after the spend (the limit layer's deadline, a dropped
/// request), the units are given back on a task of their own. A spend that reaches
/// PostgreSQL only after its statement's deadline (a stalled network delivering it late)
/// spends nothing: the deadline travels with the statement and is compared with PostgreSQL's
/// clock, which must agree with this machine's within the statement timeout.
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
        let conn = self.pool.get().await?;
        let mut quota_admits = true;
        // What was spent, to give back if the decision is refused after all.
        let mut spent = Refund {
            conn: Some(conn),
            group,
            units: Vec::with_capacity(quotas.len()),
        };
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
            // One statement, committed on its own: the bucket's lock is held for it alone.
            // A statement delivered after the caller gave up spends nothing (see migration 3).
            let deadline = unix_micros_now().saturating_add(
                i64::try_from(self.pool.statement_timeout().as_micros()).unwrap_or(i64::MAX),
            );
            let row = spent
                .conn()?
                .query_opt(
                    SPEND,
                    &[
                        &group, &quota.key, &now_us, &kind, &days, &limit, &cost, &deadline,
                    ],
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
            if was_spent {
                spent
                    .units
                    .push((quota.index, quota.key.to_owned(), resets_at, cost));
            }
            quota_admits &= outcome.admitted;
            outcomes[quota.index] = Some(outcome);
        }
        // The quota checks that admitted report the state as it is once their units are
        // given back.
        let unspend = |outcomes: &mut Vec<Option<Outcome>>, units: &[(usize, String, i64, i64)]| {
            for (i, ..) in units {
                if let (Some(outcome), Rule::Quota { cost, .. }) =
                    (&mut outcomes[*i], &checks[*i].rule)
                {
                    outcome.remaining = outcome.remaining.saturating_add(*cost);
                    outcome.used = outcome.used.map(|u| u.saturating_sub(*cost));
                }
            }
        };
        if !quota_admits {
            unspend(&mut outcomes, &spent.units);
            spent.give_back().await;
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
        if others.is_empty() {
            spent.keep();
            return Ok(Decision::new(true, collect(outcomes)?, None));
        }
        let rest: Vec<Check> = others.iter().map(|(_, c)| (*c).clone()).collect();
        // An error here gives the units back too (the refund is dropped unkept).
        let decided = self.inner.decide(group, &rest, now_us).await?;
        for ((i, _), outcome) in others.iter().zip(decided.outcomes) {
            outcomes[*i] = Some(outcome);
        }
        if !decided.admitted {
            unspend(&mut outcomes, &spent.units);
            spent.give_back().await;
            return Ok(Decision::new(false, collect(outcomes)?, None));
        }
        spent.keep();
        Ok(Decision::new(true, collect(outcomes)?, decided.lease))
    }
}

/// This machine's clock in Unix microseconds.
fn unix_micros_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

const REFUND: &str = "UPDATE limit_quotas SET used = used - $4, updated_at = now() \
     WHERE grp = $1 AND bucket = $2 AND resets_at_us = $3 AND used >= $4";

/// Quota units spent for a decision not yet returned: given back unless kept (a refusal by
/// another check, an error, or the caller giving up), on a task of its own when dropped.
struct Refund<'a> {
    conn: Option<crate::pool::PgConn>,
    group: &'a str,
    /// (check index, bucket, period end, units)
    units: Vec<(usize, String, i64, i64)>,
}

impl Refund<'_> {
    fn conn(&mut self) -> Result<&mut crate::pool::PgConn, StoreError> {
        self.conn
            .as_mut()
            .ok_or_else(|| StoreError::new("the quota connection was given up"))
    }

    /// The units stay spent: the decision admits.
    fn keep(mut self) {
        self.units.clear();
    }

    /// Gives the units back now.
    async fn give_back(mut self) {
        let units = std::mem::take(&mut self.units);
        if let Some(conn) = &mut self.conn {
            refund(conn, self.group, &units).await;
        }
    }
}

/// Gives `units` of `group` back, one statement each; a failure is logged (the period then
/// counts them).
async fn refund(conn: &mut crate::pool::PgConn, group: &str, units: &[(usize, String, i64, i64)]) {
    for (_, bucket, resets_at, cost) in units {
        if let Err(e) = conn
            .execute(REFUND, &[&group, bucket, resets_at, cost])
            .await
        {
            tracing::warn!(error = %e, "quota units could not be given back; the period counts them");
        }
    }
}

impl Drop for Refund<'_> {
    fn drop(&mut self) {
        if self.units.is_empty() {
            return;
        }
        let (Some(mut conn), Ok(runtime)) =
            (self.conn.take(), tokio::runtime::Handle::try_current())
        else {
            tracing::warn!("a quota spend could not be given back; the period counts it");
            return;
        };
        let group = self.group.to_owned();
        let units = std::mem::take(&mut self.units);
        runtime.spawn(async move { refund(&mut conn, &group, &units).await });
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
