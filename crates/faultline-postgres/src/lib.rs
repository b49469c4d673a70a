//! # faultline-postgres
//!
//! faultline on PostgreSQL, for APIs that run as several processes: every store here is shared
//! by all of them.
//!
//! - [`PgPool`]: a bounded pool of `tokio-postgres` connections with a deadline on connecting
//!   and on every statement; an unreachable, stalled or restarting server is answered as
//!   unavailable (the catalog's 503 with `Retry-After`) within the deadline, never by a hang,
//!   and the pool recovers by itself when the server comes back. Sessions run in UTC.
//! - [`migrate()`]: the schema is embedded in the binary and applied at start-up under an
//!   advisory lock, so any number of processes may start at once; applied steps are recorded
//!   in `schema_migrations`.
//! - `PgIdempotencyStore` (feature `idempotency`, on by default): the records of
//!   `faultline_axum::idempotency`, claimed with one atomic statement, so any number of
//!   processes share one exactly-once guarantee.
//! - [`PgKeyStore`]: organisations and API keys (`faultline_axum::auth`), with the
//!   per-organisation cap held across processes.
//! - `PgQuotaStore` (feature `limit`, on by default): quota counters of
//!   `faultline_axum::limit` in PostgreSQL, durable and exact across processes, around another
//!   limit store (memory, Redis) for rates and concurrency, decided as one step.
//! - [`PgInvalidations`]: key-cache invalidations between processes over `LISTEN/NOTIFY`.
//! - [`wait_at_start`]: a start-up step retried with backoff while the server is not reachable
//!   yet, within a wait.
//! - `testing` (feature `testing`): a throw-away database per test run, named by the
//!   environment variable `FAULTLINE_TEST_POSTGRES_URL`.

#[cfg(feature = "idempotency")]
mod idempotency;
#[cfg(feature = "keys")]
mod invalidate;
#[cfg(feature = "keys")]
mod keys;
mod migrate;
mod pool;
#[cfg(feature = "limit")]
mod quota;
mod start;
#[cfg(feature = "testing")]
pub mod testing;

#[cfg(feature = "keys")]
pub use faultline_axum::auth::Subscription;
#[cfg(feature = "idempotency")]
pub use idempotency::{DEFAULT_REPLAY_CACHE, PgIdempotencyStore};
#[cfg(feature = "keys")]
pub use invalidate::{DEFAULT_CHANNEL, PgInvalidations};
#[cfg(feature = "keys")]
pub use keys::PgKeyStore;
pub use migrate::{DEFAULT_MIGRATION_WAIT, MIGRATIONS, Migration, migrate, migrate_with};
pub use pool::{BadUrl, PgConn, PgOptions, PgPool, PgTransaction, store_error};
#[cfg(feature = "limit")]
pub use quota::{
    DEFAULT_FAIL_FAST, DEFAULT_QUOTA_HISTORY, DEFAULT_QUOTA_PRUNE_EVERY, PgQuotaStore,
};
pub use start::{START_BACKOFF_MAX, START_BACKOFF_MIN, describe, wait_at_start};
pub use tokio_postgres;
