//! Group commit for [`crate::RedisLimitStore`]: decisions that arrive while every batch slot is
//! busy wait together and go to Redis as one `EVALSHA` of `decide.lua`, which decides them one
//! after the other.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use faultline_axum::StoreError;
use redis::{Cmd, ErrorKind, ServerErrorKind};
use tokio::sync::oneshot;

use crate::pool::RedisPool;

/// The script that decides a batch of requests (see its header for the arguments and the
/// reply).
pub(crate) const DECIDE_LUA: &str = include_str!("decide.lua");

/// Decisions per batch unless told otherwise.
pub(crate) const DEFAULT_MAX_BATCH: usize = 64;

/// Keys per batch at most (a single decision with more goes alone): the script hands them all to
/// one `MGET` through Lua's `unpack`, whose stack is bounded.
const MAX_KEYS: usize = 1024;

/// How batches are formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchOptions {
    /// Decisions per batch at most (at least 1).
    pub(crate) max_batch: usize,
    /// Batches in flight at most (at least 1).
    pub(crate) in_flight: usize,
    /// Only decisions whose hash tags hash to one Redis Cluster slot share a batch.
    pub(crate) single_slot: bool,
}

/// One check's arguments for the script: its kind and two or three numbers.
pub(crate) type ScriptArgs = (&'static str, i64, i64, i64);

/// One decision, encoded for the script.
pub(crate) struct Request {
    /// Its bucket keys, in the order of its checks.
    pub(crate) keys: Vec<String>,
    /// The clock it is decided on (`None`: Redis's `TIME`).
    pub(crate) now_us: Option<i64>,
    /// The lease id its concurrency checks take (empty without any).
    pub(crate) lease_id: String,
    /// Lease ids of its group being released, separated by spaces: its concurrency checks
    /// remove them before counting (empty: none).
    pub(crate) releases: String,
    /// Per check: the kind and numbers of `decide.lua`.
    pub(crate) args: Vec<ScriptArgs>,
    /// Whether any check is a concurrency check.
    pub(crate) concurrency: bool,
    /// The Redis Cluster slot of its hash tag (only computed when batches keep to one slot).
    pub(crate) slot: u16,
    /// The values of its part of the script's reply.
    pub(crate) reply_len: usize,
}

/// One decision waiting for (or in) a batch.
struct Job {
    request: Request,
    /// Where its part of the reply goes; closed when its caller gave up.
    answer: oneshot::Sender<Result<Vec<i64>, StoreError>>,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    in_flight: usize,
}

/// The queue of one store and the batches it has in flight.
pub(crate) struct Batcher {
    pub(crate) pool: Arc<RedisPool>,
    pub(crate) sha: String,
    pub(crate) options: BatchOptions,
    queue: Mutex<Queue>,
    batches: AtomicU64,
}

fn lock(queue: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    queue.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One batch slot, held by the caller or the task that sends through it.
///
/// The holder gives it back under the queue's lock when it finds the queue empty, or hands it
/// to a task that sends what waits there. Should its holder end in any other way (a caller's
/// future dropped mid-call, a panic, a runtime shutting down), dropping it does the same, so
/// that the store never runs out of slots and no queued decision is left without a sender.
struct Slot {
    batcher: Arc<Batcher>,
    held: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if !self.held {
            return;
        }
        let batcher = Arc::clone(&self.batcher);
        let mut queue = lock(&batcher.queue);
        let batch = take_batch(&mut queue.jobs, batcher.options);
        if batch.is_empty() {
            queue.in_flight -= 1;
            return;
        }
        drop(queue);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let slot = Slot {
                    batcher,
                    held: true,
                };
                runtime.spawn(slot.run(batch));
            }
            Err(_) => {
                // No runtime to send from: the batch's callers are told at once (dropping
                // their answers), and the slot is free for the next caller.
                drop(batch);
                lock(&batcher.queue).in_flight -= 1;
            }
        }
    }
}

impl Slot {
    /// Sends `batch`, then the next ones while decisions wait, then gives the slot back.
    async fn run(mut self, mut batch: Vec<Job>) {
        loop {
            if !batch.is_empty() {
                self.batcher.send(batch).await;
            }
            let mut queue = lock(&self.batcher.queue);
            if queue.jobs.is_empty() {
                // Given back under the lock that found the queue empty: a decision queued just
                // after finds the slot free.
                queue.in_flight -= 1;
                self.held = false;
                return;
            }
            batch = take_batch(&mut queue.jobs, self.batcher.options);
        }
    }
}

impl Batcher {
    pub(crate) fn new(pool: Arc<RedisPool>, sha: String, options: BatchOptions) -> Batcher {
        Batcher {
            pool,
            sha,
            options,
            queue: Mutex::new(Queue::default()),
            batches: AtomicU64::new(0),
        }
    }

    /// Batches sent so far (each one `EVALSHA`, plus an `EVAL` after a `NOSCRIPT`).
    pub(crate) fn batches_sent(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }

    /// Decides `request` and returns its part of the script's reply, waiting at most the pool's
    /// deadline in all (queue and call).
    ///
    /// When a slot is free and nothing waits, the caller sends its decision itself, alone (no
    /// task, no channel): an idle store adds nothing. Otherwise the decision queues, and a slot's
    /// holder sends it in the next batch.
    pub(crate) async fn submit(self: &Arc<Self>, request: Request) -> Result<Vec<i64>, StoreError> {
        let deadline = self.pool.options().deadline();
        let give_up = tokio::time::Instant::now() + deadline;
        let queued = {
            let mut queue = lock(&self.queue);
            let free = queue.in_flight < self.options.in_flight;
            if free && queue.jobs.is_empty() {
                queue.in_flight += 1;
                Err(request)
            } else {
                let (answer, reply) = oneshot::channel();
                queue.jobs.push_back(Job { request, answer });
                // Decisions wait although a slot is free (their sender went away without a
                // runtime to hand them to): this caller sends them, its own among them.
                let batch = free.then(|| {
                    queue.in_flight += 1;
                    take_batch(&mut queue.jobs, self.options)
                });
                Ok((reply, batch))
            }
        };
        let (reply, batch) = match queued {
            Ok(queued) => queued,
            Err(request) => return self.alone(request).await,
        };
        if let Some(batch) = batch {
            let slot = Slot {
                batcher: Arc::clone(self),
                held: true,
            };
            tokio::spawn(slot.run(batch));
        }
        match tokio::time::timeout_at(give_up, reply).await {
            Ok(Ok(answer)) => answer,
            // Its batch was dropped before its answer (its runtime shut down, or no runtime
            // was there to send it from).
            Ok(Err(_)) => Err(StoreError::unavailable(
                "the Redis batch was dropped before its answer",
            )),
            Err(_elapsed) => Err(StoreError::unavailable(format!(
                "Redis did not answer within {deadline:?}"
            ))),
        }
    }

    /// Sends `request` alone through the slot its caller took; the slot then goes to whatever
    /// queued meanwhile (also when the caller's future is dropped mid-call).
    async fn alone(self: &Arc<Self>, request: Request) -> Result<Vec<i64>, StoreError> {
        let _slot = Slot {
            batcher: Arc::clone(self),
            held: true,
        };
        let reply = self.call(std::slice::from_ref(&request)).await?;
        if reply.len() == request.reply_len {
            Ok(reply)
        } else {
            Err(wrong_length(reply.len(), 1, request.reply_len))
        }
    }

    /// One round trip deciding `requests` in order: `EVALSHA`, or `EVAL` after `NOSCRIPT`,
    /// within the pool's deadline.
    async fn call<R: std::borrow::Borrow<Request>>(
        &self,
        requests: &[R],
    ) -> Result<Vec<i64>, StoreError> {
        let evalsha = batch_command(None, &self.sha, requests);
        let reply = self
            .pool
            .run(|mut connection| async move {
                match evalsha.query_async(&mut connection).await {
                    Err(error) if error.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                        // The server lost the script: send it whole (this also caches it).
                        batch_command(Some(DECIDE_LUA), "", requests)
                            .query_async(&mut connection)
                            .await
                    }
                    other => other,
                }
            })
            .await;
        self.batches.fetch_add(1, Ordering::Relaxed);
        reply
    }

    /// One round trip for `batch`; each job gets its part of the reply, or the error.
    async fn send(&self, batch: Vec<Job>) {
        let requests: Vec<&Request> = batch.iter().map(|job| &job.request).collect();
        let reply = self.call(&requests).await;
        let expected: usize = batch.iter().map(|job| job.request.reply_len).sum();
        match reply {
            Ok(values) if values.len() == expected => {
                let mut rest = values.as_slice();
                for job in batch {
                    let (mine, tail) = rest.split_at(job.request.reply_len);
                    rest = tail;
                    // A caller that gave up meanwhile no longer listens: nothing to do.
                    let _ = job.answer.send(Ok(mine.to_vec()));
                }
            }
            Ok(values) => {
                let error = wrong_length(values.len(), batch.len(), expected);
                for job in batch {
                    let _ = job.answer.send(Err(copy(&error)));
                }
            }
            Err(error) => {
                for job in batch {
                    let _ = job.answer.send(Err(copy(&error)));
                }
            }
        }
    }
}

fn wrong_length(got: usize, decisions: usize, expected: usize) -> StoreError {
    StoreError::new(format!(
        "the limit script answered {got} values for {decisions} decisions ({expected} expected)"
    ))
}

/// The same error, for each decision of a failed batch.
fn copy(error: &StoreError) -> StoreError {
    match error.retry_after() {
        Some(wait) => StoreError::unavailable(error.to_string()).with_retry_after(wait),
        None => StoreError::new(error.to_string()),
    }
}

/// The next batch from the front of `jobs`, in order: at most `max_batch` decisions and
/// [`MAX_KEYS`] keys (one decision at least), skipping (and dropping) those whose caller gave
/// up; with `single_slot`, only decisions in the slot of the first one taken (the others stay
/// queued, in order).
fn take_batch(jobs: &mut VecDeque<Job>, options: BatchOptions) -> Vec<Job> {
    let mut batch: Vec<Job> = Vec::with_capacity(options.max_batch.min(jobs.len()));
    let mut keys = 0;
    let mut index = 0;
    while index < jobs.len() && batch.len() < options.max_batch.max(1) {
        let job = &jobs[index];
        if job.answer.is_closed() {
            // Its caller gave up before it was sent: it spends nothing.
            jobs.remove(index);
            continue;
        }
        if options.single_slot
            && batch
                .first()
                .is_some_and(|first| first.request.slot != job.request.slot)
        {
            index += 1;
            continue;
        }
        if !batch.is_empty() && keys + job.request.keys.len() > MAX_KEYS {
            break;
        }
        keys += job.request.keys.len();
        if let Some(job) = jobs.remove(index) {
            batch.push(job);
        }
    }
    batch
}

/// The `EVALSHA` of `sha` (or, with `script`, the `EVAL` of it) deciding `requests` in order
/// (see `decide.lua`): every key; the batch's size and flag; its distinct rules, once each;
/// then per decision its head (number of checks, and its clock and lease id when it has
/// them) and the numbers of its checks' rules.
fn batch_command<R: std::borrow::Borrow<Request>>(
    script: Option<&str>,
    sha: &str,
    requests: &[R],
) -> Cmd {
    let mut cmd = match script {
        Some(script) => {
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(script);
            cmd
        }
        None => {
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(sha);
            cmd
        }
    };
    let requests = || requests.iter().map(std::borrow::Borrow::borrow);
    cmd.arg(requests().map(|r: &Request| r.keys.len()).sum::<usize>());
    for request in requests() {
        for key in &request.keys {
            cmd.arg(key.as_str());
        }
    }
    cmd.arg(requests().count());
    cmd.arg(if requests().any(|r| r.concurrency) {
        "1"
    } else {
        "0"
    });
    // The distinct rules (a batch of one policy has one), and each check's rule number.
    let mut rules: Vec<ScriptArgs> = Vec::new();
    let mut numbers: Vec<usize> = Vec::new();
    for request in requests() {
        for args in &request.args {
            let number = match rules.iter().position(|rule| rule == args) {
                Some(index) => index + 1,
                None => {
                    rules.push(*args);
                    rules.len()
                }
            };
            numbers.push(number);
        }
    }
    cmd.arg(rules.len());
    for &(kind, a, b, c) in &rules {
        cmd.arg(kind).arg(a).arg(b).arg(c);
    }
    let mut numbers = numbers.into_iter();
    for request in requests() {
        if request.now_us.is_none() && request.lease_id.is_empty() {
            cmd.arg(request.args.len());
        } else {
            let now = request
                .now_us
                .map(|now| now.to_string())
                .unwrap_or_default();
            let (n, lease) = (request.args.len(), &request.lease_id);
            if request.releases.is_empty() {
                cmd.arg(format!("{n}:{now}:{lease}"));
            } else {
                cmd.arg(format!("{n}:{now}:{lease}:{}", request.releases));
            }
        }
        for _ in 0..request.args.len() {
            cmd.arg(numbers.next().unwrap_or(0));
        }
    }
    cmd
}

/// The Redis Cluster slot of a key whose hash tag is `tag`: CRC16 (XMODEM) of the tag, modulo
/// 16384, as Redis Cluster computes it.
pub(crate) fn cluster_slot(tag: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in tag {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc & 0x3FFF
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(slot: u16, keys: usize) -> (Job, oneshot::Receiver<Result<Vec<i64>, StoreError>>) {
        let (answer, reply) = oneshot::channel();
        let request = Request {
            keys: vec![String::from("k"); keys],
            now_us: None,
            lease_id: String::new(),
            releases: String::new(),
            args: Vec::new(),
            concurrency: false,
            slot,
            reply_len: 1,
        };
        let job = Job { request, answer };
        (job, reply)
    }

    fn options(max_batch: usize, single_slot: bool) -> BatchOptions {
        BatchOptions {
            max_batch,
            in_flight: 1,
            single_slot,
        }
    }

    #[test]
    fn the_cluster_slot_is_redis_clusters() {
        // The CRC16 check value, and slots `CLUSTER KEYSLOT` gives.
        let mut crc_check = 0u16;
        for &byte in b"123456789" {
            crc_check ^= u16::from(byte) << 8;
            for _ in 0..8 {
                crc_check = if crc_check & 0x8000 != 0 {
                    (crc_check << 1) ^ 0x1021
                } else {
                    crc_check << 1
                };
            }
        }
        assert_eq!(crc_check, 0x31C3);
        assert_eq!(cluster_slot(b"123456789"), 0x31C3 & 0x3FFF);
        assert_eq!(cluster_slot(b"foo"), 12182);
        assert_eq!(cluster_slot(b"somekey"), 11058);
    }

    #[test]
    fn a_batch_takes_jobs_in_order_up_to_its_size() {
        let mut jobs = VecDeque::new();
        let mut replies = Vec::new();
        for i in 0..5 {
            let (job, reply) = job(i, 1);
            jobs.push_back(job);
            replies.push(reply);
        }
        let batch = take_batch(&mut jobs, options(3, false));
        assert_eq!(
            batch.iter().map(|j| j.request.slot).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        assert_eq!(jobs.len(), 2);
    }

    #[test]
    fn a_job_whose_caller_gave_up_is_dropped_unsent() {
        let mut jobs = VecDeque::new();
        let (first, first_reply) = job(1, 1);
        let (second, second_reply) = job(2, 1);
        jobs.push_back(first);
        jobs.push_back(second);
        drop(first_reply);
        let batch = take_batch(&mut jobs, options(64, false));
        assert_eq!(
            batch.iter().map(|j| j.request.slot).collect::<Vec<_>>(),
            vec![2]
        );
        assert!(jobs.is_empty());
        drop(second_reply);
    }

    #[test]
    fn single_slot_batches_keep_to_the_first_jobs_slot() {
        let mut jobs = VecDeque::new();
        let mut replies = Vec::new();
        for slot in [7, 9, 7, 9, 7] {
            let (job, reply) = job(slot, 1);
            jobs.push_back(job);
            replies.push(reply);
        }
        let batch = take_batch(&mut jobs, options(64, true));
        assert_eq!(
            batch.iter().map(|j| j.request.slot).collect::<Vec<_>>(),
            vec![7, 7, 7]
        );
        let rest = take_batch(&mut jobs, options(64, true));
        assert_eq!(
            rest.iter().map(|j| j.request.slot).collect::<Vec<_>>(),
            vec![9, 9]
        );
    }

    #[test]
    fn a_batch_keeps_under_the_key_cap_but_takes_one_big_job_alone() {
        let mut jobs = VecDeque::new();
        let mut replies = Vec::new();
        for keys in [MAX_KEYS + 5, 600, 600] {
            let (job, reply) = job(0, keys);
            jobs.push_back(job);
            replies.push(reply);
        }
        assert_eq!(take_batch(&mut jobs, options(64, false)).len(), 1);
        assert_eq!(take_batch(&mut jobs, options(64, false)).len(), 1);
        assert_eq!(take_batch(&mut jobs, options(64, false)).len(), 1);
    }
}
