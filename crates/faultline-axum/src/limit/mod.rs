//! Rate limits, quotas and concurrency limits (feature `limit`).
//!
//! - [`LimitStore`]: where buckets live; one call decides every policy of a request as one
//!   atomic step ([`LimitStore::decide`]) and [`LimitStore::release`] gives a concurrency
//!   lease back. [`MemoryLimitStore`] keeps buckets in memory; `faultline-redis` shares them
//!   between processes;
//! - [`LimitLayer`]: checks each request's policies (from the catalog's `[limits]`, changed
//!   or extended in code) as one decision, writes `RateLimit-Policy`/`RateLimit` (and the
//!   legacy `X-RateLimit-*`) on every limited response, refuses with the catalog's 429 and an
//!   exact, rounded-up `Retry-After`, and holds concurrency leases until the body ends;
//! - [`Subject`]: who a request counts against ([`PrincipalSubject`] by default);
//! - the decision model itself (GCRA, quota periods, leases, the multi-policy rule) is pure and
//!   lives in [`faultline::limits`], with the formulas every store reproduces.

mod body;
mod layer;
mod store;
mod subject;
#[cfg(feature = "store-suite")]
pub mod suite;

pub use crate::clock::CounterClock;
pub use body::{LeaseBody, LeaseGuard};
pub use layer::{DEFAULT_DEADLINE, FailureMode, Limit, LimitFuture, LimitLayer, QuotaCost};
#[cfg(feature = "auth")]
pub use subject::PrincipalSubject;
pub use subject::{Caller, Subject};

pub use store::{
    Check, DEFAULT_SHARDS, Decision, INLINE_OUTCOMES, Lease, LimitStore, MemoryLimitStore,
    Outcomes, StoreError, StoreFuture,
};
