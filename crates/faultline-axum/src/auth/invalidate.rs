//! Keeping every instance's key cache in step: [`Invalidation`] events, published by a
//! [`KeyManager`](super::KeyManager) through an [`InvalidationSink`] and applied by every
//! other instance's [`Authenticator`](super::Authenticator).
//!
//! An authenticator caches what the store said of a key for a few seconds. Within one process
//! the manager drops the entry itself; across processes, a revocation, a pause or an
//! organisation's deactivation must reach the others' caches too. The engines carry the events
//! (Redis pub/sub, PostgreSQL `LISTEN/NOTIFY`); this module defines what travels and how it
//! is applied.
//!
//! # A lost event is bounded by the cache's time to live
//!
//! Delivery is best-effort: an event published while a subscriber is reconnecting is lost.
//! A subscriber applies [`Invalidation::All`] each time it (re)subscribes, and the cache's time
//! to live remains the backstop.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::store::StoreFuture;

/// What other instances must forget.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Invalidation {
    /// One key, by id (`key_…`): its status changed.
    Key(String),
    /// Every key of an organisation, by id (`org_…`): its standing changed.
    Org(String),
    /// Everything (after a reconnect, when events may have been missed).
    All,
}

/// The longest id an encoded event may carry (ids are short; a bus is not a place for blobs).
pub const MAX_INVALIDATION_ID_LEN: usize = 128;

impl Invalidation {
    /// The event as a message on a bus: `key:<id>`, `org:<id>` or `all`.
    pub fn encode(&self) -> String {
        match self {
            Invalidation::Key(id) => format!("key:{id}"),
            Invalidation::Org(id) => format!("org:{id}"),
            Invalidation::All => "all".to_owned(),
        }
    }

    /// Reads a message written by [`Invalidation::encode`].
    ///
    /// # Anything unexpected is ignored, never trusted
    ///
    /// A message that is not `key:<id>`, `org:<id>` or `all`, or whose id is empty, too long or
    /// not visible ASCII, is `None`.
    ///
    /// ```
    /// use faultline_axum::auth::Invalidation;
    /// let event = Invalidation::Key("key_1f".into());
    /// assert_eq!(Invalidation::decode(&event.encode()), Some(event));
    /// assert_eq!(Invalidation::decode("key:"), None);
    /// assert_eq!(Invalidation::decode("drop table"), None);
    /// ```
    pub fn decode(message: &str) -> Option<Self> {
        if message == "all" {
            return Some(Invalidation::All);
        }
        let (kind, id) = message.split_once(':')?;
        let valid = !id.is_empty()
            && id.len() <= MAX_INVALIDATION_ID_LEN
            && id.bytes().all(|b| b.is_ascii_graphic());
        match kind {
            "key" if valid => Some(Invalidation::Key(id.to_owned())),
            "org" if valid => Some(Invalidation::Org(id.to_owned())),
            _ => None,
        }
    }
}

impl fmt::Display for Invalidation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.encode())
    }
}

/// Where a [`KeyManager`](super::KeyManager) announces changes to other instances (see
/// [`KeyManager::with_invalidations`](super::KeyManager::with_invalidations)).
pub trait InvalidationSink: Send + Sync + 'static {
    /// Publishes `event` to every subscribed instance.
    fn publish(&self, event: Invalidation) -> StoreFuture<'_, ()>;
}

/// The counts a subscriber task keeps, read through its [`Subscription`].
#[derive(Debug, Default)]
pub struct SubscriberCounts {
    subscribes: AtomicU64,
    applied: AtomicU64,
}

impl SubscriberCounts {
    /// The subscriber (re)subscribed, and applied [`Invalidation::All`].
    pub fn record_subscribe(&self) {
        self.subscribes.fetch_add(1, Ordering::AcqRel);
    }

    /// The subscriber applied one well-formed event.
    pub fn record_applied(&self) {
        self.applied.fetch_add(1, Ordering::AcqRel);
    }
}

/// A running invalidation subscriber (made by an engine crate: `PgInvalidations`,
/// `RedisInvalidations`); dropping it stops its task and closes its connection.
#[derive(Debug)]
pub struct Subscription {
    task: tokio::task::JoinHandle<()>,
    counts: Arc<SubscriberCounts>,
}

impl Subscription {
    /// Runs `task` (which reports into `counts`) on the current Tokio runtime.
    pub fn spawn(
        counts: Arc<SubscriberCounts>,
        task: impl Future<Output = ()> + Send + 'static,
    ) -> Self {
        Subscription {
            task: tokio::spawn(task),
            counts,
        }
    }

    /// How many times the subscriber has subscribed (1 after the first time, one more per
    /// reconnect); each one applied [`Invalidation::All`].
    pub fn subscribes(&self) -> u64 {
        self.counts.subscribes.load(Ordering::Acquire)
    }

    /// How many well-formed events received on the channel have been applied.
    pub fn applied(&self) -> u64 {
        self.counts.applied.load(Ordering::Acquire)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Runs `session` again and again, for ever: one connection each, `Ok` when it had subscribed
/// before it ended, `Err` (logged) when it never did. The wait between two sessions doubles
/// from `min` to `max`, and starts over after a session that subscribed.
pub async fn resubscribe_forever<F, Fut>(
    channel: &str,
    min: Duration,
    max: Duration,
    mut session: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let mut backoff = min;
    loop {
        match session().await {
            Ok(()) => backoff = min,
            Err(reason) => {
                tracing::warn!(channel, %reason, "invalidation subscriber could not subscribe; retrying");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(max);
    }
}

/// Aborts a helper task (a connection's reader) when the session that started it ends.
#[derive(Debug)]
pub struct AbortOnDrop(pub tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn encoded_events_decode_to_themselves(id in "[!-~]{1,128}") {
            for event in [Invalidation::Key(id.clone()), Invalidation::Org(id)] {
                prop_assert_eq!(Invalidation::decode(&event.encode()), Some(event));
            }
        }

        #[test]
        fn decoding_never_panics_and_never_accepts_an_unknown_kind(message in ".{0,300}") {
            if let Some(event) = Invalidation::decode(&message) {
                prop_assert_eq!(event.encode(), message);
            }
        }
    }

    /// Records what was published; fails every publish when `broken`.
    #[derive(Default)]
    struct Recorder {
        events: std::sync::Mutex<Vec<Invalidation>>,
        broken: bool,
    }

    impl InvalidationSink for Recorder {
        fn publish(&self, event: Invalidation) -> StoreFuture<'_, ()> {
            Box::pin(async move {
                if self.broken {
                    return Err(crate::StoreError::unavailable(std::io::Error::other(
                        "down",
                    )));
                }
                self.events.lock().expect("lock").push(event);
                Ok(())
            })
        }
    }

    fn manager(sink: Arc<Recorder>) -> (crate::auth::KeyManager, Arc<crate::auth::MemoryKeyStore>) {
        use crate::auth::{Authenticator, KeyFormat, KeyManager, MemoryKeyStore};
        let store = Arc::new(MemoryKeyStore::new());
        let format = KeyFormat::new("cb", "live").expect("format");
        let auth = Arc::new(Authenticator::new(format, store.clone()));
        (
            KeyManager::new(auth, store.clone()).with_invalidations(sink),
            store,
        )
    }

    #[tokio::test]
    async fn a_manager_announces_key_and_org_changes_after_committing_them() {
        use crate::auth::{KeyAction, NewKey};
        let sink = Arc::new(Recorder::default());
        let (manager, _) = manager(Arc::clone(&sink));
        let org = manager.ensure_org("acme").await.expect("org");
        let (record, _) = manager
            .create_key(&org.id, NewKey::new("ci", Vec::<String>::new()))
            .await
            .expect("key");
        manager
            .change_key(&org.id, &record.id, KeyAction::Revoke)
            .await
            .expect("revoke");
        manager
            .set_org_active(&org.id, false)
            .await
            .expect("deactivate");
        // A new plan tier changes the limits other instances apply to the org's keys.
        manager
            .set_org_tier(&org.id, Some("pro"))
            .await
            .expect("set tier");
        assert_eq!(
            *sink.events.lock().expect("lock"),
            vec![
                Invalidation::Key(record.id.clone()),
                Invalidation::Org(org.id.clone()),
                Invalidation::Org(org.id.clone()),
            ]
        );
    }

    #[tokio::test]
    async fn a_failed_publish_never_undoes_the_change() {
        use crate::auth::{KeyAction, KeyAdmin, KeyStatus, NewKey, StatusChange};
        let sink = Arc::new(Recorder {
            broken: true,
            ..Recorder::default()
        });
        let (manager, store) = manager(sink);
        let org = manager.ensure_org("acme").await.expect("org");
        let (record, _) = manager
            .create_key(&org.id, NewKey::new("ci", Vec::<String>::new()))
            .await
            .expect("key");
        let change = manager
            .change_key(&org.id, &record.id, KeyAction::Pause)
            .await
            .expect("pause");
        assert!(matches!(change, StatusChange::Changed(_)));
        let stored = store
            .key(&org.id, &record.id)
            .await
            .expect("read")
            .expect("found");
        assert_eq!(stored.status, KeyStatus::Paused);
    }

    #[test]
    fn malformed_messages_are_ignored() {
        for message in [
            "",
            "key",
            "key:",
            "org:",
            "user:1",
            "key:a b",
            "ALL",
            "key:\u{e9}",
        ] {
            assert_eq!(Invalidation::decode(message), None, "{message:?}");
        }
        let long = format!("key:{}", "x".repeat(MAX_INVALIDATION_ID_LEN + 1));
        assert_eq!(Invalidation::decode(&long), None);
        assert_eq!(Invalidation::decode("all"), Some(Invalidation::All));
    }
}
