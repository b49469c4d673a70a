//! Rate limits, quotas and concurrency limits (feature `limit`).
//!
//! - [`LimitStore`]: where buckets live; one call decides every policy of a request as one
//!   atomic step ([`LimitStore::decide`]) and [`LimitStore::release`] gives a concurrency
//!   lease back. [`MemoryLimitStore`] keeps buckets in memory; `faultline-redis` shares them
//!   between processes;
//! - the decision model itself (GCRA, quota periods, leases, the multi-policy rule) is pure and
//!   lives in [`faultline::limits`], with the formulas every store reproduces.

mod store;
#[cfg(feature = "store-suite")]
pub mod suite;

pub use store::{
    Check, DEFAULT_SHARDS, Decision, Lease, LimitStore, MemoryLimitStore, StoreError, StoreFuture,
};
