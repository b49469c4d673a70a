//! [`RedisPool`]: a few multiplexed connections, reconnected on demand, and a deadline on every
//! call.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use faultline_axum::StoreError;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Cmd, ErrorKind, FromRedisValue, RedisError};

/// How a [`RedisPool`] connects and how long it waits.
///
/// Built with [`PoolOptions::default`] and the `with_` methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolOptions {
    connections: usize,
    deadline: Duration,
    connect_timeout: Duration,
}

impl Default for PoolOptions {
    /// Four connections, a 250 ms deadline per call and a 250 ms connect timeout.
    fn default() -> Self {
        PoolOptions {
            connections: 4,
            deadline: Duration::from_millis(250),
            connect_timeout: Duration::from_millis(250),
        }
    }
}

impl PoolOptions {
    /// How many connections the pool keeps (at least one). Each is multiplexed: many calls
    /// share it at once, pipelined.
    #[must_use]
    pub fn with_connections(mut self, connections: usize) -> Self {
        self.connections = connections.max(1);
        self
    }

    /// The longest a call may take, from asking for a connection (and connecting if needed) to
    /// the answer. Past it the call fails with [`StoreError::unavailable`].
    #[must_use]
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// The longest a new connection may take (also bounded by the deadline of the call that
    /// opens it).
    #[must_use]
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The number of connections.
    pub fn connections(&self) -> usize {
        self.connections
    }

    /// The deadline of each call.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// The connect timeout.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }
}

/// One connection of the pool and the generation it belongs to (so that a failed call drops
/// only the connection it used, never a newer one another call opened meanwhile).
#[derive(Default)]
struct Slot {
    generation: u64,
    connection: Option<MultiplexedConnection>,
}

/// A small pool of multiplexed Redis connections with a deadline on every call.
///
/// Calls are spread over the connections in turn. A connection is opened on first use; one
/// that fails (dropped, refused, timed out) is discarded and the next call on its slot opens a
/// new one, so the pool recovers from an outage by itself.
///
/// # One connection per slot, however many callers arrive at once
///
/// Callers that find a slot empty wait for the one connection it opens, instead of each
/// opening their own (the `outage` test sends 32 first calls through a proxy and counts the
/// connections it accepted).
///
/// # Every call ends within its deadline
///
/// [`RedisPool::query`] waits at most [`PoolOptions::deadline`] in all: connecting, sending and
/// reading. An unreachable, refusing or stalled server gives [`StoreError::unavailable`], never
/// a hang (the crate's `outage` tests prove it through a proxy that cuts and stalls).
pub struct RedisPool {
    client: Client,
    config: AsyncConnectionConfig,
    slots: Box<[Mutex<Slot>]>,
    /// One per slot: held while that slot connects, so that callers arriving at an empty slot
    /// wait for one connection instead of each opening their own.
    connecting: Box<[tokio::sync::Mutex<()>]>,
    next: AtomicUsize,
    options: PoolOptions,
}

impl std::fmt::Debug for RedisPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPool")
            .field(
                "server",
                &self.client.get_connection_info().addr().to_string(),
            )
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

fn lock(slot: &Mutex<Slot>) -> MutexGuard<'_, Slot> {
    slot.lock().unwrap_or_else(PoisonError::into_inner)
}

impl RedisPool {
    /// A pool for the server at `url` (`redis://host:port/db`). Connects lazily: no connection
    /// is opened until the first call.
    ///
    /// # Errors
    /// When `url` is not a valid Redis URL.
    pub fn new(url: &str, options: PoolOptions) -> Result<RedisPool, StoreError> {
        let client = Client::open(url).map_err(StoreError::new)?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(options.connect_timeout))
            .set_response_timeout(Some(options.deadline));
        let slots = (0..options.connections)
            .map(|_| Mutex::new(Slot::default()))
            .collect();
        let connecting = (0..options.connections)
            .map(|_| tokio::sync::Mutex::new(()))
            .collect();
        Ok(RedisPool {
            client,
            config,
            slots,
            connecting,
            next: AtomicUsize::new(0),
            options,
        })
    }

    /// The pool's options.
    pub fn options(&self) -> PoolOptions {
        self.options
    }

    /// Sends `command` on the next connection and reads its answer, all within the deadline.
    ///
    /// # Errors
    /// [`StoreError::unavailable`] when the server cannot be reached, drops the connection,
    /// answers a busy or loading error, or does not answer within the deadline;
    /// [`StoreError::new`] for any other error (a wrong command or script, an unexpected
    /// answer).
    pub async fn query<T: FromRedisValue>(&self, command: &Cmd) -> Result<T, StoreError> {
        self.run(|mut connection| async move { command.query_async(&mut connection).await })
            .await
    }

    /// Runs `call` on the next connection within the deadline, discarding the connection when
    /// the call shows it is broken or runs out of time.
    pub(crate) async fn run<T, F, Fut>(&self, call: F) -> Result<T, StoreError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let mut used = None;
        let outcome = tokio::time::timeout(self.options.deadline, async {
            let (generation, connection) = self.connection(index).await?;
            used = Some(generation);
            call(connection).await
        })
        .await;
        match outcome {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => {
                let error = classify(error);
                if error.is_unavailable()
                    && let Some(generation) = used
                {
                    self.discard(index, generation);
                }
                Err(error)
            }
            Err(_elapsed) => {
                if let Some(generation) = used {
                    self.discard(index, generation);
                }
                Err(StoreError::unavailable(format!(
                    "Redis did not answer within {:?}",
                    self.options.deadline
                )))
            }
        }
    }

    /// The connection of slot `index` and its generation, opening one if the slot is empty.
    async fn connection(&self, index: usize) -> Result<(u64, MultiplexedConnection), RedisError> {
        let slot = &self.slots[index];
        {
            let slot = lock(slot);
            if let Some(connection) = &slot.connection {
                return Ok((slot.generation, connection.clone()));
            }
        }
        let _connecting = self.connecting[index].lock().await;
        {
            let slot = lock(slot);
            if let Some(connection) = &slot.connection {
                // Another call connected while this one waited.
                return Ok((slot.generation, connection.clone()));
            }
        }
        let connection = self
            .client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        let mut slot = lock(slot);
        slot.generation += 1;
        slot.connection = Some(connection.clone());
        Ok((slot.generation, connection))
    }

    /// Empties slot `index` if it still holds the connection of `generation`.
    fn discard(&self, index: usize, generation: u64) {
        let mut slot = lock(&self.slots[index]);
        if slot.generation == generation {
            slot.connection = None;
        }
    }
}

/// Maps a Redis error to a store error: what a retry may fix is "unavailable".
pub(crate) fn classify(error: RedisError) -> StoreError {
    use redis::ServerErrorKind as Server;
    let transient = match error.kind() {
        ErrorKind::Io => true,
        ErrorKind::Server(kind) => matches!(
            kind,
            Server::BusyLoading
                | Server::TryAgain
                | Server::ClusterDown
                | Server::MasterDown
                | Server::ReadOnly
                | Server::Moved
                | Server::Ask
        ),
        _ => {
            error.is_connection_dropped()
                || error.is_timeout()
                || error.is_connection_refusal()
                // BUSY: another script is running too long; OOM: Redis is at maxmemory.
                || matches!(error.code(), Some("BUSY" | "OOM"))
        }
    };
    if transient {
        StoreError::unavailable(error)
    } else {
        StoreError::new(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_retry_may_fix_is_unavailable_and_nothing_else() {
        let refused = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(classify(refused).is_unavailable());
        let reset = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(classify(reset).is_unavailable());
        let bug = RedisError::from((ErrorKind::Client, "a bad argument"));
        assert!(!classify(bug).is_unavailable());
        let garbled = RedisError::from((ErrorKind::Parse, "not RESP"));
        assert!(!classify(garbled).is_unavailable());
    }

    #[tokio::test]
    async fn a_bad_url_is_refused_and_nothing_connects_before_the_first_call() {
        assert!(RedisPool::new("not a url", PoolOptions::default()).is_err());
        // Nothing listens on port 1, yet building the pool succeeds: it is lazy.
        let pool = RedisPool::new("redis://127.0.0.1:1", PoolOptions::default()).expect("lazy");
        let error = pool
            .query::<String>(&redis::cmd("PING"))
            .await
            .expect_err("nothing there");
        assert!(error.is_unavailable());
    }
}
