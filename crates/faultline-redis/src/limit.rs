//! [`RedisLimitStore`]: rate limits, quotas and concurrency leases shared through Redis, every
//! decision in one round trip.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use faultline::limits::{Outcome, Period, Rule};
use faultline_axum::StoreError;
use faultline_axum::limit::{Check, Decision, Lease, LimitStore, Outcomes, StoreFuture};

use crate::batch::{
    BatchOptions, Batcher, DECIDE_LUA, DEFAULT_MAX_BATCH, Request, ScriptArgs, cluster_slot,
};
use crate::pool::{PoolOptions, RedisPool};

/// The key prefix unless told otherwise.
pub const DEFAULT_PREFIX: &str = "faultline";

/// Limit buckets in Redis, shared by every process that uses the same server and prefix.
///
/// # One round trip per decision
///
/// [`LimitStore::decide`] costs its caller exactly one command, an `EVALSHA` of a Lua script
/// that reads every bucket of the request, applies the formulas of [`faultline::limits`] and
/// spends the buckets only if every check admits, atomically (Redis runs a script alone). Only
/// when the server does not know the script yet (`NOSCRIPT`: first use, restart, `SCRIPT
/// FLUSH`) is it sent once more with `EVAL`, which also caches it. Concurrent decisions may
/// share that one command (next heading). The crate's `round_trip` test counts the commands
/// with `INFO commandstats`.
///
/// # Concurrent decisions share a batch
///
/// The store sends at most [`RedisLimitStore::with_batches_in_flight`] scripts at once (by
/// default as many as the pool has connections). A decision that finds one of those slots free
/// is sent at once, alone: an idle store adds no wait. Decisions that arrive while every slot
/// is busy queue, and go together, in arrival order, in the next script a slot sends (at most
/// [`RedisLimitStore::with_max_batch`] decisions, 64 by default): one `EVALSHA` per batch,
/// still one round trip for each of its decisions. The script decides a batch's requests one
/// after the other, exactly as separate scripts would in that order: a later request sees what
/// an earlier one spent, a refused request spends nothing on any of its policies, and the whole
/// batch runs atomically. Under load this spends Redis's fixed costs (the script call, the
/// network round, `TIME`, one `MGET`) once per batch instead of once per decision. The
/// `batch` tests show it: 200 concurrent decisions against a limit of 50 admit exactly 50,
/// and 64 concurrent decisions take fewer than 64 `EVALSHA`, one per batch.
///
/// # Redis's clock
///
/// Time is Redis's own `TIME`, read inside the script, once per batch, so processes whose
/// clocks disagree still share one timeline (all decisions of a batch share that instant); the
/// `now_us` of [`LimitStore::decide`] replaces it for that decision (tests).
///
/// # Keys: one hash tag per group, a TTL on every key
///
/// The bucket `key` of `group` lives at `{prefix:group}:key` ([`RedisLimitStore::bucket_key`]),
/// so every key one decision touches hashes to the same Redis Cluster slot. Every key expires
/// when its bucket becomes idle (a quota period's end, the last lease's expiry; a rate bucket's
/// arrival time, on Redis's clock rounded up to the next whole second): idle buckets go away
/// by themselves. The rounding lets most writes of a busy rate bucket keep the key's expiry
/// (`SET … KEEPTTL`, cheaper for Redis than a new `PXAT`): such a state is stored as its
/// arrival time in microseconds plus a half (`1712345678901234.5`), which tells that its key
/// expires at that second; a state without the half (written on a given clock, or by an
/// earlier version) always gets a new expiry. A key that outlives its idle moment by less
/// than a second changes no decision: an idle state and no state decide alike.
///
/// # Redis Cluster
///
/// The store does not run on Redis Cluster today: the pool talks to one server and does not
/// follow the cluster's redirections (`MOVED` and `ASK` are answered as
/// [`StoreError::unavailable`]). What holds: the keys of one decision share a hash tag, so a
/// decision sent alone touches one slot; but by default a batch mixes decisions of several
/// groups, whose tags hash to different slots in general, and a cluster would refuse such a
/// script (`CROSSSLOT`). [`RedisLimitStore::with_single_slot_batches`] keeps every script
/// within one slot (a batch then only holds decisions whose tags hash to the same slot, CRC16
/// of the tag modulo 16384, as Redis Cluster computes it); sending each script to the node that
/// owns its slot would still be needed. `with_max_batch(1)` turns batching off altogether.
///
/// # Leases that outlive their process expire
///
/// A concurrency bucket is a sorted set of lease ids scored by their expiry; lapsed leases do
/// not count, so the leases of a process that crashed before [`LimitStore::release`] free
/// their slots after the rule's `lease_ttl_us`.
///
/// # A lease given back never counts against a later decision of this process
///
/// A lease is given back when its response ends ([`LimitStore::release_ready`] is called at
/// that moment), but its `ZREM` reaches Redis only later, over some connection of the pool; a
/// decision the same process makes meanwhile, on another connection, could reach Redis first
/// and still count the lease: a client that waits for each answer before sending its next
/// request would be refused for running too many at once. So the store keeps the leases whose
/// release is on its way (by group; at most [`PENDING_RELEASES`]) and every decision with a
/// concurrency check removes those of its group from its buckets, in its own script and before
/// it counts. A release that fails (Redis down) stays remembered: the next decision of its
/// group that gets through frees the lease. (Another process cannot know of them: across
/// processes a lease is gone once its `ZREM` has reached Redis.)
///
/// # Outages
///
/// A caller waits at most the pool's deadline ([`PoolOptions::with_deadline`]) in all, queued
/// and sent: Redis unreachable, refusing or stalled gives [`StoreError::unavailable`] within
/// it, never a hang; the layer then fails open or closed as configured. A decision whose caller
/// gave up (its deadline passed, or its future was dropped) before its batch was sent is left
/// out of every batch and spends nothing. A decision that ran out of time after it was sent may
/// still reach Redis later (its command was already on the wire when the path stalled): it then
/// counts against the limit although its caller was answered without it, which errs on the
/// side of refusing, never of admitting too much.
pub struct RedisLimitStore {
    prefix: String,
    lease_seed: u64,
    next_lease: AtomicU64,
    batcher: Arc<Batcher>,
    /// Leases given back whose release may not have reached Redis yet.
    releasing: Mutex<Releasing>,
}

/// The leases being released, by group.
#[derive(Default)]
struct Releasing {
    by_group: HashMap<String, Vec<Lease>>,
    count: usize,
}

impl Releasing {
    fn remove(&mut self, group: &str, done: impl Fn(&Lease) -> bool) {
        if let Some(leases) = self.by_group.get_mut(group) {
            let before = leases.len();
            leases.retain(|lease| !done(lease));
            self.count -= before - leases.len();
            if leases.is_empty() {
                self.by_group.remove(group);
            }
        }
    }
}

/// Leases the store remembers as being released at most (see the store's "A lease given back
/// never counts" heading): when one more comes, it forgets them all (each still lapses after
/// its time to live, or is freed by its own release).
pub const PENDING_RELEASES: usize = 1024;

impl std::fmt::Debug for RedisLimitStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimitStore")
            .field("pool", &self.batcher.pool)
            .field("prefix", &self.prefix)
            .field("max_batch", &self.batcher.options.max_batch)
            .field("batches_in_flight", &self.batcher.options.in_flight)
            .field("single_slot_batches", &self.batcher.options.single_slot)
            .finish_non_exhaustive()
    }
}

impl RedisLimitStore {
    /// A store on the Redis at `url` (`redis://127.0.0.1:6379`) with the default pool options
    /// and prefix. Connects on first use.
    ///
    /// # Errors
    /// When `url` is not a valid Redis URL.
    pub fn connect(url: &str) -> Result<RedisLimitStore, StoreError> {
        Ok(Self::new(Arc::new(RedisPool::new(
            url,
            PoolOptions::default(),
        )?)))
    }

    /// A store on `pool`, with the prefix [`DEFAULT_PREFIX`], batches of at most 64 decisions
    /// and as many batches in flight as the pool has connections.
    pub fn new(pool: Arc<RedisPool>) -> RedisLimitStore {
        let script = redis::Script::new(DECIDE_LUA);
        let options = BatchOptions {
            max_batch: DEFAULT_MAX_BATCH,
            in_flight: pool.options().connections(),
            single_slot: false,
        };
        RedisLimitStore {
            prefix: DEFAULT_PREFIX.to_owned(),
            lease_seed: std::hash::RandomState::new().hash_one(std::process::id()),
            next_lease: AtomicU64::new(1),
            batcher: Arc::new(Batcher::new(pool, script.get_hash().to_owned(), options)),
            releasing: Mutex::new(Releasing::default()),
        }
    }

    /// The same store with its keys under `prefix` (e.g. one per application or per test).
    #[must_use]
    pub fn with_prefix(mut self, prefix: &str) -> RedisLimitStore {
        prefix.clone_into(&mut self.prefix);
        self
    }

    /// The same store sending at most `max` decisions in one script (at least 1; default 64).
    /// `1` turns batching off: every decision is its own `EVALSHA`.
    #[must_use]
    pub fn with_max_batch(self, max: usize) -> RedisLimitStore {
        let mut options = self.batcher.options;
        options.max_batch = max.max(1);
        self.with_batch_options(options)
    }

    /// The same store with at most `n` scripts in flight at once (at least 1; default: the
    /// pool's number of connections). Fewer slots make bigger batches under load; a decision
    /// waits in the queue only while every slot is busy.
    #[must_use]
    pub fn with_batches_in_flight(self, n: usize) -> RedisLimitStore {
        let mut options = self.batcher.options;
        options.in_flight = n.max(1);
        self.with_batch_options(options)
    }

    /// The same store putting in one batch only decisions whose hash tags hash to the same
    /// Redis Cluster slot (`true`), so that every script touches one slot; off by default
    /// (see the "Redis Cluster" section of [`RedisLimitStore`]).
    #[must_use]
    pub fn with_single_slot_batches(self, single_slot: bool) -> RedisLimitStore {
        let mut options = self.batcher.options;
        options.single_slot = single_slot;
        self.with_batch_options(options)
    }

    /// A fresh queue with `options` (builders run before the store is shared: no decision is
    /// waiting in the old one).
    fn with_batch_options(mut self, options: BatchOptions) -> RedisLimitStore {
        self.batcher = Arc::new(Batcher::new(
            self.batcher.pool.clone(),
            self.batcher.sha.clone(),
            options,
        ));
        self
    }

    /// How many scripts (batches of decisions) the store has sent so far: with no batching
    /// it equals the decisions sent to Redis; under load it is fewer.
    pub fn batches_sent(&self) -> u64 {
        self.batcher.batches_sent()
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The pool the store sends its commands through.
    pub fn pool(&self) -> &Arc<RedisPool> {
        &self.batcher.pool
    }

    /// The Redis key of bucket `key` in `group`: `{prefix:group}:key`, with `%` and the braces
    /// in the prefix and group written as `%25`, `%7B` and `%7D`, so that the hash tag is
    /// exactly the prefix and group.
    ///
    /// ```
    /// use faultline_redis::RedisLimitStore;
    /// let store = RedisLimitStore::connect("redis://127.0.0.1:6379").unwrap().with_prefix("app");
    /// assert_eq!(store.bucket_key("org_1", "minute:key_9"), "{app:org_1}:minute:key_9");
    /// assert_eq!(store.bucket_key("a}b", "k"), "{app:a%7Db}:k");
    /// ```
    pub fn bucket_key(&self, group: &str, key: &str) -> String {
        let mut out = String::with_capacity(self.prefix.len() + group.len() + key.len() + 4);
        out.push('{');
        escape_into(&mut out, &self.prefix);
        out.push(':');
        escape_into(&mut out, group);
        out.push_str("}:");
        out.push_str(key);
        out
    }

    /// The same store asking Redis for a script by a hash Redis cannot know, so that every
    /// decision takes the `NOSCRIPT` fallback (for tests of that path).
    #[doc(hidden)]
    #[must_use]
    pub fn with_unknown_script_for_tests(mut self) -> RedisLimitStore {
        self.batcher = Arc::new(Batcher::new(
            self.batcher.pool.clone(),
            "0".repeat(40),
            self.batcher.options,
        ));
        self
    }

    fn new_lease_id(&self) -> String {
        let n = self.next_lease.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}-{n:x}", self.lease_seed)
    }

    /// `checks` encoded for the script (see `decide.lua`): their bucket keys and per check its
    /// kind and numbers.
    fn request(
        &self,
        group: &str,
        checks: &[Check],
        now_us: Option<i64>,
        lease_id: String,
        releases: String,
        concurrency: bool,
    ) -> Result<Request, StoreError> {
        let mut args = Vec::with_capacity(checks.len());
        for check in checks {
            args.push(script_args(&check.rule)?);
        }
        // One key buffer: the tag once, then each check's key after it.
        let mut key = self.bucket_key(group, "");
        let tag = key.len();
        let slot = if self.batcher.options.single_slot {
            // The tag is what lies between `{` and `}:`.
            cluster_slot(&key.as_bytes()[1..tag - 2])
        } else {
            0
        };
        let mut keys = Vec::with_capacity(checks.len());
        for check in checks {
            key.truncate(tag);
            key.push_str(&check.key);
            keys.push(key.clone());
        }
        Ok(Request {
            keys,
            now_us,
            lease_id,
            releases,
            args,
            concurrency,
            slot,
            reply_len: 1 + checks.iter().map(|c| reply_len(&c.rule)).sum::<usize>(),
        })
    }

    async fn decide_inner(
        &self,
        group: &str,
        checks: &[Check],
        now_us: Option<i64>,
    ) -> Result<Decision, StoreError> {
        if checks.is_empty() {
            return Ok(Decision::new(true, Vec::new(), None));
        }
        let leased = checks
            .iter()
            .any(|c| matches!(c.rule, Rule::Concurrency { .. }));
        let (lease_id, releases) = if leased {
            (self.new_lease_id(), self.releasing_in(group, checks))
        } else {
            (String::new(), String::new())
        };
        let carried = (!releases.is_empty()).then(|| releases.clone());
        let request = self.request(group, checks, now_us, lease_id.clone(), releases, leased)?;
        let reply = self.batcher.submit(request).await?;
        if let Some(carried) = carried {
            // The script removed them: later decisions need not carry them (leases given back
            // meanwhile were not carried, and stay).
            // (A lease also held in buckets this decision did not touch stays: its other
            // buckets still hold it.)
            self.releasing().remove(group, |lease| {
                carried.split(' ').any(|id| id == lease.id)
                    && lease.keys.iter().all(|key| frees(checks, key))
            });
        }
        let (admitted, outcomes) = read_reply(&reply, checks)?;
        let lease = (admitted && leased).then(|| Lease::for_checks(group, lease_id, checks));
        Ok(Decision::new(admitted, outcomes, lease))
    }

    async fn release_inner(&self, lease: &Lease) -> Result<(), StoreError> {
        if lease.keys.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        // A key that another kind of bucket took over since holds no lease: its `WRONGTYPE` is
        // not an error (the lease is gone, which is fine), and the other keys are still freed.
        pipe.ignore_errors();
        for key in &lease.keys {
            pipe.cmd("ZREM")
                .arg(self.bucket_key(&lease.group, key))
                .arg(&lease.id)
                .ignore();
        }
        let pipe = &pipe;
        let result = self
            .batcher
            .pool
            .run(|mut connection| async move { pipe.query_async::<()>(&mut connection).await })
            .await;
        if result.is_ok() {
            self.releasing()
                .remove(&lease.group, |pending| pending.id == lease.id);
        }
        result
    }

    fn releasing(&self) -> std::sync::MutexGuard<'_, Releasing> {
        self.releasing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The ids of `group`'s leases being released that are held in a bucket of `checks`,
    /// separated by spaces (empty: none).
    fn releasing_in(&self, group: &str, checks: &[Check]) -> String {
        let releasing = self.releasing();
        let mut ids = String::new();
        let Some(leases) = releasing.by_group.get(group) else {
            return ids;
        };
        for lease in leases
            .iter()
            .filter(|lease| lease.keys.iter().any(|key| frees(checks, key)))
        {
            if !ids.is_empty() {
                ids.push(' ');
            }
            ids.push_str(&lease.id);
        }
        ids
    }
}

/// Whether a decision of `checks` frees a lease held in bucket `key`: one of its concurrency
/// checks is on that bucket.
fn frees(checks: &[Check], key: &str) -> bool {
    checks
        .iter()
        .any(|c| matches!(c.rule, Rule::Concurrency { .. }) && c.key == key)
}

/// Appends `text` with `%`, `{` and `}` percent-encoded.
fn escape_into(out: &mut String, text: &str) {
    for ch in text.chars() {
        match ch {
            '%' => out.push_str("%25"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            _ => out.push(ch),
        }
    }
}

/// The script's four arguments for one rule (see `decide.lua`).
fn script_args(rule: &Rule) -> Result<ScriptArgs, StoreError> {
    let int = |n: u64| {
        i64::try_from(n).map_err(|_| StoreError::new(format!("limit {n} is too large for Redis")))
    };
    match *rule {
        Rule::Rate { limit, .. } => {
            let (t, tau) = rule
                .gcra()
                .ok_or_else(|| StoreError::new("a rate rule without GCRA parameters"))?;
            Ok(("r", t, tau, int(limit)?))
        }
        Rule::Quota {
            limit,
            period,
            cost,
        } => {
            let period = match period {
                Period::Day => 0,
                Period::Month => -1,
                Period::RollingDays(days) => i64::from(days.max(1)),
                other => {
                    return Err(StoreError::new(format!(
                        "quota period {} is not supported by the Redis store",
                        other.name()
                    )));
                }
            };
            Ok(("q", int(limit)?, int(cost)?, period))
        }
        Rule::Concurrency {
            limit,
            lease_ttl_us,
        } => Ok(("c", int(limit)?, lease_ttl_us.max(1), 0)),
        other => Err(StoreError::new(format!(
            "rule {other:?} is not supported by the Redis store"
        ))),
    }
}

/// Values in the script's reply for a check of `rule` (see `decide.lua`): a rate check's
/// `ahead`; a quota's resets at, reset and used; a concurrency check's live leases and wait.
fn reply_len(rule: &Rule) -> usize {
    match rule {
        Rule::Quota { .. } => 3,
        Rule::Concurrency { .. } => 2,
        _ => 1,
    }
}

fn unsigned(n: i64) -> u64 {
    n.max(0).unsigned_abs()
}

/// The decision in the script's reply: whether it admitted, and each check's outcome derived
/// from the state it was decided on, with the formulas of [`faultline::limits`] (a check that
/// admitted in a refused decision reports its state unspent).
fn read_reply(reply: &[i64], checks: &[Check]) -> Result<(bool, Outcomes), StoreError> {
    let expected = 1 + checks.iter().map(|c| reply_len(&c.rule)).sum::<usize>();
    if reply.len() != expected {
        let mut text = String::new();
        let _ = write!(
            text,
            "the limit script answered {} values for {} checks",
            reply.len(),
            checks.len()
        );
        return Err(StoreError::new(text));
    }
    let admitted = reply[0] == 1;
    let mut rest = &reply[1..];
    let mut outcomes = Outcomes::new();
    for check in checks {
        let (v, tail) = rest.split_at(reply_len(&check.rule));
        rest = tail;
        let limit = check.rule.limit();
        let outcome = match check.rule {
            Rule::Quota { cost, .. } => {
                let (resets_at, reset, used) = (v[0], v[1], unsigned(v[2]));
                let after = used.saturating_add(cost);
                if after <= limit {
                    // Spent only when the whole decision admitted.
                    let used = if admitted { after } else { used };
                    Outcome::new(
                        true,
                        limit,
                        limit - used,
                        reset,
                        0,
                        Some(resets_at),
                        Some(used),
                    )
                } else {
                    let left = limit.saturating_sub(used);
                    Outcome::new(
                        false,
                        limit,
                        left,
                        reset,
                        reset,
                        Some(resets_at),
                        Some(used),
                    )
                }
            }
            Rule::Concurrency { .. } => {
                let (live, wait) = (unsigned(v[0]), v[1]);
                if live < limit {
                    let remaining = limit - live - u64::from(admitted);
                    Outcome::new(true, limit, remaining, 0, 0, None, None)
                } else {
                    Outcome::new(false, limit, 0, 0, wait, None, None)
                }
            }
            _ => {
                let (t, tau) = check
                    .rule
                    .gcra()
                    .ok_or_else(|| StoreError::new("a rate rule without GCRA parameters"))?;
                let ahead = v[0];
                if ahead <= tau {
                    // Unspent (a refused decision), the state is one interval less ahead.
                    let ahead = if admitted { ahead } else { ahead - t };
                    Outcome::new(
                        true,
                        limit,
                        unsigned((tau - ahead) / t),
                        ahead,
                        0,
                        None,
                        None,
                    )
                } else {
                    Outcome::new(false, limit, 0, ahead - t, ahead - tau, None, None)
                }
            }
        };
        outcomes.push(outcome);
    }
    Ok((admitted, outcomes))
}

impl LimitStore for RedisLimitStore {
    fn decide<'a>(
        &'a self,
        group: &'a str,
        checks: &'a [Check],
        now_us: Option<i64>,
    ) -> StoreFuture<'a, Decision> {
        Box::pin(self.decide_inner(group, checks, now_us))
    }

    fn release(&self, lease: Lease) -> StoreFuture<'_, ()> {
        Box::pin(async move { self.release_inner(&lease).await })
    }

    /// Notes `lease` as being released, so that this process's next decisions do not count it
    /// whichever reaches Redis first; the release itself still takes [`LimitStore::release`].
    fn release_ready(&self, lease: &Lease) -> bool {
        if !lease.keys.is_empty() {
            let mut releasing = self.releasing();
            if releasing.count == PENDING_RELEASES {
                *releasing = Releasing::default();
            }
            releasing.count += 1;
            match releasing.by_group.get_mut(lease.group.as_str()) {
                Some(leases) => leases.push(lease.clone()),
                None => {
                    releasing
                        .by_group
                        .insert(lease.group.clone(), vec![lease.clone()]);
                }
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> RedisLimitStore {
        RedisLimitStore::connect("redis://127.0.0.1:1")
            .expect("a valid URL")
            .with_prefix("p{x}%")
    }

    #[test]
    fn leases_being_released_are_carried_by_their_group_and_bounded() {
        let store = store();
        let lease = |group: &str, n: usize| Lease::new(group, format!("l{n}"), vec!["c".into()]);
        let in_flight = |key: &str| {
            Check::new(
                key,
                Rule::Concurrency {
                    limit: 1,
                    lease_ttl_us: 1,
                },
            )
        };
        let rate = Check::new(
            "c",
            Rule::Rate {
                limit: 1,
                window_us: 1,
            },
        );
        let c = [in_flight("c")];
        assert!(
            !store.release_ready(&lease("a", 0)),
            "the release still has to run"
        );
        assert!(!store.release_ready(&lease("b", 1)));
        assert!(!store.release_ready(&Lease::new("a", "none", Vec::new())));
        assert!(!store.release_ready(&lease("a", 2)));
        assert!(!store.release_ready(&Lease::new("a", "both", vec!["c".into(), "d".into()])));
        // A lease in no bucket is not remembered; each group carries only its own, and only
        // leases held in a bucket of the decision's concurrency checks.
        assert_eq!(store.releasing_in("a", &c), "l0 l2 both");
        assert_eq!(store.releasing_in("a", &[in_flight("d")]), "both");
        assert_eq!(
            store.releasing_in("a", &[in_flight("d"), in_flight("c")]),
            "l0 l2 both"
        );
        assert_eq!(store.releasing_in("a", &[rate]), "");
        assert_eq!(store.releasing_in("b", &c), "l1");
        assert_eq!(store.releasing_in("c", &c), "");
        store
            .releasing()
            .remove("a", |l| l.id == "l0" || l.id == "both");
        assert_eq!(store.releasing_in("a", &c), "l2");
        store.releasing().remove("a", |l| l.id == "l2");
        assert!(
            !store.releasing().by_group.contains_key("a"),
            "no empty lists kept"
        );
        assert_eq!(store.releasing().count, 1);
        // At most PENDING_RELEASES: one more and they are all forgotten (they lapse).
        for n in 3..2 + PENDING_RELEASES {
            store.release_ready(&lease("b", n));
        }
        assert_eq!(store.releasing().count, PENDING_RELEASES);
        assert!(store.releasing_in("b", &c).starts_with("l1 l3 "));
        store.release_ready(&lease("a", 9999));
        assert_eq!(store.releasing().count, 1);
        assert_eq!(store.releasing_in("b", &c), "");
        assert_eq!(store.releasing_in("a", &c), "l9999");
    }

    #[test]
    fn the_hash_tag_is_exactly_prefix_and_group() {
        let store = store();
        assert_eq!(store.bucket_key("org", "k"), "{p%7Bx%7D%25:org}:k");
        // A key with braces stays outside the tag: Redis hashes only up to the first `}`.
        assert_eq!(store.bucket_key("g", "a{b}"), "{p%7Bx%7D%25:g}:a{b}");
        // Distinct groups never share a key, even when one is the other with a brace.
        assert_ne!(store.bucket_key("a}:b", "c"), store.bucket_key("a", "b}:c"));
    }

    #[test]
    fn single_slot_batches_know_each_decisions_cluster_slot() {
        let checks = [Check::new(
            "k",
            Rule::Rate {
                limit: 1,
                window_us: 1,
            },
        )];
        let plain = RedisLimitStore::connect("redis://127.0.0.1:1")
            .expect("a valid URL")
            .with_prefix("app");
        let request = plain
            .request("org", &checks, None, String::new(), String::new(), false)
            .expect("encoded");
        assert_eq!(request.keys, ["{app:org}:k"]);
        let sloted = plain.with_single_slot_batches(true);
        let request = sloted
            .request("org", &checks, None, String::new(), String::new(), false)
            .expect("encoded");
        // The slot Redis Cluster gives `{app:org}:k`: that of its tag, `app:org`.
        assert_eq!(request.slot, cluster_slot(b"app:org"));
        assert_ne!(
            request.slot,
            sloted
                .request("org2", &checks, None, String::new(), String::new(), false)
                .expect("encoded")
                .slot
        );
    }

    #[test]
    fn lease_ids_are_unique_per_decision() {
        let store = store();
        let first = store.new_lease_id();
        assert_ne!(first, store.new_lease_id());
        assert_ne!(
            first,
            self::store().new_lease_id(),
            "another store, another seed"
        );
    }

    #[test]
    fn a_reply_of_the_wrong_length_is_an_error_not_a_panic() {
        let checks = [Check::new(
            "k",
            Rule::Rate {
                limit: 1,
                window_us: 1,
            },
        )];
        let error = read_reply(&[1], &checks).expect_err("too short");
        assert!(!error.is_unavailable());
    }
}
