//! faultline's Redis stores.
//!
//! [`RedisPool`] is a small pool of multiplexed connections with a deadline on every call: an
//! unreachable, refusing or stalled Redis gives [`faultline_axum::StoreError::unavailable`]
//! within the deadline, never a hang.

mod limit;
mod pool;

pub use limit::{DEFAULT_PREFIX, RedisLimitStore};
pub use pool::{PoolOptions, RedisPool};
