//! [`RedisInvalidations`]: key-cache invalidations between processes over Redis pub/sub.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use faultline_axum::StoreError;
use faultline_axum::auth::{
    AbortOnDrop, Authenticator, Invalidation, InvalidationSink, StoreFuture, SubscriberCounts,
    Subscription, resubscribe_forever,
};
use futures_core::Stream;
use redis::Client;
use tokio::time::{sleep, timeout};

use crate::pool::RedisPool;

/// The running subscriber [`RedisInvalidations::subscribe`] returns (the handle every
/// transport shares).
pub type RedisSubscription = Subscription;

/// The channel events travel on unless [`RedisInvalidations::with_channel`] names another.
pub const DEFAULT_CHANNEL: &str = "faultline:invalidations";

/// Publishes [`Invalidation`] events with `PUBLISH` and applies the events of other processes
/// to an [`Authenticator`] with `SUBSCRIBE`.
///
/// Publishing goes through the [`RedisPool`] (so under its deadline; an outage is
/// [`StoreError::is_unavailable`]); subscribing holds one dedicated connection per
/// [`RedisSubscription`].
///
/// # Every (re)subscribe applies `All`
///
/// Events published while a subscriber is disconnected are lost, so each time the `SUBSCRIBE`
/// is confirmed, first or after a reconnect, the subscriber applies [`Invalidation::All`]:
/// every key is read again from the store on its next use.
///
/// # A dropped or stalled connection is replaced, with backoff
///
/// The subscriber sends a `PING` every keepalive interval under the pool's deadline; a closed
/// or unanswering connection is dropped and a new one opened, waiting twice as long after each
/// failed attempt, up to the maximum backoff.
///
/// # Malformed messages are ignored
///
/// A payload that [`Invalidation::decode`] does not accept changes nothing.
#[derive(Debug, Clone)]
pub struct RedisInvalidations {
    pool: Arc<RedisPool>,
    client: Client,
    channel: String,
    keepalive: Duration,
    min_backoff: Duration,
    max_backoff: Duration,
}

impl RedisInvalidations {
    /// Events on [`DEFAULT_CHANNEL`] of the Redis at `url`, published through `pool` (which
    /// should be on the same server); subscribers check their connection every 2 s and retry
    /// after 100 ms, doubling up to 5 s.
    ///
    /// # Errors
    /// When `url` is not a valid Redis URL.
    pub fn new(url: &str, pool: Arc<RedisPool>) -> Result<Self, StoreError> {
        Ok(RedisInvalidations {
            pool,
            client: Client::open(url).map_err(StoreError::new)?,
            channel: DEFAULT_CHANNEL.to_owned(),
            keepalive: Duration::from_secs(2),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        })
    }

    /// Uses `channel` instead (several APIs, or tests, on one server keep apart this way).
    #[must_use]
    pub fn with_channel(mut self, channel: &str) -> Self {
        channel.clone_into(&mut self.channel);
        self
    }

    /// How often a subscriber checks that its connection still answers.
    #[must_use]
    pub fn with_keepalive(mut self, every: Duration) -> Self {
        self.keepalive = every.max(Duration::from_millis(10));
        self
    }

    /// The first and the longest wait between reconnection attempts.
    #[must_use]
    pub fn with_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.min_backoff = min.max(Duration::from_millis(1));
        self.max_backoff = max.max(self.min_backoff);
        self
    }

    /// The channel events travel on.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// Starts a task (on the current Tokio runtime) that subscribes to the channel and
    /// applies every event to `auth`, until the [`RedisSubscription`] is dropped.
    pub fn subscribe(&self, auth: Arc<Authenticator>) -> RedisSubscription {
        let options = self.pool.options();
        let listener = Listener {
            client: self.client.clone(),
            connect_timeout: options.connect_timeout(),
            deadline: options.deadline(),
            channel: self.channel.clone(),
            keepalive: self.keepalive,
            min_backoff: self.min_backoff,
            max_backoff: self.max_backoff,
            auth,
            counts: Arc::new(SubscriberCounts::default()),
        };
        Subscription::spawn(Arc::clone(&listener.counts), listener.run())
    }
}

impl InvalidationSink for RedisInvalidations {
    fn publish(&self, event: Invalidation) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let mut command = redis::cmd("PUBLISH");
            command.arg(&self.channel).arg(event.encode());
            self.pool.query::<i64>(&command).await.map(drop)
        })
    }
}

struct Listener {
    client: Client,
    connect_timeout: Duration,
    deadline: Duration,
    channel: String,
    keepalive: Duration,
    min_backoff: Duration,
    max_backoff: Duration,
    auth: Arc<Authenticator>,
    counts: Arc<SubscriberCounts>,
}

impl Listener {
    async fn run(self) {
        resubscribe_forever(&self.channel, self.min_backoff, self.max_backoff, || {
            self.session()
        })
        .await;
    }

    /// One connection: subscribe, then apply events until it fails. `Ok` when it subscribed
    /// (and later lost the connection), `Err` when it never subscribed.
    async fn session(&self) -> Result<(), String> {
        let pubsub = match timeout(self.connect_timeout, self.client.get_async_pubsub()).await {
            Ok(Ok(pubsub)) => pubsub,
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("connect timed out".to_owned()),
        };
        let (mut sink, mut stream) = pubsub.split();
        match timeout(self.deadline, sink.subscribe(&self.channel)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("SUBSCRIBE timed out".to_owned()),
        }
        let auth = Arc::clone(&self.auth);
        let counts = Arc::clone(&self.counts);
        let channel = self.channel.clone();
        let reader = tokio::spawn(async move {
            while let Some(message) = poll_fn(|cx| Pin::new(&mut stream).poll_next(cx)).await {
                if message.get_channel_name() != channel {
                    continue;
                }
                let payload: Option<String> = message.get_payload().ok();
                match payload.as_deref().and_then(Invalidation::decode) {
                    Some(event) => {
                        auth.apply(&event);
                        counts.record_applied();
                    }
                    None => tracing::debug!("ignored a malformed invalidation"),
                }
            }
        });
        let _stop = AbortOnDrop(reader.abort_handle());
        // Whatever was published while this process was not subscribed is unknown.
        self.auth.apply(&Invalidation::All);
        self.counts.record_subscribe();
        tracing::info!(channel = %self.channel, "invalidation subscriber subscribed");
        loop {
            sleep(self.keepalive).await;
            if reader.is_finished() {
                tracing::warn!("invalidation subscriber lost its connection");
                return Ok(());
            }
            match timeout(self.deadline, sink.ping::<redis::Value>()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "invalidation subscriber lost its connection");
                    return Ok(());
                }
                Err(_) => {
                    tracing::warn!("invalidation subscriber connection stalled");
                    return Ok(());
                }
            }
        }
    }
}
