//! [`PgInvalidations`]: key-cache invalidations between processes over PostgreSQL
//! `LISTEN/NOTIFY`.

use std::future::poll_fn;
use std::sync::Arc;
use std::time::Duration;

use faultline_axum::auth::{
    AbortOnDrop, Authenticator, Invalidation, InvalidationSink, StoreFuture, SubscriberCounts,
    Subscription, resubscribe_forever,
};
use tokio::time::{sleep, timeout};
use tokio_postgres::{AsyncMessage, Config, NoTls};

use crate::pool::{PgOptions, PgPool};

/// The channel events travel on unless [`PgInvalidations::with_channel`] names another.
pub const DEFAULT_CHANNEL: &str = "faultline_invalidations";

const NOTIFY: &str = "SELECT pg_notify($1, $2)";

/// Publishes [`Invalidation`] events with `NOTIFY` and applies the events of other processes
/// to an [`Authenticator`] with `LISTEN`.
///
/// Publishing goes through the [`PgPool`] (so under its deadline; an outage is
/// [`faultline_axum::StoreError::is_unavailable`]); subscribing holds one dedicated connection
/// per [`Subscription`].
///
/// # Every (re)subscribe applies `All`
///
/// Events sent while a subscriber is disconnected are lost, so each time the `LISTEN`
/// succeeds, first or after a reconnect, the subscriber applies [`Invalidation::All`]: every
/// key is read again from the store on its next use.
///
/// # A dropped or stalled connection is replaced, with backoff
///
/// The subscriber checks its connection every keepalive interval (a `SELECT 1` under the
/// statement deadline); a closed or unanswering connection is dropped and a new one opened,
/// waiting twice as long after each failed attempt, up to the maximum backoff.
///
/// # Malformed messages are ignored
///
/// A payload that [`Invalidation::decode`] does not accept changes nothing.
#[derive(Debug, Clone)]
pub struct PgInvalidations {
    pool: PgPool,
    channel: String,
    keepalive: Duration,
    min_backoff: Duration,
    max_backoff: Duration,
}

impl PgInvalidations {
    /// Events on [`DEFAULT_CHANNEL`], published through `pool`; subscribers check their
    /// connection every 2 s and retry after 100 ms, doubling up to 5 s.
    pub fn new(pool: PgPool) -> Self {
        PgInvalidations {
            pool,
            channel: DEFAULT_CHANNEL.to_owned(),
            keepalive: Duration::from_secs(2),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
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

    /// Starts a task (on the current Tokio runtime) that listens on the server of `options`
    /// and applies every event to `auth`, until the [`Subscription`] is dropped.
    pub fn subscribe(&self, options: &PgOptions, auth: Arc<Authenticator>) -> Subscription {
        let mut config = options.config.clone();
        config.connect_timeout(options.connect_timeout);
        if config.get_application_name().is_none() {
            config.application_name("faultline-listen");
        }
        let listener = Listener {
            config,
            connect_timeout: options.connect_timeout,
            deadline: options.statement_timeout,
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

impl InvalidationSink for PgInvalidations {
    fn publish(&self, event: Invalidation) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let payload = event.encode();
            self.pool
                .get()
                .await?
                .execute(NOTIFY, &[&self.channel, &payload])
                .await?;
            Ok(())
        })
    }
}

struct Listener {
    config: Config,
    connect_timeout: Duration,
    deadline: Duration,
    channel: String,
    keepalive: Duration,
    min_backoff: Duration,
    max_backoff: Duration,
    auth: Arc<Authenticator>,
    counts: Arc<SubscriberCounts>,
}

/// `name` as a quoted SQL identifier.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
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
        let (client, mut connection) =
            match timeout(self.connect_timeout, self.config.connect(NoTls)).await {
                Ok(Ok(pair)) => pair,
                Ok(Err(e)) => return Err(e.to_string()),
                Err(_) => return Err("connect timed out".to_owned()),
            };
        let auth = Arc::clone(&self.auth);
        let counts = Arc::clone(&self.counts);
        let channel = self.channel.clone();
        let driver = tokio::spawn(async move {
            while let Some(message) = poll_fn(|cx| connection.poll_message(cx)).await {
                match message {
                    Ok(AsyncMessage::Notification(n)) if n.channel() == channel => {
                        if let Some(event) = Invalidation::decode(n.payload()) {
                            auth.apply(&event);
                            counts.record_applied();
                        } else {
                            tracing::debug!(
                                payload = n.payload(),
                                "ignored a malformed invalidation"
                            );
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "invalidation subscriber connection failed");
                        break;
                    }
                }
            }
        });
        let _stop = AbortOnDrop(driver.abort_handle());
        let listen = format!("LISTEN {}", quote_ident(&self.channel));
        match timeout(self.deadline, client.batch_execute(&listen)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("LISTEN timed out".to_owned()),
        }
        // Whatever was published while this process was not listening is unknown.
        self.auth.apply(&Invalidation::All);
        self.counts.record_subscribe();
        tracing::info!(channel = %self.channel, "invalidation subscriber listening");
        loop {
            sleep(self.keepalive).await;
            if driver.is_finished() {
                return Ok(());
            }
            match timeout(self.deadline, client.batch_execute("SELECT 1")).await {
                Ok(Ok(())) => {}
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

#[cfg(test)]
mod tests {
    use super::quote_ident;

    #[test]
    fn channel_names_are_quoted_as_identifiers() {
        assert_eq!(quote_ident("a"), "\"a\"");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
    }
}
