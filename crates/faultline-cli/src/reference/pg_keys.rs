//! The reference API's keys and organisations on PostgreSQL, for several `serve` processes:
//! one [`KeyManager`] per process on a shared [`PgKeyStore`], with every change announced (over
//! Redis pub/sub when a Redis is given, else PostgreSQL `LISTEN/NOTIFY`) so that the other
//! processes' key caches drop it within a second.

use std::sync::Arc;

use faultline_axum::auth::{Authenticator, KeyManager};
use faultline_postgres::{PgInvalidations, PgKeyStore, PgOptions, PgPool, Subscription};
use faultline_redis::{RedisInvalidations, RedisSubscription};

use super::{StartError, key_format};

/// Keys on PostgreSQL: the manager (and its authenticator), the store's pool and the
/// invalidation bus.
#[derive(Debug, Clone)]
pub struct PgKeys {
    /// Manages keys in PostgreSQL and announces every change on the bus.
    pub manager: Arc<KeyManager>,
    /// The pool of the key store (migrate it before use: [`faultline_postgres::migrate()`]).
    pub pool: PgPool,
    bus: Bus,
    options: PgOptions,
}

/// Where changes are announced: always PostgreSQL (the `keys`/`orgs` commands publish there),
/// and Redis when given (where this process's manager publishes).
#[derive(Debug, Clone)]
struct Bus {
    postgres: PgInvalidations,
    redis: Option<RedisInvalidations>,
}

/// The running subscribers; dropping this stops them.
///
/// # Changes from the command line arrive too
///
/// `faultline keys`/`orgs … --database-url` announce on PostgreSQL, so a process whose own
/// manager announces on Redis listens on both.
#[derive(Debug)]
pub struct KeySubscription {
    postgres: Subscription,
    redis: Option<RedisSubscription>,
}

impl KeySubscription {
    /// Which engines carry the events.
    pub fn engine(&self) -> &'static str {
        match self.redis {
            None => "PostgreSQL LISTEN/NOTIFY",
            Some(_) => "Redis pub/sub (and PostgreSQL LISTEN/NOTIFY for the CLI)",
        }
    }

    /// How many times the subscribers have (re)subscribed, PostgreSQL's and Redis's.
    pub fn subscribes(&self) -> (u64, Option<u64>) {
        (
            self.postgres.subscribes(),
            self.redis.as_ref().map(RedisSubscription::subscribes),
        )
    }
}

impl PgKeys {
    /// Keys in the database of `options`, changes announced on the Redis at `redis_url` when
    /// given, else on PostgreSQL. Nothing connects here.
    pub fn new(options: &PgOptions, redis_url: Option<&str>) -> Result<Self, StartError> {
        let pool = PgPool::new(options).map_err(|e| StartError(format!("PostgreSQL: {e}")))?;
        let store = Arc::new(PgKeyStore::new(pool.clone()));
        let auth = Arc::new(Authenticator::new(key_format(), store.clone()));
        let manager = KeyManager::new(auth, store);
        let postgres = PgInvalidations::new(pool.clone());
        let (bus, manager) = match redis_url {
            None => {
                let manager = manager.with_invalidations(Arc::new(postgres.clone()));
                let bus = Bus {
                    postgres,
                    redis: None,
                };
                (bus, manager)
            }
            Some(url) => {
                let redis =
                    faultline_redis::RedisPool::new(url, faultline_redis::PoolOptions::default())
                        .and_then(|pool| RedisInvalidations::new(url, Arc::new(pool)))
                        .map_err(|e| StartError(format!("--redis-url: {e}")))?;
                let manager = manager.with_invalidations(Arc::new(redis.clone()));
                let bus = Bus {
                    postgres,
                    redis: Some(redis),
                };
                (bus, manager)
            }
        };
        Ok(PgKeys {
            manager: Arc::new(manager),
            pool,
            bus,
            options: options.clone(),
        })
    }

    /// Starts applying the changes other processes announce to this process's key cache
    /// (on the current Tokio runtime); they stop when the subscription is dropped.
    pub fn subscribe(&self) -> KeySubscription {
        let auth = Arc::clone(self.manager.authenticator());
        KeySubscription {
            postgres: self
                .bus
                .postgres
                .subscribe(&self.options, Arc::clone(&auth)),
            redis: self.bus.redis.as_ref().map(|bus| bus.subscribe(auth)),
        }
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
