//! The reference API's keys and organisations on PostgreSQL, for several `serve` processes:
//! one [`KeyManager`] per process on a shared [`PgKeyStore`], with every change announced over
//! `LISTEN/NOTIFY` so that the other processes' key caches drop it within a second.

use std::sync::Arc;

use faultline_axum::auth::{Authenticator, KeyManager};
use faultline_postgres::{PgInvalidations, PgKeyStore, PgOptions, PgPool, Subscription};

use super::{StartError, key_format};

/// Keys on PostgreSQL: the manager (and its authenticator), the store's pool and the
/// invalidation bus.
#[derive(Debug, Clone)]
pub struct PgKeys {
    /// Manages keys in PostgreSQL and announces every change on the bus.
    pub manager: Arc<KeyManager>,
    /// The pool of the key store (migrate it before use: [`faultline_postgres::migrate()`]).
    pub pool: PgPool,
    bus: PgInvalidations,
    options: PgOptions,
}

impl PgKeys {
    /// Keys in the database of `options`. Nothing connects here.
    pub fn new(options: &PgOptions) -> Result<Self, StartError> {
        let pool = PgPool::new(options).map_err(|e| StartError(format!("PostgreSQL: {e}")))?;
        let store = Arc::new(PgKeyStore::new(pool.clone()));
        let bus = PgInvalidations::new(pool.clone());
        let auth = Arc::new(Authenticator::new(key_format(), store.clone()));
        let manager = KeyManager::new(auth, store).with_invalidations(Arc::new(bus.clone()));
        Ok(PgKeys {
            manager: Arc::new(manager),
            pool,
            bus,
            options: options.clone(),
        })
    }

    /// Starts applying the changes other processes announce to this process's key cache
    /// (on the current Tokio runtime); they stop when the subscription is dropped.
    pub fn subscribe(&self) -> Subscription {
        self.bus
            .subscribe(&self.options, Arc::clone(self.manager.authenticator()))
    }

    /// A `/readyz` check: PostgreSQL answers a trivial statement within the deadline.
    pub fn ready_check(
        &self,
    ) -> impl Fn() -> faultline_axum::StoreFuture<'static, ()> + Send + Sync + 'static {
        let pool = self.pool.clone();
        move || {
            let pool = pool.clone();
            Box::pin(async move { pool.ping().await })
        }
    }
}
