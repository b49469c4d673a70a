//! [`LimitStore`]: the one trait every limit backend implements, and [`MemoryLimitStore`].

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use faultline::clock::Clock;
use faultline::limits::{self, BucketState, Outcome, Rule};
use hashbrown::HashTable;
use smallvec::SmallVec;

pub use crate::store::StoreError;

/// The future a store method returns (boxed, so that stores can sit behind `dyn LimitStore`).
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// One bucket to check for a request: its key and its rule.
///
/// The key is unique within its group (e.g. `minute:key_123`); a store may prefix it, and keeps
/// every key of one group together (Redis: under one hash tag, so one script can touch them
/// all on a cluster).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Check {
    /// The bucket's key within the group.
    pub key: String,
    /// What it limits, with the numbers.
    pub rule: Rule,
}

impl Check {
    /// A check of `rule` on the bucket `key`.
    pub fn new(key: impl Into<String>, rule: Rule) -> Self {
        Check {
            key: key.into(),
            rule,
        }
    }
}

/// The concurrency leases one admitted request holds: give them back with
/// [`LimitStore::release`] when its response is over.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Lease {
    /// The group the buckets are in.
    pub group: String,
    /// The lease's id (unique per decision).
    pub id: String,
    /// The keys of the concurrency buckets that hold it.
    pub keys: Vec<String>,
}

impl Lease {
    /// A lease `id` held in the buckets `keys` of `group`.
    pub fn new(group: impl Into<String>, id: impl Into<String>, keys: Vec<String>) -> Self {
        Lease {
            group: group.into(),
            id: id.into(),
            keys,
        }
    }

    /// The lease `id` of `group` held in the bucket of every concurrency check in `checks`.
    pub fn for_checks(group: impl Into<String>, id: impl Into<String>, checks: &[Check]) -> Self {
        let keys = checks
            .iter()
            .filter(|c| matches!(c.rule, Rule::Concurrency { .. }))
            .map(|c| c.key.clone())
            .collect();
        Lease::new(group, id, keys)
    }
}

/// How many outcomes a [`Decision`] holds without allocating (more made the common
/// two-policy decision slower: a larger `Decision` to build and move).
pub const INLINE_OUTCOMES: usize = 2;

/// The outcomes of a decision, one per check: inline up to [`INLINE_OUTCOMES`] checks
/// (derefs to `[Outcome]`; built from a `Vec<Outcome>` with `.into()`).
pub type Outcomes = SmallVec<[Outcome; INLINE_OUTCOMES]>;

/// A store's answer for one request: every check decided as one step.
///
/// # Several policies, one decision
///
/// `admitted` is true only when every check admits; then every check's state was spent. When
/// any check refuses, no state changed, and [`Decision::retry_after_us`] is the longest exact
/// wait among the refusing checks.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Decision {
    /// Whether the request may go on.
    pub admitted: bool,
    /// One outcome per check, in the order of the checks.
    pub outcomes: Outcomes,
    /// The exact wait in microseconds before the same request would be admitted (0 when it
    /// is).
    pub retry_after_us: i64,
    /// The concurrency lease taken, when admitted with at least one concurrency check.
    pub lease: Option<Lease>,
}

impl Decision {
    /// Two checks that both admit, taking no lease (the memory store's common case, built
    /// without deriving what is known).
    fn admitted_pair(a: Outcome, b: Outcome) -> Self {
        Decision {
            admitted: true,
            outcomes: Outcomes::from_buf([a, b]),
            retry_after_us: 0,
            lease: None,
        }
    }

    /// A decision from its parts (`outcomes`: a `Vec<Outcome>` or [`Outcomes`]);
    /// `retry_after_us` is derived from the outcomes (the maximum over refusing ones).
    pub fn new(admitted: bool, outcomes: impl Into<Outcomes>, lease: Option<Lease>) -> Self {
        let outcomes = outcomes.into();
        let retry_after_us = outcomes
            .iter()
            .filter(|o| !o.admitted)
            .map(|o| o.retry_after_us)
            .max()
            .unwrap_or(0);
        Decision {
            admitted,
            outcomes,
            retry_after_us,
            lease,
        }
    }

    /// `Retry-After` in whole seconds: the exact wait rounded **up**, at least 1 for a refusal
    /// (0 when admitted).
    pub fn retry_after_secs(&self) -> u64 {
        if self.admitted {
            0
        } else {
            limits::ceil_secs(self.retry_after_us).max(1)
        }
    }

    /// The indexes of the refusing checks.
    pub fn refusing(&self) -> impl Iterator<Item = usize> + '_ {
        self.outcomes
            .iter()
            .enumerate()
            .filter(|(_, o)| !o.admitted)
            .map(|(i, _)| i)
    }
}

/// Where limit buckets live.
///
/// # What every store promises
///
/// - [`LimitStore::decide`] gives exactly the answer of [`faultline::limits::decide`] on its
///   stored states, and stores the new states only when every check admits, atomically: two
///   concurrent decisions never both spend the last unit;
/// - the store owns the clock (the in-memory store its [`Clock`], Redis its `TIME`), but `now_us`
///   (unix microseconds), when given, replaces it for that call: that is how the shared suite
///   (`limit::suite`, feature `store-suite`) drives any store through time;
/// - a state the model says is idle ([`BucketState::idle_at_us`]) may be forgotten;
/// - an unreachable or slow backend answers [`StoreError::unavailable`], never hangs.
pub trait LimitStore: Send + Sync + 'static {
    /// Decides `checks` for one request, all buckets in `group` (e.g. the org id).
    fn decide<'a>(
        &'a self,
        group: &'a str,
        checks: &'a [Check],
        now_us: Option<i64>,
    ) -> StoreFuture<'a, Decision>;

    /// Gives a concurrency lease back; a lease already gone (lapsed, released) is fine.
    fn release(&self, lease: Lease) -> StoreFuture<'_, ()>;

    /// The decision at once, for a store that needs no I/O (the in-memory one); `None` (the
    /// default): use [`LimitStore::decide`]. Lets the layer skip boxing a future.
    fn decide_ready(
        &self,
        group: &str,
        checks: &[Check],
        now_us: Option<i64>,
    ) -> Option<Result<Decision, StoreError>> {
        let _ = (group, checks, now_us);
        None
    }

    /// Called the moment `lease` is given back, before anything else is done with it: `true`
    /// when the store released it already (it needs no I/O), `false` (the default) when
    /// [`LimitStore::release`] is still to run. A store whose release travels (Redis) may note
    /// the lease here, so that decisions made before that release arrives do not count it.
    fn release_ready(&self, lease: &Lease) -> bool {
        let _ = lease;
        false
    }
}

impl<S: LimitStore + ?Sized> LimitStore for Arc<S> {
    fn decide<'a>(
        &'a self,
        group: &'a str,
        checks: &'a [Check],
        now_us: Option<i64>,
    ) -> StoreFuture<'a, Decision> {
        (**self).decide(group, checks, now_us)
    }

    fn release(&self, lease: Lease) -> StoreFuture<'_, ()> {
        (**self).release(lease)
    }

    fn decide_ready(
        &self,
        group: &str,
        checks: &[Check],
        now_us: Option<i64>,
    ) -> Option<Result<Decision, StoreError>> {
        (**self).decide_ready(group, checks, now_us)
    }

    fn release_ready(&self, lease: &Lease) -> bool {
        (**self).release_ready(lease)
    }
}

/// Shards of the in-memory store, unless told otherwise.
pub const DEFAULT_SHARDS: usize = 64;
/// Checks of one decision the store works on without allocating (on its stack).
const SCRATCH: usize = 8;
/// Decisions a shard takes between sweeps of its idle buckets.
const SWEEP_EVERY: u32 = 1024;

/// Buckets in memory, for one process: sharded by group, with no lock shared by all groups.
///
/// # One lock per shard, not per store
///
/// A group's buckets live in one of [`DEFAULT_SHARDS`] shards, chosen by a hash of the group,
/// each behind its own mutex: decisions for groups in different shards never wait for each
/// other. Idle buckets ([`BucketState::idle_at_us`] passed) are swept out of a shard every
/// 1024 decisions it takes, so memory follows the active callers, not every caller ever seen.
///
/// ```
/// # async fn demo() {
/// use faultline::limits::{Rule, MICROS_PER_SECOND as S};
/// use faultline_axum::limit::{Check, LimitStore, MemoryLimitStore};
/// let store = MemoryLimitStore::new();
/// let checks = [Check::new("minute:key_1", Rule::Rate { limit: 1, window_us: 60 * S })];
/// assert!(store.decide("org_1", &checks, None).await.unwrap().admitted);
/// let refused = store.decide("org_1", &checks, None).await.unwrap();
/// assert!(!refused.admitted);
/// assert!(refused.retry_after_secs() >= 59);
/// # }
/// ```
#[derive(Clone)]
pub struct MemoryLimitStore {
    inner: Arc<Inner>,
}

struct Inner {
    shards: Box<[Mutex<Shard>]>,
    seed: u64,
    clock: Arc<dyn Clock>,
}

#[derive(Default)]
struct Shard {
    /// Every bucket of the shard's groups, found by a hash of group and key computed once
    /// per check (and kept in the slot, so growing the table rehashes nothing).
    buckets: HashTable<Slot>,
    since_sweep: u32,
}

/// One bucket: its full name (group then key, inline when short, so that finding it reads
/// one place in memory), its hash and its state.
struct Slot {
    hash: u64,
    group_len: usize,
    name: SmallVec<[u8; 40]>,
    state: BucketState,
}

impl Slot {
    fn new(hash: u64, group: &str, key: &str, state: BucketState) -> Self {
        let mut name = SmallVec::with_capacity(group.len() + key.len());
        name.extend_from_slice(group.as_bytes());
        name.extend_from_slice(key.as_bytes());
        Slot {
            hash,
            group_len: group.len(),
            name,
            state,
        }
    }

    fn is(&self, group: &str, key: &str) -> bool {
        self.group_len == group.len()
            && self.name.len() == group.len() + key.len()
            && same(&self.name[..group.len()], group.as_bytes())
            && same(&self.name[group.len()..], key.as_bytes())
    }
}

/// A seeded folded multiply: a few nanoseconds for a short name where SipHash takes tens,
/// with a seed per process that callers cannot guess.
const FOLD_K: u64 = 0x9e37_79b9_7f4a_7c15;

fn fold(a: u64, b: u64) -> u64 {
    let product = u128::from(a).wrapping_mul(u128::from(b));
    (product as u64) ^ ((product >> 64) as u64)
}

/// Whether two byte strings of the same length are equal: up to 16 bytes with two word
/// comparisons each way (overlapping), inline, instead of a call to `memcmp`.
fn same(a: &[u8], b: &[u8]) -> bool {
    let len = a.len();
    if len != b.len() {
        return false;
    }
    match len {
        0 => true,
        1..=3 => a == b,
        4..=7 => word4(a, 0) == word4(b, 0) && word4(a, len - 4) == word4(b, len - 4),
        8..=16 => word8(a, 0) == word8(b, 0) && word8(a, len - 8) == word8(b, len - 8),
        _ => a == b,
    }
}

/// The little-endian word at `bytes[at..at + 8]` (the caller checks the length).
fn word8(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// The little-endian word at `bytes[at..at + 4]` (the caller checks the length).
fn word4(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u64::from(u32::from_le_bytes(word))
}

/// Folds `bytes` into `state`: one multiply for up to 16 bytes (the usual group or key, read
/// as two overlapping words, without a copy loop), then one per 16 more; the length takes part.
fn fold_bytes(state: u64, seed: u64, bytes: &[u8]) -> u64 {
    let len = bytes.len();
    let state = state ^ ((len as u64) << 56);
    let (a, b) = match len {
        0 => (0, 0),
        1..=3 => (
            u64::from(bytes[0]) | u64::from(bytes[len / 2]) << 8 | u64::from(bytes[len - 1]) << 16,
            0,
        ),
        4..=7 => (word4(bytes, 0), word4(bytes, len - 4)),
        8..=16 => (word8(bytes, 0), word8(bytes, len - 8)),
        _ => {
            let mut state = state;
            let mut at = 0;
            while len - at > 16 {
                state = fold(
                    state ^ word8(bytes, at),
                    FOLD_K ^ seed ^ word8(bytes, at + 8),
                );
                at += 16;
            }
            return fold(
                state ^ word8(bytes, len - 16),
                FOLD_K ^ seed ^ word8(bytes, len - 8),
            );
        }
    };
    fold(state ^ a, FOLD_K ^ seed ^ b)
}

impl std::fmt::Debug for MemoryLimitStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryLimitStore")
            .field("shards", &self.inner.shards.len())
            .finish_non_exhaustive()
    }
}

impl Default for MemoryLimitStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryLimitStore {
    /// An empty store on the system clock (read through the CPU's counter:
    /// [`super::CounterClock`]) with [`DEFAULT_SHARDS`] shards.
    pub fn new() -> Self {
        Self::with_shards(DEFAULT_SHARDS, Arc::new(super::CounterClock::new()))
    }

    /// An empty store on `clock` with `shards` shards (at least one).
    pub fn with_shards(shards: usize, clock: Arc<dyn Clock>) -> Self {
        let shards = (0..shards.max(1))
            .map(|_| Mutex::new(Shard::default()))
            .collect();
        MemoryLimitStore {
            inner: Arc::new(Inner {
                shards,
                seed: rand::random::<u64>() | 1,
                clock,
            }),
        }
    }

    /// The same store reading time from `clock`.
    #[must_use]
    pub fn with_clock(self, clock: Arc<dyn Clock>) -> Self {
        Self::with_shards(self.inner.shards.len(), clock)
    }

    /// The hash of `group`: it picks the shard, and every key's hash starts from it.
    fn group_hash(&self, group: &str) -> u64 {
        let seed = self.inner.seed;
        fold_bytes(seed, seed, group.as_bytes())
    }

    fn key_hash(&self, group_hash: u64, key: &str) -> u64 {
        fold_bytes(group_hash, self.inner.seed.rotate_left(17), key.as_bytes())
    }

    fn shard(&self, group_hash: u64) -> &Mutex<Shard> {
        let i = (group_hash.rotate_left(29) % self.inner.shards.len() as u64) as usize;
        &self.inner.shards[i]
    }

    fn now_us(&self) -> i64 {
        self.inner.clock.now_unix_nanos().div_euclid(1_000)
    }

    /// [`LimitStore::decide`] without a future: the same decision, taken at once.
    ///
    /// # No allocation on the admitting path of rate and quota checks
    ///
    /// The group is hashed once, each key's hash continues from it, every bucket is found in
    /// one table of the group's shard, and the outcomes of up to [`INLINE_OUTCOMES`] checks
    /// live inline in the [`Decision`]: only a bucket seen for the first time, a concurrency
    /// lease or a refusal allocates.
    pub fn decide_now(&self, group: &str, checks: &[Check], now_us: Option<i64>) -> Decision {
        let now = now_us.unwrap_or_else(|| self.now_us());
        let has_lease = checks
            .iter()
            .any(|c| matches!(c.rule, Rule::Concurrency { .. }));
        let lease_id = if has_lease {
            let mut id = String::with_capacity(12);
            id.push('l');
            limits::push_decimal(&mut id, next_lease_number());
            id
        } else {
            String::new()
        };
        let group_hash = self.group_hash(group);
        let mut hashes: SmallVec<[u64; SCRATCH]> = SmallVec::new();
        if checks.len() > 1 {
            hashes.extend(checks.iter().map(|c| self.key_hash(group_hash, &c.key)));
        }
        // A panic cannot happen while the lock is held with a half-written group: states are
        // replaced whole, after every check was evaluated.
        let mut shard = self
            .shard(group_hash)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        shard.since_sweep += 1;
        if shard.since_sweep >= SWEEP_EVERY {
            shard.since_sweep = 0;
            sweep(&mut shard.buckets, now);
        }
        let buckets = &mut shard.buckets;
        if let [check] = checks {
            // One check: one lookup, and the state is replaced in place when admitted.
            let hash = self.key_hash(group_hash, &check.key);
            let slot = buckets.find_mut(hash, |s| s.is(group, &check.key));
            let (outcome, state) =
                limits::evaluate(&check.rule, slot.as_ref().map(|s| &s.state), now, &lease_id);
            if !outcome.admitted {
                return Decision {
                    admitted: false,
                    outcomes: Outcomes::from_elem(outcome, 1),
                    retry_after_us: outcome.retry_after_us,
                    lease: None,
                };
            }
            match slot {
                Some(slot) => slot.state = state,
                None => {
                    let slot = Slot::new(hash, group, &check.key, state);
                    buckets.insert_unique(hash, slot, |s| s.hash);
                }
            }
            let lease = has_lease.then(|| Lease::new(group, lease_id, vec![check.key.clone()]));
            return Decision {
                admitted: true,
                outcomes: Outcomes::from_elem(outcome, 1),
                retry_after_us: 0,
                lease,
            };
        }
        if let [a, b] = checks
            && !has_lease
            && a.key != b.key
        {
            // Two rate or quota checks on two buckets (the common case): both evaluated from
            // where they are, both written when both admit, nothing copied through a list.
            let (ha, hb) = (hashes[0], hashes[1]);
            // Both buckets known (every request but a caller's first): one probe each, and
            // the states replaced in place.
            let names = [a.key.as_str(), b.key.as_str()];
            if let [Some(slot_a), Some(slot_b)] =
                buckets.get_disjoint_mut([ha, hb], |i, s| s.is(group, names[i]))
            {
                let (oa, sa) = limits::evaluate(&a.rule, Some(&slot_a.state), now, &lease_id);
                let (ob, sb) = limits::evaluate(&b.rule, Some(&slot_b.state), now, &lease_id);
                if oa.admitted && ob.admitted {
                    slot_a.state = sa;
                    slot_b.state = sb;
                    return Decision::admitted_pair(oa, ob);
                }
            } else {
                // A bucket seen for the first time: inserted after both are evaluated.
                let ia = buckets.find_bucket_index(ha, |s| s.is(group, &a.key));
                let ib = buckets.find_bucket_index(hb, |s| s.is(group, &b.key));
                let state =
                    |i: Option<usize>| i.and_then(|i| buckets.get_bucket(i)).map(|s| &s.state);
                let (oa, sa) = limits::evaluate(&a.rule, state(ia), now, &lease_id);
                let (ob, sb) = limits::evaluate(&b.rule, state(ib), now, &lease_id);
                if oa.admitted && ob.admitted {
                    let fresh = [(ia, sa), (ib, sb)].map(|(at, next)| {
                        match at.and_then(|i| buckets.get_bucket_mut(i)) {
                            Some(bucket) => {
                                bucket.state = next;
                                None
                            }
                            None => Some(next),
                        }
                    });
                    // New buckets last: an insertion may move the others.
                    for ((hash, check), next) in [(ha, a), (hb, b)].into_iter().zip(fresh) {
                        if let Some(next) = next {
                            let slot = Slot::new(hash, group, &check.key, next);
                            buckets.insert_unique(hash, slot, |s| s.hash);
                        }
                    }
                    return Decision::admitted_pair(oa, ob);
                }
            }
            // A refusal: the general path below answers it (nothing was written).
        }
        // First pass: every check against the state as it is, keeping where each bucket is
        // and what it would become (a concurrency bucket: only that it takes the lease, added
        // in place below instead of copying its leases).
        let mut outcomes = Outcomes::new();
        let mut next: SmallVec<[(Option<usize>, Next); SCRATCH]> = SmallVec::new();
        let mut admitted = true;
        for (check, &hash) in checks.iter().zip(&hashes) {
            let at = buckets.find_bucket_index(hash, |s| s.is(group, &check.key));
            let state = at.and_then(|i| buckets.get_bucket(i)).map(|s| &s.state);
            let (outcome, then) = match check.rule {
                Rule::Concurrency {
                    limit,
                    lease_ttl_us,
                } => (
                    concurrency_outcome(limit, state, now),
                    Next::Lease(now.saturating_add(lease_ttl_us)),
                ),
                _ => {
                    let (outcome, state) = limits::evaluate(&check.rule, state, now, &lease_id);
                    (outcome, Next::State(state))
                }
            };
            admitted &= outcome.admitted;
            outcomes.push(outcome);
            next.push((at, then));
        }
        if !admitted {
            // Refused: nothing changes; the model reports the unspent state of every check.
            let pairs: Vec<(&Rule, Option<&BucketState>)> = checks
                .iter()
                .zip(&next)
                .map(|(c, (at, _))| {
                    let state = at.and_then(|i| buckets.get_bucket(i));
                    (&c.rule, state.map(|s| &s.state))
                })
                .collect();
            let verdict = limits::decide(now, &pairs, &lease_id);
            return Decision {
                admitted: false,
                outcomes: verdict.outcomes.into(),
                retry_after_us: verdict.retry_after_us,
                lease: None,
            };
        }
        // Second pass: every check admitted, so each state is replaced by its successor: the
        // buckets found first (their places hold until something is inserted), then the new
        // ones. Two checks of one bucket: the later write wins, as in the Redis script.
        let mut fresh: SmallVec<[usize; SCRATCH]> = SmallVec::new();
        for (i, (at, then)) in next.iter_mut().enumerate() {
            match at.and_then(|at| buckets.get_bucket_mut(at)) {
                Some(slot) => then.apply(&mut slot.state, now, &lease_id),
                None => fresh.push(i),
            }
        }
        for i in fresh {
            let (hash, key) = (hashes[i], checks[i].key.as_str());
            let then = &mut next[i].1;
            match buckets.find_mut(hash, |s| s.is(group, key)) {
                Some(slot) => then.apply(&mut slot.state, now, &lease_id),
                None => {
                    let mut state = BucketState::Concurrency { leases: Vec::new() };
                    then.apply(&mut state, now, &lease_id);
                    let slot = Slot::new(hash, group, key, state);
                    buckets.insert_unique(hash, slot, |s| s.hash);
                }
            }
        }
        let lease = has_lease.then(|| Lease::for_checks(group, lease_id, checks));
        Decision {
            admitted: true,
            outcomes,
            retry_after_us: 0,
            lease,
        }
    }

    /// [`LimitStore::release`] without a future.
    pub fn release_now(&self, lease: &Lease) {
        let group_hash = self.group_hash(&lease.group);
        let mut shard = self
            .shard(group_hash)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for key in &lease.keys {
            let hash = self.key_hash(group_hash, key);
            if let Some(Slot {
                state: BucketState::Concurrency { leases },
                ..
            }) = shard.buckets.find_mut(hash, |s| s.is(&lease.group, key))
            {
                leases.retain(|(id, _)| *id != lease.id);
            }
        }
    }

    /// How many buckets the store holds (idle ones included until swept).
    pub fn len(&self) -> usize {
        self.inner
            .shards
            .iter()
            .map(|s| {
                let shard = s.lock().unwrap_or_else(PoisonError::into_inner);
                shard.buckets.len()
            })
            .sum()
    }

    /// Whether the store holds no bucket.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets every idle bucket now (what the periodic sweep does), on the store's clock.
    pub fn sweep(&self) {
        let now = self.now_us();
        for shard in &self.inner.shards {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            sweep(&mut shard.buckets, now);
        }
    }
}

/// A lease number no other lease of the process has had.
///
/// # Unique without a shared counter per lease
///
/// Each thread takes a block of numbers from the process's counter and hands them out one by
/// one: a single counter bumped by every lease made the cores wait on each other's cache
/// line. Blocks never overlap, so numbers never repeat (they are only not in order across
/// threads, which nothing needs).
fn next_lease_number() -> u64 {
    use std::cell::Cell;
    const BLOCK: u64 = 1024;
    static NEXT_BLOCK: AtomicU64 = AtomicU64::new(1);
    thread_local! {
        /// The next number of this thread's block, and the end of the block.
        static OWN: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
    }
    OWN.with(|own| {
        let (mut next, mut end) = own.get();
        if next == end {
            next = NEXT_BLOCK.fetch_add(BLOCK, Ordering::Relaxed);
            end = next + BLOCK;
        }
        own.set((next + 1, end));
        next
    })
}

/// What an admitted check writes.
enum Next {
    /// The state [`limits::evaluate`] gave.
    State(BucketState),
    /// The decision's lease, expiring at this instant, added to the leases still live.
    Lease(i64),
}

impl Next {
    /// Writes the successor into `state` (taking it out of `self`).
    fn apply(&mut self, state: &mut BucketState, now: i64, lease_id: &str) {
        match self {
            Next::State(next) => *state = std::mem::replace(next, BucketState::Rate { tat_us: 0 }),
            Next::Lease(expires) => {
                let lease = (lease_id.to_owned(), *expires);
                match state {
                    BucketState::Concurrency { leases } => {
                        leases.retain(|(_, at)| *at > now);
                        leases.push(lease);
                    }
                    other => {
                        *other = BucketState::Concurrency {
                            leases: vec![lease],
                        };
                    }
                }
            }
        }
    }
}

/// The outcome [`limits::evaluate`] gives a concurrency check, without copying the leases:
/// live leases are those expiring after `now`.
fn concurrency_outcome(limit: u64, state: Option<&BucketState>, now: i64) -> Outcome {
    let leases: &[(String, i64)] = match state {
        Some(BucketState::Concurrency { leases }) => leases,
        _ => &[],
    };
    let live = leases.iter().filter(|(_, at)| *at > now);
    let (active, earliest) = live.fold((0u64, None::<i64>), |(n, soonest), (_, at)| {
        (n + 1, Some(soonest.map_or(*at, |s| s.min(*at))))
    });
    if active < limit {
        Outcome::new(true, limit, limit - active - 1, 0, 0, None, None)
    } else {
        let wait = earliest.map_or(limits::CONCURRENCY_RETRY_US, |at| {
            (at - now).min(limits::CONCURRENCY_RETRY_US)
        });
        Outcome::new(false, limit, 0, 0, wait, None, None)
    }
}

fn sweep(buckets: &mut HashTable<Slot>, now_us: i64) {
    buckets.retain(|slot| slot.state.idle_at_us() > now_us);
}

impl LimitStore for MemoryLimitStore {
    fn decide<'a>(
        &'a self,
        group: &'a str,
        checks: &'a [Check],
        now_us: Option<i64>,
    ) -> StoreFuture<'a, Decision> {
        Box::pin(std::future::ready(Ok(
            self.decide_now(group, checks, now_us)
        )))
    }

    fn release(&self, lease: Lease) -> StoreFuture<'_, ()> {
        self.release_now(&lease);
        Box::pin(std::future::ready(Ok(())))
    }

    fn decide_ready(
        &self,
        group: &str,
        checks: &[Check],
        now_us: Option<i64>,
    ) -> Option<Result<Decision, StoreError>> {
        Some(Ok(self.decide_now(group, checks, now_us)))
    }

    fn release_ready(&self, lease: &Lease) -> bool {
        self.release_now(lease);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_numbers_never_repeat_across_threads_and_blocks() {
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(|| (0..3000).map(|_| next_lease_number()).collect::<Vec<_>>())
            })
            .collect();
        let mut seen = std::collections::HashSet::new();
        for thread in threads {
            for n in thread.join().expect("no panic") {
                assert!(seen.insert(n), "lease number {n} given twice");
            }
        }
        assert_eq!(seen.len(), 12_000);
    }
}
