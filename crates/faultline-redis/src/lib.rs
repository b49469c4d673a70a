//! faultline's Redis stores: rate limits, quotas and concurrency leases shared by every process
//! that talks to the same Redis.
//!
//! - [`RedisLimitStore`] implements [`faultline_axum::limit::LimitStore`]: every decision is
//!   one `EVALSHA` of a Lua script that checks all the policies of a request and spends them
//!   only if all admit, on Redis's own clock, with the formulas of [`faultline::limits`];
//!   concurrent decisions share one script (a batch decided one request after the other);
//! - [`RedisInvalidations`] carries key-cache invalidations between processes over pub/sub
//!   (`PUBLISH` / `SUBSCRIBE`), resubscribing with backoff after a dropped connection;
//! - [`RedisPool`] is the small pool of multiplexed connections it sends through, with a
//!   deadline on every call: an unreachable, refusing or stalled Redis gives
//!   [`faultline_axum::StoreError::unavailable`] within the deadline, never a hang.
//!
//! ```no_run
//! # async fn demo() -> Result<(), faultline_axum::StoreError> {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use faultline::limits::{Rule, MICROS_PER_SECOND as S};
//! use faultline_axum::limit::{Check, LimitStore};
//! use faultline_redis::{PoolOptions, RedisLimitStore, RedisPool};
//!
//! let pool = RedisPool::new(
//!     "redis://127.0.0.1:6379",
//!     PoolOptions::default().with_deadline(Duration::from_millis(100)),
//! )?;
//! let store = RedisLimitStore::new(Arc::new(pool)).with_prefix("myapi");
//! let checks = [
//!     Check::new("minute:key_1", Rule::Rate { limit: 60, window_us: 60 * S }),
//!     Check::new("in_flight", Rule::Concurrency { limit: 10, lease_ttl_us: 30 * S }),
//! ];
//! let decision = store.decide("org_1", &checks, None).await?;
//! if let Some(lease) = decision.lease {
//!     // … serve the request, then give the concurrency slot back:
//!     store.release(lease).await?;
//! }
//! # Ok(())
//! # }
//! ```
//!
//! The tests need a Redis (`FAULTLINE_REDIS_URL`, default `redis://127.0.0.1:6379`); without
//! one they print a `skipped:` line and pass, unless `FAULTLINE_REQUIRE_REDIS` is set.

mod batch;
mod invalidate;
mod limit;
mod pool;

pub use invalidate::{DEFAULT_CHANNEL, RedisInvalidations, RedisSubscription};
pub use limit::{DEFAULT_PREFIX, PENDING_RELEASES, RedisLimitStore};
pub use pool::{PoolOptions, RedisPool};
/// The `redis` crate this one is built on, for commands sent through [`RedisPool::query`].
pub use redis;
