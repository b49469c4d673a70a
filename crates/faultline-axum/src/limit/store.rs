//! [`LimitStore`]: the one trait every limit backend implements, and [`MemoryLimitStore`].

use std::collections::HashMap;
use std::future::Future;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use faultline::clock::{Clock, SystemClock};
use faultline::limits::{self, BucketState, Outcome, Rule};

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
}

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
    pub outcomes: Vec<Outcome>,
    /// The exact wait in microseconds before the same request would be admitted (0 when it
    /// is).
    pub retry_after_us: i64,
    /// The concurrency lease taken, when admitted with at least one concurrency check.
    pub lease: Option<Lease>,
}

impl Decision {
    /// A decision from its parts; `retry_after_us` is derived from the outcomes (the maximum
    /// over refusing ones).
    pub fn new(admitted: bool, outcomes: Vec<Outcome>, lease: Option<Lease>) -> Self {
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

    /// Releases at once when the store needs no I/O and says `true`; `false` (the default):
    /// use [`LimitStore::release`].
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
    hasher: Fold,
    clock: Arc<dyn Clock>,
    next_lease: AtomicU64,
}

#[derive(Default)]
struct Shard {
    buckets: HashMap<Name, BucketState, Fold>,
    since_sweep: u32,
}

/// A bucket's full name: its group and its key. One flat table per shard, looked up by
/// `(&str, &str)` without building a `Name` (through [`BucketName`]).
type Name = (Box<str>, Box<str>);

/// A group and key, owned or borrowed, hashed and compared the same way.
trait BucketName {
    fn parts(&self) -> (&str, &str);
}

impl BucketName for Name {
    fn parts(&self) -> (&str, &str) {
        (&self.0, &self.1)
    }
}

impl BucketName for (&str, &str) {
    fn parts(&self) -> (&str, &str) {
        (self.0, self.1)
    }
}

impl<'a> std::borrow::Borrow<dyn BucketName + 'a> for Name {
    fn borrow(&self) -> &(dyn BucketName + 'a) {
        self
    }
}

impl std::hash::Hash for dyn BucketName + '_ {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // Exactly as the tuple `(Box<str>, Box<str>)` hashes itself.
        let (group, key) = self.parts();
        group.hash(state);
        key.hash(state);
    }
}

impl PartialEq for dyn BucketName + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for dyn BucketName + '_ {}

/// A seeded folded-multiply hasher for bucket names: a few nanoseconds for a short key where
/// SipHash takes tens, and with a seed per process that callers cannot guess.
#[derive(Clone, Copy)]
struct Fold {
    seed: u64,
}

impl Default for Fold {
    fn default() -> Self {
        Fold {
            seed: rand::random::<u64>() | 1,
        }
    }
}

const FOLD_K: u64 = 0x9e37_79b9_7f4a_7c15;

fn fold(a: u64, b: u64) -> u64 {
    let product = u128::from(a).wrapping_mul(u128::from(b));
    (product as u64) ^ ((product >> 64) as u64)
}

/// The hasher of [`Fold`].
struct FoldHasher {
    state: u64,
    seed: u64,
}

impl BuildHasher for Fold {
    type Hasher = FoldHasher;

    fn build_hasher(&self) -> FoldHasher {
        FoldHasher {
            state: self.seed,
            seed: self.seed,
        }
    }
}

impl std::hash::Hasher for FoldHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.state = fold(self.state ^ u64::from_le_bytes(word), FOLD_K ^ self.seed);
        }
        let rest = chunks.remainder();
        let mut word = [0u8; 8];
        word[..rest.len()].copy_from_slice(rest);
        let tail = u64::from_le_bytes(word) ^ ((rest.len() as u64) << 59);
        self.state = fold(self.state ^ tail, FOLD_K ^ self.seed);
    }

    fn write_u8(&mut self, byte: u8) {
        self.state = fold(self.state ^ u64::from(byte), FOLD_K);
    }

    fn finish(&self) -> u64 {
        fold(self.state, FOLD_K.rotate_left(17))
    }
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
    /// An empty store on the system clock with [`DEFAULT_SHARDS`] shards.
    pub fn new() -> Self {
        Self::with_shards(DEFAULT_SHARDS, Arc::new(SystemClock))
    }

    /// An empty store on `clock` with `shards` shards (at least one).
    pub fn with_shards(shards: usize, clock: Arc<dyn Clock>) -> Self {
        let shards = (0..shards.max(1))
            .map(|_| Mutex::new(Shard::default()))
            .collect();
        MemoryLimitStore {
            inner: Arc::new(Inner {
                shards,
                hasher: Fold::default(),
                clock,
                next_lease: AtomicU64::new(1),
            }),
        }
    }

    /// The same store reading time from `clock`.
    #[must_use]
    pub fn with_clock(self, clock: Arc<dyn Clock>) -> Self {
        Self::with_shards(self.inner.shards.len(), clock)
    }

    fn shard(&self, group: &str) -> &Mutex<Shard> {
        let hash = self.inner.hasher.hash_one(group);
        let i = (hash % self.inner.shards.len() as u64) as usize;
        &self.inner.shards[i]
    }

    fn now_us(&self) -> i64 {
        self.inner.clock.now_unix_nanos().div_euclid(1_000)
    }

    /// [`LimitStore::decide`] without a future: the same decision, taken at once.
    pub fn decide_now(&self, group: &str, checks: &[Check], now_us: Option<i64>) -> Decision {
        let now = now_us.unwrap_or_else(|| self.now_us());
        let has_lease = checks
            .iter()
            .any(|c| matches!(c.rule, Rule::Concurrency { .. }));
        let lease_id = if has_lease {
            format!("l{}", self.inner.next_lease.fetch_add(1, Ordering::Relaxed))
        } else {
            String::new()
        };
        // A panic cannot happen while the lock is held with a half-written group: states are
        // replaced whole, after every check was evaluated.
        let mut shard = self
            .shard(group)
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
            let slot = buckets.get_mut(&(group, check.key.as_str()) as &dyn BucketName);
            let (outcome, state) = limits::evaluate(&check.rule, slot.as_deref(), now, &lease_id);
            if !outcome.admitted {
                return Decision::new(false, vec![outcome], None);
            }
            match slot {
                Some(slot) => *slot = state,
                None => {
                    buckets.insert((group.into(), check.key.as_str().into()), state);
                }
            }
            let lease = has_lease.then(|| Lease::new(group, lease_id, vec![check.key.clone()]));
            return Decision::new(true, vec![outcome], lease);
        }
        // First pass: every check against the state as it is.
        let mut outcomes = Vec::with_capacity(checks.len());
        for check in checks {
            let state = buckets.get(&(group, check.key.as_str()) as &dyn BucketName);
            outcomes.push(limits::evaluate(&check.rule, state, now, &lease_id).0);
        }
        if !outcomes.iter().all(|o| o.admitted) {
            // Refused: nothing changes; the model reports the unspent state of every check.
            let pairs: Vec<(&Rule, Option<&BucketState>)> = checks
                .iter()
                .map(|c| {
                    (
                        &c.rule,
                        buckets.get(&(group, c.key.as_str()) as &dyn BucketName),
                    )
                })
                .collect();
            let verdict = limits::decide(now, &pairs, &lease_id);
            return Decision {
                admitted: false,
                outcomes: verdict.outcomes,
                retry_after_us: verdict.retry_after_us,
                lease: None,
            };
        }
        // Second pass: every check admitted, so each state is replaced by its successor.
        for check in checks {
            match buckets.get_mut(&(group, check.key.as_str()) as &dyn BucketName) {
                Some(slot) => *slot = limits::evaluate(&check.rule, Some(slot), now, &lease_id).1,
                None => {
                    let state = limits::evaluate(&check.rule, None, now, &lease_id).1;
                    buckets.insert((group.into(), check.key.as_str().into()), state);
                }
            }
        }
        let lease = has_lease.then(|| {
            let keys = checks
                .iter()
                .filter(|c| matches!(c.rule, Rule::Concurrency { .. }))
                .map(|c| c.key.clone())
                .collect();
            Lease::new(group, lease_id, keys)
        });
        Decision {
            admitted: true,
            outcomes,
            retry_after_us: 0,
            lease,
        }
    }

    /// [`LimitStore::release`] without a future.
    pub fn release_now(&self, lease: &Lease) {
        let mut shard = self
            .shard(&lease.group)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for key in &lease.keys {
            let name: (&str, &str) = (&lease.group, key);
            if let Some(BucketState::Concurrency { leases }) =
                shard.buckets.get_mut(&name as &dyn BucketName)
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

fn sweep(buckets: &mut HashMap<Name, BucketState, Fold>, now_us: i64) {
    buckets.retain(|_, state| state.idle_at_us() > now_us);
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
